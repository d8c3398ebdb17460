"""vLLM's CPU build on the checkpoint and token ids of a bench/e2e.py case: its optional
third column. vLLM is not a dependency of reward-engine; this script runs in vLLM's own
virtual environment, imports nothing from this project, and is started by

    python bench/e2e.py --vllm-python /path/to/vllm-venv/bin/python

It reads a JSON case ({"model", "tokenizer", "seqs", "warmup", "repeat",
"budget", "threads", "dtype"}) and
writes a JSON result ({"seconds": [...], "rewards": [...], "version", "hit_rate"}).
Each timed call scores every sequence in one `LLM.classify` call (raw logits: no
activation) with prefix caching on, after a warm-up on unrelated sequences and a reset
of the prefix cache, as bench/e2e.py does for the engine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# This script's folder holds bench/kernels.py, which would shadow a package of that
# name that transformers probes for.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("case", help="JSON case written by bench/e2e.py")
    ap.add_argument("result", help="where to write the JSON result")
    args = ap.parse_args()
    with open(args.case) as f:
        case = json.load(f)

    # vLLM's CPU backend sizes its KV cache from this (GiB) and binds its OpenMP
    # threads to these cores; set before vllm is imported.
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{case['threads'] - 1}")
    # Without it vLLM drops torch to one thread "for serving".
    os.environ.setdefault("OMP_NUM_THREADS", str(case["threads"]))

    import vllm
    from vllm import LLM, PoolingParams
    from vllm.inputs import TokensPrompt

    longest = max(len(s) for s in case["seqs"] + case["warmup"])
    llm = LLM(
        model=case["model"],
        tokenizer=case["tokenizer"],  # never used on token ids, but vLLM's pooling needs one
        runner="pooling",
        dtype=case.get("dtype", "bfloat16"),
        enable_prefix_caching=True,
        max_num_batched_tokens=max(case["budget"], longest),
        max_model_len=longest,
        seed=0,
    )
    params = PoolingParams(use_activation=False)

    def classify(seqs):
        prompts = [TokensPrompt(prompt_token_ids=s) for s in seqs]
        outs = llm.classify(prompts, pooling_params=params, use_tqdm=False)
        return [float(o.outputs.probs[0]) for o in outs]

    classify(case["warmup"])
    seconds, rewards = [], None
    for _ in range(case["repeat"]):
        llm.reset_prefix_cache()
        start = time.perf_counter()
        rewards = classify(case["seqs"])
        seconds.append(time.perf_counter() - start)
        print(f"vllm: {seconds[-1]:.1f} s", file=sys.stderr)

    with open(args.result, "w") as f:
        json.dump({"seconds": seconds, "rewards": rewards, "version": vllm.__version__}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
