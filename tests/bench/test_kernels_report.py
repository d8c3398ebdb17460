"""bench/kernels.py's report, on made-up timing rows: the "Fastest GPU backend per op"
verdict (the table bench/gpu_check.sh's report gives for setting each op's GPU dispatch
order), the FP8 KV cache ratios, and one run kept per machine class in a report file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_bench_kernels():
    # By path under another name: bench/kernels.py would shadow the kernels package.
    sys.path.insert(0, str(ROOT / "bench"))  # its sibling microbench.py
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_kernels", ROOT / "bench" / "kernels.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


bench = load_bench_kernels()


def row(op, shape, impl, ms):
    return {"op": op, "shape": shape, "impl": impl, "median_s": ms / 1e3}


def test_each_op_gets_the_backend_that_won_most_shapes():
    rows = [
        row("rms_norm", "70b", "cuda", 1.0), row("rms_norm", "70b", "triton", 2.0),
        row("rms_norm", "70b", "cuda, out=", 0.1),  # out= rows are not compared
        row("rms_norm", "1b", "cuda", 1.0), row("rms_norm", "1b", "triton", 4.0),
        row("paged_prefill_attention", "8 x 2048", "cuda", 9.0),
        row("paged_prefill_attention", "8 x 2048", "triton", 3.0),
        row("fp8_gemm (token x channel scales)", "M=8192", "cuda", 2.0),
        row("fp8_gemm (token x channel scales)", "M=8192", "triton", 1.0),
        row("silu_mul", "70b", "triton", 1.0),  # no cuda row: nothing to compare
        row("fp8_quantize (per token)", "a", "cuda", 1.0),
        row("fp8_quantize (per token)", "a", "triton", 2.0),
        row("fp8_quantize (per token)", "b", "cuda", 2.0),
        row("fp8_quantize (per token)", "b", "triton", 1.0),
    ]  # fmt: skip
    verdicts = {v["op"]: v for v in bench.fastest_gpu_backends(rows)}
    norm = verdicts["rms_norm"]
    assert (norm["faster"], norm["wins"], norm["shapes"]) == ("cuda", {"cuda": 2, "triton": 0}, 2)
    assert norm["cuda_over_triton"] == [0.5, 0.25]
    assert verdicts["paged_prefill_attention"]["faster"] == "triton"
    assert verdicts["paged_prefill_attention"]["first_in_order"] == "triton"
    assert verdicts["fp8_gemm"]["faster"] == "triton"
    assert verdicts["fp8_gemm"]["first_in_order"] == "cuda"
    assert verdicts["silu_mul"]["faster"] is None and verdicts["silu_mul"]["shapes"] == 0
    assert verdicts["fp8_quantize"]["faster"] == "tie"

    table = "\n".join(bench.fastest_section(list(verdicts.values())))
    assert "| rms_norm | 2 | 2 | 0 | 0.50, 0.25 | cuda | cuda | yes |" in table
    assert "| paged_prefill_attention | 1 | 0 | 1 | 3.00 | triton | triton | yes |" in table
    assert "| fp8_gemm | 1 | 0 | 1 | 2.00 | triton | cuda | NO |" in table
    assert "| silu_mul | 0 | 0 | 0 | - | not measured | cuda | - |" in table
    assert "| fp8_quantize | 2 | 1 | 1 | 0.50, 2.00 | tie | cuda | - |" in table


def test_the_pytest_benchmark_front_end_times_every_backend_of_a_case(tmp_path):
    """bench/kernels_pytest.py: one benchmark per (case, implementation), grouped by
    op and shape, the baseline included (one quick case, a short timing budget)."""
    import json
    import subprocess

    report = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench" / "kernels_pytest.py"), "-q",
         "-p", "no:cacheprovider", "-k", "silu_mul and 1b", "--benchmark-max-time=0.05",
         "--benchmark-min-rounds=2", f"--benchmark-json={report}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = json.loads(report.read_text())["benchmarks"]
    assert {r["extra_info"]["impl"] for r in runs} == {"torch (unfused)", "cpu", "cpu, out="}
    assert {r["group"] for r in runs} == {"silu_mul: 1b [1024, 2 x 8192], bfloat16"}
    assert all(r["stats"]["rounds"] >= 2 and r["stats"]["min"] > 0 for r in runs)


def test_fp8_kv_cache_rows_are_compared_with_their_backends_activation_dtype_rows():
    rows = [
        row("paged_prefill_attention", "8 x 512", "cpu", 80.0),
        row("paged_prefill_attention", "8 x 512", "cpu, fp8 KV cache", 60.0),
        row("paged_prefill_attention", "8 x 512", "torch SDPA (contiguous)", 200.0),
        row("rope_and_cache", "70b", "cuda, fp8 KV cache", 2.0),  # no cuda row: no ratio
    ]
    ratios = bench.fp8_kv_ratios(rows)
    assert [(r["op"], r["backend"], r["ratio"]) for r in ratios] == [
        ("paged_prefill_attention", "cpu", 0.75)
    ]
    table = "\n".join(bench.fp8_kv_section(ratios))
    assert "| paged_prefill_attention | 8 x 512 | cpu | 60.000 | 80.000 | 0.75 |" in table
    assert bench.fp8_kv_section([]) == []


def _env(device, flags, date):
    return {"date_utc": date, "device": device, "torch": "2.13.0", "python": "3.11",
            "threads": 2, "cpu_count": 2, "load_average_1min_at_start": 0.5, "triton": "3",
            "cpu_isa": "avx512_bf16", **({"cpu_flags": flags} if flags else {})}  # fmt: skip


def _write(path, env, ms, note=""):
    from microbench import Case, write_report

    case = Case("silu_mul", "1b", torch.bfloat16, {}, "torch", note=note)
    case.rows = [{"op": "silu_mul", "shape": "1b", "dtype": "bfloat16", "impl": "cpu",
                  "baseline": "torch", "median_s": ms / 1e3, "GBps": 1.0, "roofline_pct": 5.0}]  # fmt: skip
    roof = {"copy_GBps": 20.0, "copy_bytes": 1 << 28, "matmul_TFLOPs": 0.4, "matmul_n": 2048}
    write_report(path, env, roof, [case], [], "reduced shapes.", 1.0)


def test_a_report_keeps_one_run_per_machine_class(tmp_path):
    """A run replaces only its own machine class's section: an older file (one run, saved
    before runs were keyed) keeps its figures beside the new machine's."""
    import json

    out = tmp_path / "kernels_cpu"
    _write(out, _env("AMD EPYC", "", "2026-11-27"), 11.0, note="a note")
    old = json.loads(out.with_suffix(".json").read_text())["machines"]
    out.with_suffix(".json").write_text(json.dumps(next(iter(old.values()))))  # the old format
    intel = _env("Intel Xeon", "avx2 avx512f amx_int8", "2026-12-01")
    _write(out, intel, 22.0, note="a note")
    _write(out, intel, 33.0, note="a note")  # the same machine again: replaces its run
    runs = json.loads(out.with_suffix(".json").read_text())["machines"]
    assert sorted(runs) == ["AMD EPYC | avx512_bf16", "Intel Xeon | avx2 avx512f amx_int8"]
    assert runs["AMD EPYC | avx512_bf16"]["rows"][0]["median_s"] == 0.011
    assert runs["Intel Xeon | avx2 avx512f amx_int8"]["rows"][0]["median_s"] == 0.033
    md = out.with_suffix(".md").read_text()
    assert "# Kernel microbenchmarks: AMD EPYC\n" in md
    assert "# Kernel microbenchmarks: Intel Xeon (avx2 avx512f amx_int8)" in md
    assert "| cpu | 11.000 |" in md and "| cpu | 33.000 |" in md and "22.000" not in md
    assert md.count("a note") == 2  # the old run's case note is kept


def test_int8_section_names_the_fastest_option_and_the_dispatched_kernel(monkeypatch):
    op = "int8 W8A8 GEMM options"
    rows = [
        dict(row(op, "1b qkv", "torch.mm (bfloat16)", 10.0), baseline="torch.mm (bfloat16)"),
        dict(row(op, "1b qkv", "int8_gemm cpu [amx]", 5.0), baseline="torch.mm (bfloat16)"),
        dict(row(op, "1b qkv", "int8_gemm cpu [avx2]", 40.0), baseline="torch.mm (bfloat16)"),
        dict(row(op, "1b qkv", "torch quantized.linear_dynamic [onednn]", 8.0),
             baseline="torch.mm (bfloat16)"),
        dict(row("rms_norm", "70b", "cpu", 1.0), baseline="reference"),  # other ops: ignored
    ]  # fmt: skip
    monkeypatch.setattr(bench.kernels, "int8_gemm_isa", lambda: "amx")
    lines = bench.int8_section(rows)
    assert "`amx`" in lines[1]
    assert lines[-1] == (
        "| 1b qkv | int8_gemm cpu [amx] | 2.00x | 2.00x | 1.25x (onednn) |"
    )
    assert bench.int8_section([r for r in rows if r["op"] != op]) == []
