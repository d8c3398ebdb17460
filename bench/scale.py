"""Scaling past one process: tensor parallelism (section "tp") against one rank, and
Ray Data replicas against the local command (section "ray").

Section tp: the small bench checkpoint (bench/e2e.py MODELS["small"]) scored by
RewardEngine with tensor_parallel_size=1 and 2 on this host's CPU (gloo between the two
processes), on the first sequences of the e2e "mixed" and "rlhf-group" workloads.
Baseline: TP=1 with all the host's threads, timed alternately with TP=2 in the same run
(best of --repeat kept). TP=2 gives each rank half the threads, so on a CPU host it can
only win where one process cannot use all the cores; on a 2-core host expect no gain.
Also reported: TP=1 on one thread (what each TP=2 rank has), the share of rank 0's step
time spent in the all-reduces (gloo returns when the sum is done, so this includes
waiting for the slower rank), and the largest reward difference TP=2 vs TP=1.

Section ray: a JSONL file of --lines lines (prompt + 2 responses, about 150-600 tokens
each) for the small checkpoint with the Llama-3 tokenizer, scored by the local
`reward-engine score` (baseline, all the host's threads) and by `reward-engine score
--ray --replicas N` for N = 1, 2 (a local Ray started by the command, each replica with
cores / N CPUs and as many threads), each a fresh process timed start to exit (Ray's
start and the replicas' model loads included), every Ray output checked equal to the
local one. On a 2-core host two replicas share the cores the local command already
uses: the figure is Ray's overhead, not a speed-up.

Results go to bench/results/scale_<class>.md/.json (class as in e2e.py); each section
is kept when another one is rerun (--only). GPU tensor-parallel figures come only from
a GPU run.

    python bench/scale.py --only tp
    python bench/scale.py --only tp --sequences 32 --repeat 2
    python bench/scale.py --only ray --lines 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # e2e.py; last, so bench/kernels.py never shadows kernels

from e2e import MODELS, WARMUP, checkpoint, machine_info, machine_slug, workload  # noqa: E402

from engine import RewardEngine  # noqa: E402
from engine.demo import make_checkpoint  # noqa: E402

SECTIONS = ("tp", "ray")


# ----------------------------------------------------------------------------- tp


def tp_engine(path: Path, tp: int, threads: int, budget: int) -> RewardEngine:
    eng = RewardEngine.from_pretrained(path, "auto", tensor_parallel_size=tp,
                                       num_threads=threads, max_num_batched_tokens=budget)  # fmt: skip
    eng.score_token_ids(WARMUP)
    return eng


def timed_run(eng: RewardEngine, seqs) -> dict:
    eng.reset_prefix_cache()
    before = eng.metrics()
    start = time.perf_counter()
    rewards = eng.score_token_ids(seqs)
    seconds = time.perf_counter() - start
    after = eng.metrics()
    step_s = after["step_time_total_s"] - before["step_time_total_s"]
    comm_s = after.get("allreduce_time_total_s", 0.0) - before.get("allreduce_time_total_s", 0.0)
    return {"seconds": seconds, "rewards": rewards, "step_s": step_s, "allreduce_s": comm_s,
            "steps": after["model_steps"] - before["model_steps"]}  # fmt: skip


def run_tp(args) -> dict:
    path = checkpoint("small", args.cache_dir)
    host_threads = torch.get_num_threads()
    configs = [("TP=1", 1, host_threads), ("TP=2", 2, max(1, host_threads // 2)),
               ("TP=1, 1 thread", 1, max(1, host_threads // 2))]  # fmt: skip
    engines = {name: tp_engine(path, tp, threads, args.budget) for name, tp, threads in configs}
    rows = []
    try:
        for wl in ("mixed", "rlhf-group"):
            seqs = workload(wl)[: args.sequences]
            tokens = sum(map(len, seqs))
            best: dict[str, dict] = {}
            for _ in range(args.repeat):  # alternate: other load on the host hits all alike
                for name, _tp, threads in configs:
                    torch.set_num_threads(threads)  # process-wide: set for each engine's run
                    run = timed_run(engines[name], seqs)
                    if name not in best or run["seconds"] < best[name]["seconds"]:
                        best[name] = run
            base = best["TP=1"]
            for name, tp, threads in configs:
                run = best[name]
                diff = max(abs(a - b) for a, b in zip(run["rewards"], base["rewards"], strict=True))
                rows.append({
                    "workload": wl, "sequences": len(seqs), "tokens": tokens, "config": name,
                    "ranks": tp, "threads_per_rank": threads,
                    "tokens_per_s": tokens / run["seconds"],
                    "x_tp1": base["seconds"] / run["seconds"],
                    "steps": run["steps"],
                    "allreduce_share": run["allreduce_s"] / run["step_s"] if tp > 1 else None,
                    "max_reward_diff_vs_tp1": diff,
                    "reward_scale": max(abs(r) for r in base["rewards"]),
                })  # fmt: skip
    finally:
        for eng in engines.values():
            eng.close()
        torch.set_num_threads(host_threads)
    return {"checkpoint": "small", "budget": args.budget, "repeat": args.repeat,
            "dtype": "auto", "rows": rows}  # fmt: skip


def render_tp(section: dict) -> str:
    lines = [
        "## Tensor parallelism on CPU (section tp)",
        "",
        f"Measured {section['measured']}. Checkpoint {section['checkpoint']} (bench/e2e.py), compute dtype auto, token budget "
        f"{section['budget']}; the first sequences of each e2e workload; best of "
        f"{section['repeat']} alternating runs. TP=2: two processes on this host joined by "
        "gloo, each with half the threads. All-reduce share: rank 0's time in the two "
        "all-reduces per layer over its step time (includes waiting for the other rank).",
        "",
        "| workload | seqs | tokens | config | ranks x threads | tok/s | x TP=1 | steps "
        "| all-reduce share | max reward diff vs TP=1 (scale) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in section["rows"]:
        share = "-" if r["allreduce_share"] is None else f"{100 * r['allreduce_share']:.0f}%"
        lines.append(
            f"| {r['workload']} | {r['sequences']} | {r['tokens']} | {r['config']} "
            f"| {r['ranks']} x {r['threads_per_rank']} | {r['tokens_per_s']:.0f} "
            f"| {r['x_tp1']:.2f} | {r['steps']} | {share} "
            f"| {r['max_reward_diff_vs_tp1']:.3g} ({r['reward_scale']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- ray

CLI = [sys.executable, "-m", "engine.cli", "--log-level", "warning", "score"]
WORDS = ("the reward model reads every token of the conversation and the answer it scores "
         "with a prompt that asks for a careful explanation of a hard problem").split()  # fmt: skip


def tokenizer_checkpoint(cache: Path) -> Path:
    path = cache / "bench-small-tokenizer"
    if not (path / "config.json").is_file():
        make_checkpoint(path, seed=0, with_tokenizer=True, **MODELS["small"])
    return path


def input_file(path: Path, lines: int, seed: int = 0) -> Path:
    rng = random.Random(seed)

    def text(n):
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": i, "prompt": text(rng.randint(60, 300)),
                                "responses": [text(rng.randint(20, 200)) for _ in range(2)]}) + "\n")  # fmt: skip
    return path


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return seconds


def records(path: Path) -> list[dict]:
    if path.is_dir():
        from engine.ray.data import read_output

        return read_output(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def same_records(a: list[dict], b: list[dict], atol: float = 1e-5) -> bool:
    if [(r.get("id"), r["line"], "error" in r) for r in a] != [
        (r.get("id"), r["line"], "error" in r) for r in b
    ]:
        return False
    return all(abs(x - y) <= atol for ra, rb in zip(a, b, strict=True)
               for x, y in zip(ra.get("rewards", []), rb.get("rewards", []), strict=True))  # fmt: skip


def ray_section(lines: int, work: Path, model: Path, cores: int | None = None) -> dict:
    cores = cores or os.cpu_count() or 1
    src = input_file(work / "in.jsonl", lines)
    common = ["--model", str(model), "--input", str(src), "--dtype", "float32", "--no-progress"]
    local_out = work / "local.jsonl"
    runs = [{"run": "local CLI", "replicas": 0,
             "seconds": timed([*CLI, *common, "--output", str(local_out)])}]  # fmt: skip
    want = records(local_out)
    for n in (1, 2):
        out = work / f"ray{n}"
        # half a CPU stays free for Ray Data's read and write tasks (a replica holding
        # every CPU would starve them: the run would hang); threads use all the cores
        cpus = (cores - 0.5) / n
        cmd = [*CLI, *common, "--output", str(out), "--ray", "--replicas", str(n),
               "--cpus-per-replica", f"{cpus:g}", "--threads", str(max(1, cores // n))]  # fmt: skip
        seconds = timed(cmd)
        runs.append({"run": f"Ray Data x{n}", "replicas": n, "cpus_per_replica": cpus,
                     "seconds": seconds, "same_output": same_records(records(out), want)})  # fmt: skip
    base = runs[0]["seconds"]
    for r in runs:
        r["lines_s"] = lines / r["seconds"]
        r["x_local"] = base / r["seconds"]
    return {"lines": lines, "conversations": 2 * lines, "cores": cores, "runs": runs}


def ray_rows(section: dict) -> list[str]:
    out = ["| run | replicas | CPUs per replica | wall s | lines/s | x local | same output |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in section["runs"]:
        same = "-" if r["replicas"] == 0 else ("yes" if r["same_output"] else "NO")
        cpus = f"{r['cpus_per_replica']:g}" if r["replicas"] else "-"
        out.append(f"| {r['run']} | {r['replicas'] or '-'} | {cpus} | {r['seconds']:.1f} "
                   f"| {r['lines_s']:.2f} | {r['x_local']:.2f} | {same} |")  # fmt: skip
    return out


def run_ray(args) -> dict:
    start = uptime()
    with tempfile.TemporaryDirectory() as tmp:
        section = ray_section(args.lines, Path(tmp), tokenizer_checkpoint(args.cache_dir))
    section.update(uptime_start=start, uptime_end=uptime())
    return section


def render_ray(section: dict) -> str:
    lines = ["## Ray Data against the local CLI (section ray)", "",
             f"Measured {section['measured']}; `uptime` before: {section['uptime_start']}; "
             f"after: {section['uptime_end']}. Small checkpoint (bench/e2e.py) with the "
             f"Llama-3 tokenizer, float32; {section['lines']} lines ({section['conversations']} "
             f"conversations) on {section['cores']} cores; each run a fresh `reward-engine "
             "score` process timed start to exit (Ray's start and the replicas' model loads "
             "included). Same output: the Ray records equal the local ones (rewards within "
             "1e-5).", ""]
    return "\n".join(lines + ray_rows(section)) + "\n"


# ----------------------------------------------------------------------------- driver

RUNNERS = {"tp": run_tp, "ray": run_ray}
RENDERERS = {"tp": render_tp, "ray": render_ray}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average {os.getloadavg()}"


def render(result: dict) -> str:
    m = result["machine"]
    head = [
        "# Scaling past one process",
        "",
        f"Measured {m['date']} on {m['cpu']} ({m['threads']} threads; ISA flags "
        f"{', '.join(m['cpu_flags'])}; kernels {m['kernel_isa']}), torch {m['torch']}, Python "
        f"{m['python']}. `uptime` at the start: {m['uptime_start']}; at the end: "
        f"{m['uptime_end']}. The host is shared: read the ratios, not the absolute figures.",
        "",
    ]
    body = [RENDERERS[name](result[name]) for name in SECTIONS if name in result]
    return "\n".join(head) + "\n" + "\n".join(body)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"sections to run, of {', '.join(SECTIONS)} (default: all); the "
                    "others' results already on file are kept")  # fmt: skip
    ap.add_argument("--sequences", type=int, default=32, help="sequences of each workload")
    ap.add_argument("--budget", type=int, default=4096, help="engine tokens per step")
    ap.add_argument("--repeat", type=int, default=2, help="alternating runs; best kept")
    ap.add_argument("--lines", type=int, default=128, help="section ray: input lines")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    start_uptime = uptime()
    machine = machine_info()
    stem = f"scale_{machine_slug(machine['cpu_flags'])}"
    json_path = args.out / f"{stem}.json"
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    for name in only:
        result[name] = RUNNERS[name](args)
        result[name]["measured"] = machine["date"]
    result["machine"] = {**machine, "uptime_start": start_uptime, "uptime_end": uptime()}
    args.out.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md = render(result)
    (args.out / f"{stem}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
