"""The HTTP server under open-loop load, against the in-process engine on the same work.

Checkpoint: bench/e2e.py's "small" (hidden 512, 8 layers; seeded random weights).
Workloads (bench/e2e.py's generators; token ids, posted to /v1/score as "token_ids"):
  rlhf-group: one request per prompt group (a 384-token prompt and 8 responses of 128
              tokens: what a GRPO trainer sends per prompt); --groups requests per rate
  mixed:      one request per sequence (lengths uniform in [64, 1024]); --mixed requests
Every run draws fresh token ids (its own seed), so no run hits the prefix cache of another.

1. Saturation: every request of the workload at once, through `reward-engine serve` on
   loopback (httpx, one connection per request) and through an AsyncRewardEngine in this
   process with the same settings (all awaited together: the engine's offline rate for
   the same requests). Timed alternately, --repeat times each, best kept. The HTTP cost
   is 1 - http/in-process throughput (target: at most 10%).
2. Open-loop Poisson arrivals (fixed seeds) at --load fractions of the saturated HTTP
   request rate: each request is sent at its arrival time whether or not earlier ones
   have finished; latency is send to answer. Reports achieved throughput, p50/p90/p99
   and errors (any non-200) per rate.

Writes bench/results/serve_<machine class>.md/.json and serve_<class>.png (latency
against offered load); --name changes the stem. The server and this client share the machine's cores, as a
loopback deployment would; the load average at start and end is recorded.

    python bench/serve.py                      # both workloads, about 3-5 minutes on 2 cores
    python bench/serve.py --workloads rlhf-group --load 0.5,1.0
    python bench/serve.py --workloads mixed --mixed 96 --repeat 3 --load 1.0 --name serve_mixed
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from e2e import checkpoint, machine_info, machine_slug, workload  # noqa: E402

from engine import AsyncRewardEngine  # noqa: E402
from engine.hardware import dtype_name, resolve_dtype  # noqa: E402

GROUP = 8  # responses per prompt in the rlhf-group workload


def requests_of(name: str, n: int, seed: int) -> list[list[list[int]]]:
    """n requests of the workload, each a list of token-id sequences."""
    out: list[list[list[int]]] = []
    s = seed * 1000
    while len(out) < n:
        seqs = workload(name, seed=s)
        s += 1
        if name == "rlhf-group":
            out += [seqs[i : i + GROUP] for i in range(0, len(seqs), GROUP)]
        else:
            out += [[x] for x in seqs]
    return out[:n]


def tokens_of(reqs) -> int:
    return sum(len(s) for r in reqs for s in r)


# -- the server process --------------------------------------------------------------------


def start_server(
    path: Path, dtype: str, budget: int, kv_gib: float
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "engine.cli", "serve", str(path), "--port", str(port),
           "--dtype", dtype, "--max-batch-tokens", str(budget), "--kv-cache-gib", str(kv_gib),
           "--max-queue", "100000", "--max-items", "4096", "--request-timeout", "0",
           "--max-request-bytes", str(256 << 20)]  # fmt: skip
    log = open(Path(tempfile.gettempdir()) / f"reward-engine-serve-{port}.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: see {log.name}")
        try:
            if httpx.get(url + "/v1/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the server did not become ready")


# -- clients ---------------------------------------------------------------------------------


async def post_all(client: httpx.AsyncClient, reqs, arrivals=None) -> dict:
    """Send each request at its arrival time (all at once without arrivals)."""
    latencies = [0.0] * len(reqs)
    ok = [False] * len(reqs)
    kinds: dict[str, int] = {}
    start = time.perf_counter()
    done_at = [start] * len(reqs)

    async def one(i):
        if arrivals is not None:
            delay = start + arrivals[i] - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        t0 = time.perf_counter()
        try:
            r = await client.post("/v1/score", json={"token_ids": reqs[i]})
            ok[i] = r.status_code == 200 and all(
                isinstance(x, float) for x in r.json()["rewards"])  # fmt: skip
            kind = None if ok[i] else f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            kind = type(exc).__name__
        if kind is not None:
            kinds[kind] = kinds.get(kind, 0) + 1
        done_at[i] = time.perf_counter()
        latencies[i] = done_at[i] - t0

    await asyncio.gather(*(one(i) for i in range(len(reqs))))
    return {**summary(reqs, latencies, ok, max(done_at) - start), "error_kinds": kinds}


async def engine_all(eng: AsyncRewardEngine, reqs) -> dict:
    start = time.perf_counter()
    latencies = [0.0] * len(reqs)

    async def one(i):
        t0 = time.perf_counter()
        await asyncio.gather(*(eng.score_token_ids(s) for s in reqs[i]))
        latencies[i] = time.perf_counter() - t0

    await asyncio.gather(*(one(i) for i in range(len(reqs))))
    return summary(reqs, latencies, [True] * len(reqs), time.perf_counter() - start)


def summary(reqs, latencies, ok, elapsed) -> dict:
    lat = sorted(latencies)

    def pct(p):
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]

    return {
        "requests": len(reqs),
        "errors": ok.count(False),
        "seconds": elapsed,
        "req_s": len(reqs) / elapsed,
        "tok_s": tokens_of(reqs) / elapsed,
        "latency_mean_s": statistics.fmean(lat),
        "latency_p50_s": pct(50),
        "latency_p90_s": pct(90),
        "latency_p99_s": pct(99),
    }


# -- the run -------------------------------------------------------------------------------


async def run_workload(name, n, url, eng, loads, repeat, seed0) -> dict:
    # Idle connections are dropped by the client before the server's keep-alive timeout
    # (uvicorn: 5 s) can close them under a request in flight.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None,
                          keepalive_expiry=2.0)  # fmt: skip
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await post_all(client, requests_of(name, 4, seed0 + 99))  # warm connections and kernels
        await engine_all(eng, requests_of(name, 4, seed0 + 98))
        http_runs, local_runs = [], []
        for k in range(repeat):
            local_runs.append(await engine_all(eng, requests_of(name, n, seed0 + 2 * k)))
            http_runs.append(await post_all(client, requests_of(name, n, seed0 + 2 * k + 1)))
            print(f"{name} saturated: in-process {local_runs[-1]['tok_s']:.0f} tok/s, http "
                  f"{http_runs[-1]['tok_s']:.0f} tok/s", file=sys.stderr)  # fmt: skip
        best_http = max(http_runs, key=lambda r: r["tok_s"])
        best_local = max(local_runs, key=lambda r: r["tok_s"])
        rows = []
        for j, load in enumerate(loads):
            rate = load * best_http["req_s"]
            reqs = requests_of(name, n, seed0 + 50 + j)
            gaps = np.random.default_rng(seed0 + j).exponential(1.0 / rate, len(reqs))
            arrivals = (np.cumsum(gaps) - gaps[0]).tolist()
            row = {"load": load, "offered_req_s": rate, **await post_all(client, reqs, arrivals)}
            rows.append(row)
            print(f"{name} load {load}: {json.dumps(row)}", file=sys.stderr)
    return {
        "workload": name,
        "requests_per_run": n,
        "tokens_per_run": tokens_of(requests_of(name, n, seed0)),
        "saturated_http": best_http,
        "saturated_in_process": best_local,
        "http_runs_tok_s": [r["tok_s"] for r in http_runs],
        "in_process_runs_tok_s": [r["tok_s"] for r in local_runs],
        "http_overhead": 1 - best_http["tok_s"] / best_local["tok_s"],
        "open_loop": rows,
    }


def render_markdown(info, results, args, load_end) -> str:
    lines = [
        "# reward-engine serve under load",
        "",
        f"{info['date']}; CPU {info['cpu']} ({', '.join(info['cpu_flags'])}; kernels "
        f"{info['kernel_isa']}); {info['threads']} torch threads; python {info['python']}, "
        f"torch {info['torch']}.",
        f"Shared host: load average {info['load_average_1m']:.1f} at start, {load_end:.1f} at "
        "the end (other jobs ran meanwhile: read the ratios, not the absolute figures).",
        f"Checkpoint: bench/e2e.py small (random weights), dtype {args.dtype_name}, "
        f"--max-batch-tokens {args.budget}. Server and client on the same cores (loopback).",
        "",
        "## Saturation: HTTP against the in-process engine (same requests, all at once)",
        "",
        "| workload | requests | tokens | in-process tok/s | HTTP tok/s | HTTP req/s | HTTP cost |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        h, e = r["saturated_http"], r["saturated_in_process"]
        lines.append(f"| {r['workload']} | {r['requests_per_run']} | {r['tokens_per_run']} | "
                     f"{e['tok_s']:.0f} | {h['tok_s']:.0f} | {h['req_s']:.1f} | "
                     f"{100 * r['http_overhead']:+.1f}% |")  # fmt: skip
    lines += ["", f"HTTP cost = 1 - HTTP / in-process throughput (target: at most 10%); best "
              f"of {args.repeat} alternating runs each.", ""]  # fmt: skip
    lines += ["## Open-loop Poisson arrivals", "",
              "| workload | load | offered req/s | achieved req/s | tok/s | p50 s | p90 s | p99 s | "
              "errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        for row in r["open_loop"]:
            lines.append(f"| {r['workload']} | {row['load']:.2f} | {row['offered_req_s']:.2f} | "
                         f"{row['req_s']:.2f} | {row['tok_s']:.0f} | {row['latency_p50_s']:.3f} | "
                         f"{row['latency_p90_s']:.3f} | {row['latency_p99_s']:.3f} | "
                         f"{row['errors']} |")  # fmt: skip
            if row["error_kinds"]:
                lines.append(f"| | errors: {row['error_kinds']} | | | | | | | |")
    lines += ["", "load: the offered rate as a fraction of the saturated HTTP request rate. "
              "Latency: request sent to answer received.", ""]  # fmt: skip
    return "\n".join(lines)


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, r in zip(axes[0], results, strict=True):
        x = [row["offered_req_s"] for row in r["open_loop"]]
        for key, label in (("latency_p50_s", "p50"), ("latency_p90_s", "p90"),
                           ("latency_p99_s", "p99")):  # fmt: skip
            ax.plot(x, [row[key] for row in r["open_loop"]], marker="o", label=label)
        ax.axvline(r["saturated_http"]["req_s"], color="grey", ls="--", label="saturated HTTP")
        ax.set_xlabel("offered load (requests/s)")
        ax.set_ylabel("latency (s)")
        ax.set_title(f"{r['workload']} ({r['requests_per_run']} requests per rate)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--workloads", default="rlhf-group,mixed")
    ap.add_argument("--groups", type=int, default=16, help="rlhf-group requests per run")
    ap.add_argument("--mixed", type=int, default=32, help="mixed requests per run")
    ap.add_argument("--load", default="0.3,0.6,0.9,1.2",
                    help="offered rates as fractions of the saturated HTTP req/s")  # fmt: skip
    ap.add_argument("--repeat", type=int, default=2, help="alternating saturation runs each")
    ap.add_argument("--budget", type=int, default=4096, help="--max-batch-tokens")
    ap.add_argument("--kv-cache-gib", type=float, default=1.0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--name", default="serve", help="stem of the result files in --out")
    args = ap.parse_args(argv)
    args.dtype_name = dtype_name(resolve_dtype(args.dtype)[0])
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("REWARD_ENGINE_KV_CACHE_PRETOUCH", "0")
    info = machine_info()
    path = checkpoint("small", args.cache_dir)
    loads = [float(x) for x in args.load.split(",")]
    proc, url = start_server(path, args.dtype_name, args.budget, args.kv_cache_gib)
    try:

        async def all_workloads():
            eng = AsyncRewardEngine.from_pretrained(path, dtype=args.dtype_name,
                                                    max_num_batched_tokens=args.budget,
                                                    kv_cache_gib=args.kv_cache_gib)  # fmt: skip
            async with eng:
                out = []
                for k, name in enumerate(args.workloads.split(",")):
                    n = args.groups if name == "rlhf-group" else args.mixed
                    out.append(await run_workload(name, n, url, eng, loads, args.repeat,
                                                  seed0=1 + 1000 * k))  # fmt: skip
                return out

        results = asyncio.run(all_workloads())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    load_end = os.getloadavg()[0]
    stem = args.out / f"{args.name}_{machine_slug(info['cpu_flags'])}"
    info["load_average_1m_end"] = load_end
    payload = {"machine": info, "dtype": args.dtype_name, "budget": args.budget,
               "server_exit_status": proc.returncode, "results": results}  # fmt: skip
    stem.with_suffix(".json").write_text(json.dumps(payload, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render_markdown(info, results, args, load_end))
    plot(results, stem.with_suffix(".png"))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
