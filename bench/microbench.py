"""Measuring and reporting for bench/kernels.py: timing in turns, rooflines, reports.

- `time_round_robin` times several callables in turns (one call of each per round), so
  load from other processes or clock changes hit them alike; CUDA times come from events.
- `rooflines` measures a large copy (GB/s, read + write) and a large bf16 matmul.
- `measure` builds each case, times its runs beside a large copy (the bandwidth roofline
  of that group) and derives GB/s or TFLOP/s, % of roofline and the speedup over the
  case's baseline; `write_report` writes the markdown and JSON.

A report file holds one run per machine class (`machine_class`: the device's model and,
on CPUs, its vector/matrix instruction-set flags): a new run replaces its own class's
section and keeps the others, so figures of different machines never overwrite each other.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass
class Case:
    """One op at one shape: callables per backend, the baseline, and the work done."""

    op: str
    shape: str
    dtype: torch.dtype
    runs: dict[str, object]  # label -> zero-argument callable
    baseline: str  # the label in `runs` the others are compared with
    bytes: float = 0.0  # memory traffic of one call (bandwidth-bound ops)
    flops: float = 0.0  # arithmetic of one call (compute-bound ops)
    note: str = ""
    run_bytes: dict[str, float] = field(default_factory=dict)  # labels moving other bytes
    rows: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _summary(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_s": statistics.median(times), "min_s": times[0],
            "p90_s": times[int(0.9 * (len(times) - 1))], "reps": len(times)}  # fmt: skip


def time_round_robin(fns: dict, device: torch.device, min_time: float, max_reps: int = 200):
    """Per-callable timing summaries. The callables are timed in turns (one call of each
    per round, at least 5 rounds, until each has had about `min_time`), so load from
    other processes or clock changes hit all of them alike; CUDA times come from events."""
    errors = {}
    for label, fn in fns.items():  # warm-up: compilation, autotuning, allocator, caches
        try:
            for _ in range(1 if device.type == "cpu" else 3):
                fn()
        except Exception as exc:  # a backend that fails here is reported, not fatal
            errors[label] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    sync(device)
    live = {k: v for k, v in fns.items() if k not in errors}
    times: dict[str, list[float]] = {k: [] for k in live}
    began = time.perf_counter()
    while live:
        for label, fn in live.items():
            times[label].append(_time_once(fn, device))
        rounds = len(next(iter(times.values())))
        spent = time.perf_counter() - began
        if rounds >= max_reps or (rounds >= 5 and spent >= min_time * len(live)):
            break
    return {**{k: _summary(v) for k, v in times.items()}, **errors}


def time_call(fn, device: torch.device, min_time: float, max_reps: int = 200) -> dict:
    return time_round_robin({"fn": fn}, device, min_time, max_reps)["fn"]


def rooflines(device: torch.device, quick: bool) -> dict:
    """Copy bandwidth (GB/s, read + write) and bf16 matmul TFLOP/s measured now."""
    n_bytes = (256 if device.type == "cpu" else 2048) << 20
    src = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    copy = time_call(lambda: dst.copy_(src), device, 0.5 if quick else 1.0)
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    mm = time_call(lambda: a @ b, device, 0.5 if quick else 1.0, max_reps=20)
    return {
        "copy_GBps": 2 * n_bytes / copy["median_s"] / 1e9,
        "copy_bytes": n_bytes,
        "matmul_TFLOPs": 2 * n**3 / mm["median_s"] / 1e12,
        "matmul_n": n,
    }


# ----------------------------------------------------------------------------- run


def measure(builders, device: torch.device, roof: dict, min_time: float, only) -> list[Case]:
    done = []
    for build in builders:
        try:
            cases = build()
        except Exception as exc:  # an op that cannot be set up here is reported, not fatal
            print(f"skipped {build.func.__name__}{build.args[2:]}: {exc}", flush=True)
            continue
        for case in cases:
            if only and not any(key in case.op for key in only):
                continue
            _measure_case(case, device, roof, min_time)
            done.append(case)
            case.runs = {}  # drop the closures: frees the inputs before the next case
        del cases
    return done


COPY_ROW = "large copy (roofline)"


def _measure_case(case: Case, device: torch.device, roof: dict, min_time: float) -> None:
    """Times the case's runs in turns; a bandwidth-bound case also times, in the same
    turns, a copy of at least roof["copy_bytes"] (beyond the caches): its roofline, robust
    to load from other processes that changes during the run."""
    runs = dict(case.runs)
    copy_bytes = max(int(case.bytes), roof["copy_bytes"]) // 2 * 2
    if case.bytes:
        src = torch.empty(copy_bytes // 2, dtype=torch.bfloat16, device=device).normal_()
        dst = torch.empty_like(src)
        runs[COPY_ROW] = lambda: dst.copy_(src)
    timings = time_round_robin(runs, device, min_time)
    copy_s = timings.get(COPY_ROW, {}).get("median_s")
    # the roofline is the best copy bandwidth seen: this group's copy or the start's
    copy_gbps = max(copy_bytes / copy_s / 1e9 if copy_s else 0.0, roof["copy_GBps"])
    base = timings.get(case.baseline, {}).get("median_s")
    for label, t in timings.items():
        row = {"op": case.op, "shape": case.shape, "dtype": str(case.dtype)[6:],
               "impl": label, "baseline": case.baseline, **t}  # fmt: skip
        sec = t.get("median_s")
        if sec:
            if case.bytes:
                moved = copy_bytes if label == COPY_ROW else case.run_bytes.get(label, case.bytes)
                row["GBps"] = moved / sec / 1e9
                row["roofline_pct"] = 100 * row["GBps"] / copy_gbps
            if case.flops:
                row["TFLOPs"] = case.flops / sec / 1e12
                row["roofline_pct"] = 100 * row["TFLOPs"] / roof["matmul_TFLOPs"]
            if base and label != COPY_ROW:
                row["speedup_vs_baseline"] = base / sec
        case.rows.append(row)
        print(_fmt_row(row), flush=True)


# ----------------------------------------------------------------------------- report


def _num(v, fmt):
    return "not measured" if v is None else format(v, fmt)


def _speedup(r: dict) -> str:
    sp = r.get("speedup_vs_baseline")
    return "-" if sp is None else f"{sp:.2f}x"


def _fmt_row(r: dict) -> str:
    if "error" in r:
        return f"{r['op']:<36} {r['shape']:<40} {r['impl']:<28} ERROR {r['error']}"
    perf = f"{r['GBps']:8.1f} GB/s" if "GBps" in r else f"{r.get('TFLOPs', 0):8.3f} TFLOP/s"
    return (f"{r['op']:<36} {r['shape']:<40} {r['impl']:<28} {r['median_s'] * 1e3:9.3f} ms "
            f"{perf} {r.get('roofline_pct', 0):6.1f} % roof  "
            f"{_speedup(r)}")  # fmt: skip


# CPU flags that decide which kernels run and how fast: the machine class of a CPU run
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16",
             "amx_int8")  # fmt: skip


def cpu_flags() -> str:
    """The ISA_FLAGS this CPU has, from /proc/cpuinfo ("" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return ""
    return " ".join(name for name in ISA_FLAGS if name in flags)


def machine_class(env: dict) -> str:
    """The key a run is filed under: the device, plus its CPU flags (runs made before the
    flags were recorded: the kernels' ISA level) or its GPU capability."""
    detail = env.get("cpu_flags") or env.get("cpu_isa") or env.get("capability") or ""
    return f"{env['device']} | {detail}" if detail else env["device"]


def _load_runs(path: Path) -> dict[str, dict]:
    """The runs already in the report's JSON, by machine class (a file written before
    runs were keyed holds one run)."""
    try:
        data = json.loads(path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}
    if "machines" in data:
        return data["machines"]
    return {machine_class(data["environment"]): data} if "environment" in data else {}


def write_report(path: Path, env, roof, cases, tgts, reduced, elapsed, extra=()) -> None:
    """The .json and .md reports; `extra`: markdown lines placed after the targets. This
    run replaces the file's run of the same machine class; other machines' runs stay."""
    run = {"environment": env, "rooflines": roof, "rows": [r for c in cases for r in c.rows],
           "targets": tgts, "note": reduced, "elapsed_s": elapsed, "extra": list(extra),
           "notes": {f"{c.op}|{c.shape}": c.note for c in cases if c.note}}  # fmt: skip
    key = machine_class(env)
    runs = {key: run, **{k: v for k, v in _load_runs(path).items() if k != key}}
    for other in runs.values():  # runs saved before notes were: the cases' notes are static
        other.setdefault("notes", run["notes"])
    path.with_suffix(".json").write_text(json.dumps({"machines": runs}, indent=1))
    lines = []
    if len(runs) > 1:
        lines += [f"One section per machine class ({', '.join(runs)}); each run of "
                  "`bench/kernels.py` replaces its own machine's section.", ""]  # fmt: skip
    for i, r in enumerate(runs.values()):
        lines += ([""] if i else []) + _render(r)
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def _render(run: dict) -> list[str]:
    """One run's markdown: header, rooflines, targets, extra lines, a table per case."""
    env, roof, tgts, elapsed = run["environment"], run["rooflines"], run["targets"], run["elapsed_s"]
    flags = f" ({env['cpu_flags']})" if env.get("cpu_flags") else ""
    lines = [
        f"# Kernel microbenchmarks: {env['device']}{flags}",
        "",
        f"{env['date_utc']}; torch {env['torch']}, triton {env['triton']}, Python "
        f"{env['python']}; {env['threads']} threads"
        + (f"; CPU ISA {env['cpu_isa']}" if "cpu_isa" in env else "")
        + (f"; CUDA {env['cuda']}, {env['capability']}" if "cuda" in env else "")
        + f". Written by `bench/kernels.py` in {elapsed:.0f} s; 1-minute load average "
        f"{env['load_average_1min_at_start']:.1f} at the start"
        + (f", {env['load_average_1min_at_end']:.1f} at the end"
           if "load_average_1min_at_end" in env else "")
        + (f" (above the {env['cpu_count']} cores: other processes competed for them)."
           if max(env["load_average_1min_at_start"], env.get("load_average_1min_at_end", 0))
           > env["cpu_count"] else f" ({env['cpu_count']} cores)."),
        "",
        f"Rooflines measured at the start of this run: copy {roof['copy_GBps']:.1f} GB/s (read + write of "
        f"{roof['copy_bytes'] >> 20} MiB), bf16 matmul {roof['matmul_TFLOPs']:.3f} TFLOP/s "
        f"({roof['matmul_n']}^3). {run['note']}",
        "",
        "Time is the median of repeated calls after warm-up, the implementations of a row group timed in turns; `roof` is GB/s over the copy "
        "bandwidth (bandwidth-bound ops: the higher of the large copy at the start and the large-copy row of the same group, timed in the same turns) or TFLOP/s over the bf16 matmul (attention, GEMM); "
        "`vs baseline` is baseline time / this time (same run).",
        "",
        "## Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for t in tgts:
        met = "not measured" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['target']} | {_num(t['measured'], '.2f')} | {t['goal']} | {met} |")
    if run.get("extra"):
        lines += [""] + list(run["extra"])
    groups: dict[tuple, list[dict]] = {}
    for r in run["rows"]:
        groups.setdefault((r["op"], r["shape"], r["dtype"]), []).append(r)
    notes = run.get("notes", {})
    for (op, shape, dtype), rows in groups.items():
        lines += ["", f"## {op}: {shape}, {dtype}", ""]
        if notes.get(f"{op}|{shape}"):
            lines += [notes[f"{op}|{shape}"], ""]
        lines += ["| impl | time (ms) | GB/s or TFLOP/s | % roof | vs baseline |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in rows:
            if "error" in r:
                lines.append(f"| {r['impl']} | error: {r['error']} | | | |")
                continue
            perf = f"{r['GBps']:.1f} GB/s" if "GBps" in r else f"{r['TFLOPs']:.3f} TFLOP/s"
            base = " (baseline)" if r["impl"] == r["baseline"] else ""
            lines.append(f"| {r['impl']}{base} | {r['median_s'] * 1e3:.3f} | {perf} | "
                         f"{r['roofline_pct']:.1f} | {_speedup(r)} |")  # fmt: skip
    return lines
