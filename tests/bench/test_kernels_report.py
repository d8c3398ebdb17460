"""bench/kernels.py's "Fastest GPU backend per op" verdict, on made-up timing rows: the
table that bench/gpu_check.sh's report gives for setting each op's GPU dispatch order."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

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
