"""End-to-end scoring throughput: reward-engine vs HF transformers, side by side in one run.

Checkpoints (seeded random init, saved with save_pretrained, bf16, vocab 128256):
  small: hidden 512, 8 layers, 8 heads, 4 kv heads, intermediate 1536
  1b:    the Llama-3.2-1B shape (hidden 2048, 16 layers, 32 heads, 8 kv heads, 8192)
Workloads (token ids drawn below the special-token range, fixed seeds):
  mixed:      128 sequences, lengths uniform in [64, 1024]
  rlhf-group: 16 prompts of 384 tokens, 8 responses of 128 tokens each (128 sequences)
The 1b checkpoint runs the first quarter of each workload to keep the run short.

Baselines, all bf16 with sdpa attention under inference_mode:
  hf-padded: LlamaForSequenceClassification on padded batches of 8 (input order);
  hf-bs1:    the same model one sequence at a time (no padding waste).
Throughput counts the tokens of the requests (not padding, not tokens computed).
Writes bench/results/e2e.md and bench/results/e2e.json with the machine, versions and
date, plus a profile of one engine forward.

    python bench/e2e.py                       # everything (~20 min on 2 cores)
    python bench/e2e.py --models small --workloads mixed
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import RewardEngine  # noqa: E402
from engine.demo import make_checkpoint  # noqa: E402

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


def run_engine(path: Path, seqs, budget: int):
    eng = RewardEngine.from_pretrained(path, dtype="bfloat16", max_num_batched_tokens=budget)
    eng.score_token_ids(seqs[:2])  # warm-up
    return timed(lambda: eng.score_token_ids(seqs))


def hf_model(path: Path):
    import transformers

    return transformers.LlamaForSequenceClassification.from_pretrained(
        path, dtype=torch.bfloat16, attn_implementation="sdpa"
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


def profile_one_forward(path: Path, seqs, budget: int) -> str:
    eng = RewardEngine.from_pretrained(path, dtype="bfloat16", max_num_batched_tokens=budget)
    batch, total = [], 0
    for s in seqs:
        if total + len(s) > budget:
            break
        batch.append(s)
        total += len(s)
    eng.score_token_ids(batch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        eng.score_token_ids(batch)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12)
    return f"one forward of {len(batch)} sequences, {total} tokens\n\n{table}"


def machine_info() -> dict:
    import transformers

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="small,1b")
    ap.add_argument("--workloads", default="mixed,rlhf-group")
    ap.add_argument("--budget", type=int, default=4096, help="engine tokens per forward")
    ap.add_argument("--cache-dir", type=Path, default=ROOT / "checkpoints")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--no-bs1", action="store_true", help="skip the HF batch-size-1 baseline")
    args = ap.parse_args(argv)

    rows, profiles = [], {}
    for model_name in args.models.split(","):
        path = checkpoint(model_name, args.cache_dir)
        hf = hf_model(path)
        for wl in args.workloads.split(","):
            seqs = workload(wl)
            seqs = seqs[: int(len(seqs) * FRACTION[model_name])]
            tokens = sum(len(s) for s in seqs)
            t_eng, r_eng = run_engine(path, seqs, args.budget)
            t_pad, r_hf = run_hf(hf, seqs, HF_BATCH)
            t_bs1 = None if args.no_bs1 else run_hf(hf, seqs, 1)[0]
            diff = max(abs(a - b) for a, b in zip(r_eng, r_hf, strict=True))
            scale = max(abs(b) for b in r_hf)
            row = {
                "model": model_name, "workload": wl, "sequences": len(seqs), "tokens": tokens,
                "engine_tok_s": tokens / t_eng, "hf_padded_tok_s": tokens / t_pad,
                "hf_bs1_tok_s": None if t_bs1 is None else tokens / t_bs1,
                "max_abs_reward_diff_vs_hf": diff, "max_abs_hf_reward": scale,
            }
            row["x_hf_padded"] = row["engine_tok_s"] / row["hf_padded_tok_s"]
            row["x_hf_bs1"] = None if t_bs1 is None else row["engine_tok_s"] / row["hf_bs1_tok_s"]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
        profiles[model_name] = profile_one_forward(path, workload("mixed"), args.budget)
        del hf

    info = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "e2e.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    (args.out / "e2e.md").write_text(render_markdown(info, rows, profiles, args.budget))
    print(render_markdown(info, rows, {}, args.budget))
    return 0


def render_markdown(info, rows, profiles, budget) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    out = [
        "# End-to-end scoring throughput (CPU)",
        "",
        f"Measured {info['date']} on {info['cpu']} ({info['threads']} threads), "
        f"torch {info['torch']}, transformers {info['transformers']}, Python {info['python']}.",
        f"Engine: bf16, token budget {budget} per forward. HF: bf16, sdpa, inference_mode.",
        "Tokens/s counts the requests' tokens.",
        "",
        "| model | workload | seqs | tokens | engine tok/s | HF padded-8 tok/s | HF bs1 tok/s "
        "| x HF padded | x HF bs1 | max reward diff (scale) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['workload']} | {r['sequences']} | {r['tokens']} "
            f"| {r['engine_tok_s']:.0f} | {r['hf_padded_tok_s']:.0f} | {f(r['hf_bs1_tok_s'], '.0f')} "
            f"| {r['x_hf_padded']:.2f} | {f(r['x_hf_bs1'], '.2f')} "
            f"| {r['max_abs_reward_diff_vs_hf']:.3g} ({r['max_abs_hf_reward']:.3g}) |"
        )
    for name, text in profiles.items():
        out += ["", f"## Profile: {name}", "", "```", text, "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
