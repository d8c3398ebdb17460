"""Ray Data scoring with 1 and 2 replicas against the local `reward-engine score`, on the
same JSONL file (the Ray section of bench/scale.py; runs alone too).

The file: ``--lines`` lines of prompt + 2 responses (about 150-600 tokens each) for
bench/e2e.py's "small" checkpoint (with the Llama-3 tokenizer). Timed, each in its own
fresh process so that no run inherits another's warm caches:

- local: `reward-engine score` (all the machine's threads);
- ray xN: `reward-engine score --ray --replicas N` on a local Ray started by the run
  (ray.init inside the timed command, as a user runs it), each replica with
  cores / N CPUs and as many torch threads.

Wall time per run (the process, start to exit: it includes Ray's start and each
replica's model load), lines/s and the ratio to the local command, plus every run's
output checked equal to the local one (the same records; rewards within 1e-5 as batches
differ). On a 2-core machine two replicas share the cores the local command already
uses, so no gain is expected: the figure is Ray's overhead, reported as it is.

    python bench/scale_ray.py --lines 256
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from e2e import MODELS, machine_info, machine_slug  # noqa: E402

from engine.demo import make_checkpoint  # noqa: E402

CLI = [sys.executable, "-m", "engine.cli", "--log-level", "warning", "score"]
WORDS = ("the reward model reads every token of the conversation and the answer it scores "
         "with a prompt that asks for a careful explanation of a hard problem").split()  # fmt: skip


def checkpoint(cache: Path) -> Path:
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


def run_ray_section(lines: int, work: Path, cores: int | None = None) -> dict:
    cores = cores or os.cpu_count() or 1
    model = checkpoint(work)
    src = input_file(work / "in.jsonl", lines)
    common = ["--model", str(model), "--input", str(src), "--dtype", "float32", "--no-progress"]
    local_out = work / "local.jsonl"
    runs = [{"run": "local CLI", "replicas": 0,
             "seconds": timed([*CLI, *common, "--output", str(local_out)])}]  # fmt: skip
    want = records(local_out)
    for n in (1, 2):
        out = work / f"ray{n}"
        cpus = cores / n
        cmd = [*CLI, *common, "--output", str(out), "--ray", "--replicas", str(n),
               "--cpus-per-replica", f"{cpus:g}", "--threads", str(max(1, int(cpus)))]  # fmt: skip
        seconds = timed(cmd)
        runs.append({"run": f"Ray Data x{n}", "replicas": n, "cpus_per_replica": cpus,
                     "seconds": seconds, "same_output": same_records(records(out), want)})  # fmt: skip
    base = runs[0]["seconds"]
    for r in runs:
        r["lines_s"] = lines / r["seconds"]
        r["x_local"] = base / r["seconds"]
    return {"lines": lines, "conversations": 2 * lines, "cores": cores, "runs": runs}


def render(section: dict) -> list[str]:
    out = [f"### Ray Data against the local CLI ({section['lines']} lines, "
           f"{section['conversations']} conversations, {section['cores']} cores)", "",
           "| run | replicas | CPUs per replica | wall s | lines/s | x local | same output |",
           "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in section["runs"]:
        same = "-" if r["replicas"] == 0 else ("yes" if r["same_output"] else "NO")
        cpus = f"{r['cpus_per_replica']:g}" if r["replicas"] else "-"
        out.append(f"| {r['run']} | {r['replicas'] or '-'} | {cpus} | {r['seconds']:.1f} "
                   f"| {r['lines_s']:.2f} | {r['x_local']:.2f} | {same} |")  # fmt: skip
    out += ["", "Wall time of the whole command (Ray start and model loads included)."]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--lines", type=int, default=256)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    machine = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        section = run_ray_section(args.lines, Path(tmp))
    machine["load_average_1m_end"] = os.getloadavg()[0]
    print("\n".join(render(section)))
    write_results(args.out, machine, {"ray": section})
    return 0


def write_results(out: Path, machine: dict, sections: dict) -> Path:
    """bench/results/scale_<class>.json (merged with what other sections wrote) and .md."""
    slug = machine_slug(machine["cpu_flags"])
    path = out / f"scale_{slug}.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("sections", {}).update(
        {k: {**v, "machine": machine} for k, v in sections.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# Scale-out", "", "Written by `bench/scale.py` (sections run one at a time).", ""]
    for name, s in data["sections"].items():
        m = s["machine"]
        lines += [f"## {name}: {m['cpu']} ({' '.join(m['cpu_flags'])})", "",
                  f"{m['date']}; 1-minute load average {m['load_average_1m']:.1f} at the start, "
                  f"{m.get('load_average_1m_end', float('nan')):.1f} at the end (a shared "
                  "machine: ratios within one run hold better than absolute figures).", ""]
        lines += (render(s) if name == "ray" else s.get("markdown", [])) + [""]
    path.with_suffix(".md").write_text("\n".join(lines))
    return path


if __name__ == "__main__":
    sys.exit(main())
