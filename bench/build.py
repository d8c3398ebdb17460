"""Engine builds: time and peak memory against checkpoint size, and scoring throughput of
the formats they produce.

1. Build time and peak RSS of `reward-engine build` (each build in its own process,
   peak RSS from wait4) for synthetic checkpoints of growing size that share their
   largest tensor (the embedding, 128256 x 2048 bf16): if the build streams, the peak
   stays flat while the checkpoint grows. Unquantized builds of every size; a quantized
   build (with a small calibration set) of the smallest.
2. Scoring throughput of the engines built from one of bench/e2e.py's checkpoints
   ("small" by default) on its "mixed" workload: the unquantized engine in the dtype
   auto picks against FP8 and INT8 W8A8, in the same run (bench/e2e.py compares INT8 on
   the 1b shape). On a CPU, FP8 is an exact emulation (expected slower); INT8 runs the
   int8_gemm kernel this CPU has (`kernels.int8_gemm_isa()`).

Writes bench/results/build.md / build.json (one section per machine class: the CPU model
and its ISA flags, so runs on different machines do not overwrite each other).

    python bench/build.py
    python bench/build.py --sizes 2,4 --score-model small --fraction 0.25
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # e2e.py; last, so bench/kernels.py never shadows kernels

from engine.safetensors_io import SafetensorsWriter  # noqa: E402

GIB = 1 << 30
CALIBRATION = [{"prompt": f"Question {i}: what is {i} + {i}?",
                "responses": [str(2 * i), f"It is {2 * i}.", str(i), "No idea."]}
               for i in range(4)]  # fmt: skip


def synthetic_checkpoint(path: Path, layers: int, hidden=2048, inter=8192, vocab=128256,
                         heads=16, kv_heads=4, random: bool = True) -> tuple[Path, int]:  # fmt: skip
    """An HF Llama reward checkpoint written tensor by tensor, its values small random
    numbers (so quantized builds compute on real data) or, without ``random``, zeros (a
    checkpoint that is only copied); returns (path, largest tensor bytes)."""
    path.mkdir(parents=True)
    cfg = dict(architectures=["LlamaForSequenceClassification"], model_type="llama",
               hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
               max_position_embeddings=4096, rms_norm_eps=1e-5, torch_dtype="bfloat16",
               num_labels=1)  # fmt: skip
    (path / "config.json").write_text(json.dumps(cfg))
    kv = hidden // heads * kv_heads
    plan = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        plan += [(p + "self_attn.q_proj.weight", (hidden, hidden)),
                 (p + "self_attn.k_proj.weight", (kv, hidden)),
                 (p + "self_attn.v_proj.weight", (kv, hidden)),
                 (p + "self_attn.o_proj.weight", (hidden, hidden)),
                 (p + "mlp.gate_proj.weight", (inter, hidden)),
                 (p + "mlp.up_proj.weight", (inter, hidden)),
                 (p + "mlp.down_proj.weight", (hidden, inter)),
                 (p + "input_layernorm.weight", (hidden,)),
                 (p + "post_attention_layernorm.weight", (hidden,))]  # fmt: skip
    plan += [("model.norm.weight", (hidden,)), ("score.weight", (1, hidden))]
    writer = SafetensorsWriter(path / "model.safetensors",
                               [(n, torch.bfloat16, s) for n, s in plan])  # fmt: skip
    g = torch.Generator().manual_seed(0)
    for name, shape in plan:
        if name.endswith("norm.weight"):
            t = torch.ones(shape)
        elif random:
            t = torch.randn(shape, generator=g) * (shape[-1] ** -0.5)
        else:
            t = torch.zeros(shape)
        writer.write(name, t.to(torch.bfloat16))
    writer.close()
    return path, max(torch.Size(s).numel() for _, s in plan) * 2


# Runs the build and prints the process's own peak resident set (VmHWM) last. A child's
# rusage maxrss would not do: Linux carries the parent's resident set at fork into it.
BUILD_AND_REPORT = """\
import sys
from engine.cli import main
code = main(sys.argv[1:])
with open("/proc/self/status") as f:
    hwm = next(line.split()[1] for line in f if line.startswith("VmHWM"))
print("peak_rss_kib", hwm, file=sys.stderr)
sys.exit(code)
"""


def run_build(args: list, **popen) -> subprocess.Popen:
    """`reward-engine build ARGS` in a new process that reports its peak RSS on stderr."""
    return subprocess.Popen([sys.executable, "-c", BUILD_AND_REPORT, "--log-level", "warning",
                             "build", *map(str, args)], cwd=ROOT, **popen)  # fmt: skip


def peak_rss(stderr: str) -> int:
    """Bytes, from the last line run_build's process wrote."""
    line = next(ln for ln in reversed(stderr.splitlines()) if ln.startswith("peak_rss_kib"))
    return int(line.split()[1]) * 1024


def timed_build(args: list) -> dict:
    """One `reward-engine build` in its own process: seconds and peak RSS."""
    start = time.perf_counter()
    proc = run_build([*args, "--no-progress"], stderr=subprocess.PIPE)
    err = proc.communicate()[1].decode()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"build failed: {err[-2000:]}")
    return {"seconds": seconds, "peak_rss_gib": peak_rss(err) / GIB, "log": err[-600:]}


def build_scaling(sizes: list[int], work: Path) -> list[dict]:
    calibration = work / "calibration.jsonl"
    calibration.write_text("".join(json.dumps(r) + "\n" for r in CALIBRATION))
    from engine.demo import llama3_tokenizer_dir

    rows = []
    for layers in sizes:
        ckpt, largest = synthetic_checkpoint(work / f"ckpt-{layers}", layers)
        for f in llama3_tokenizer_dir().iterdir():
            if f.is_file():
                shutil.copy(f, ckpt / f.name)
        size = (ckpt / "model.safetensors").stat().st_size
        runs = [("none", [])]
        if layers == sizes[0]:
            runs += [("int8", ["--quantization", "int8", "--calibration", calibration]),
                     ("fp8", ["--quantization", "fp8", "--calibration", calibration])]  # fmt: skip
        for name, extra in runs:
            out = work / f"engine-{layers}-{name}"
            r = timed_build([ckpt, "-o", out, "--dtype", "bfloat16", *extra])
            rows.append({"layers": layers, "checkpoint_gib": size / GIB,
                         "largest_tensor_gib": largest / GIB, "quantization": name,
                         "build_s": r["seconds"], "peak_rss_gib": r["peak_rss_gib"],
                         "read_gib_s": size / GIB / r["seconds"]})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
            shutil.rmtree(out)
        shutil.rmtree(ckpt)
    return rows


def scoring(model: str, fraction: float, work: Path, repeat: int) -> list[dict]:
    from e2e import WARMUP, checkpoint, workload

    from engine import RewardEngine
    from engine.build import BuildSettings, build_engine
    from engine.demo import llama3_tokenizer_dir
    from engine.hardware import dtype_name, resolve_dtype

    ckpt = checkpoint(model, ROOT / "checkpoints")
    for f in llama3_tokenizer_dir().iterdir():  # calibration needs the tokenizer
        if f.is_file() and not (ckpt / f.name).exists():
            shutil.copy(f, ckpt / f.name)
    dtype, _ = resolve_dtype("auto")
    seqs = workload("mixed")
    seqs = seqs[: max(1, int(len(seqs) * fraction))]
    tokens = sum(len(s) for s in seqs)
    engines = {"unquantized": ckpt}
    for q in ("int8", "fp8"):
        out = work / f"{model}-{q}"
        build_engine(ckpt, out, BuildSettings(quantization=q, dtype=dtype_name(dtype)),
                     progress=False)  # fmt: skip
        engines[q] = out
    loaded = {k: RewardEngine.from_pretrained(p, dtype=dtype, kv_cache_pretouch=True)
              for k, p in engines.items()}  # fmt: skip
    for eng in loaded.values():
        eng.score_token_ids(WARMUP)
    times = {k: [] for k in loaded}
    for _ in range(repeat):  # in turns, so load from other processes hits all alike
        for k, eng in loaded.items():
            eng.reset_prefix_cache()
            start = time.perf_counter()
            eng.score_token_ids(seqs)
            times[k].append(time.perf_counter() - start)
    import kernels

    base = min(times["unquantized"])
    return [{"model": model, "engine": k, "dtype": dtype_name(dtype), "tokens": tokens,
             "tok_s": tokens / min(t), "x_unquantized": base / min(t), "runs_s": t,
             "int8_gemm_isa": kernels.int8_gemm_isa() if k == "int8" else None}
            for k, t in times.items()]  # fmt: skip


def machine() -> dict:
    from engine.hardware import ISA_FLAGS, cpu_info

    info = cpu_info()
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": info.model, "cpu_flags": " ".join(f for f in ISA_FLAGS if f in info.flags),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_start": os.getloadavg()[0]}  # fmt: skip


def render(run: dict) -> list[str]:
    m = run["machine"]
    lines = [f"## {m['cpu']} ({m['cpu_flags']})", "",
             f"{m['date']}; {m['threads']} threads; torch {m['torch']}; 1-minute load average "
             f"{m['load_average_start']:.1f} at the start, {m['load_average_end']:.1f} at the end "
             "(the machine is shared: figures under load are slower, ratios in one run hold "
             "better).", "",
             "### Build time and peak RSS against checkpoint size", "",
             "| layers | checkpoint GiB | largest tensor GiB | quantization | build s | read GiB/s "
             "| peak RSS GiB |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in run["builds"]:
        lines.append(f"| {r['layers']} | {r['checkpoint_gib']:.2f} | {r['largest_tensor_gib']:.2f} "
                     f"| {r['quantization']} | {r['build_s']:.1f} | {r['read_gib_s']:.2f} "
                     f"| {r['peak_rss_gib']:.2f} |")  # fmt: skip
    lines += ["", "### Scoring throughput of the built engines (mixed workload)", "",
              "| checkpoint | engine | compute dtype | tokens | tok/s | x unquantized | int8 kernel |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in run["scoring"]:
        lines.append(f"| {r['model']} | {r['engine']} | {r['dtype']} | {r['tokens']} "
                     f"| {r['tok_s']:.0f} | {r['x_unquantized']:.2f} | {r['int8_gemm_isa'] or '-'} |")  # fmt: skip
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--sizes", default="6,14,30",
                    help="layers of each synthetic checkpoint (2048 hidden: 6 -> 1.2 GB, "
                    "14 -> 2.3 GB, 30 -> 4.5 GB)")  # fmt: skip
    ap.add_argument("--score-model", default="small", help="bench/e2e.py checkpoint to score with")
    ap.add_argument("--fraction", type=float, default=0.25, help="share of the mixed workload")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "build")
    args = ap.parse_args(argv)
    run = {"machine": machine()}
    with tempfile.TemporaryDirectory(dir=ROOT / "checkpoints" if (ROOT / "checkpoints").is_dir()
                                     else None) as tmp:  # fmt: skip
        run["builds"] = build_scaling([int(s) for s in args.sizes.split(",")], Path(tmp))
        run["scoring"] = scoring(args.score_model, args.fraction, Path(tmp), args.repeat)
    run["machine"]["load_average_end"] = os.getloadavg()[0]
    key = f"{run['machine']['cpu']} | {run['machine']['cpu_flags']}"
    path = args.out.with_suffix(".json")
    runs = json.loads(path.read_text())["machines"] if path.exists() else {}
    runs[key] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machines": runs}, indent=1))
    lines = ["# Engine builds", "", "Written by `bench/build.py`; one section per machine class.", ""]
    for r in runs.values():
        lines += render(r) + [""]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(render(run)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
