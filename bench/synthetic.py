"""Scoring throughput of Llama-shaped engines whose weights are generated in place.

No checkpoint is read: every weight is drawn with a fixed seed directly on the
target device (GPU memory holds a 70B-shaped FP8 engine; no host copy exists), in
the layout `reward-engine build` would produce (fused q|k|v and gate|up; FP8 or INT8
W8A8 with one scale per output channel and static input scales; the reward head and
norms in the compute dtype). The engine then scores bench/e2e.py's workloads through
the real scheduler, KV cache and runner.

Shapes (Llama-3.1): 70b (hidden 8192, 80 layers, 64/8 heads, 28672), 8b (4096, 32,
32/8, 14336), 1b (2048, 16, 32/8, 8192), tiny (64, 2, 4/2, 128: for the CPU tests).

Reported per run: tokens/s (the requests' tokens), the linear-layer FLOPs that implies
(2 x the non-embedding linear parameters per computed token: about 137 GFLOP for 70b)
as TFLOP/s and as a share of the device's dense peak for the weight format (H100/H200:
989 TFLOP/s bf16, 1979 FP8; none is claimed for other devices), the memory the weights
take and the peak device memory.

    python bench/synthetic.py --shape 70b --quantization fp8 --device cuda
    python bench/synthetic.py --shape 8b --quantization none,fp8 --device cuda
    python bench/synthetic.py --shape tiny --quantization none,int8 --device cpu
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # bench/e2e.py: last, so bench/kernels.py never shadows kernels

from engine import RewardEngine, RuntimeConfig  # noqa: E402
from engine.checkpoint import LayerWeights, ModelWeights  # noqa: E402
from engine.config import SEQUENCE_CLASSIFICATION, ModelConfig  # noqa: E402
from engine.linear import DenseLinear, QuantizedLinear  # noqa: E402
from engine.model import LlamaRewardModel  # noqa: E402

SHAPES = {
    "70b": dict(hidden=8192, layers=80, heads=64, kv_heads=8, inter=28672),
    "8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336),
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, inter=8192),
    "tiny": dict(hidden=64, layers=2, heads=4, kv_heads=2, inter=128),
}
VOCAB = 128256
# Dense peak of the matrix units, TFLOP/s, by device name and weight format (spec sheets).
PEAK_TFLOPS = {("H100", "none"): 989.0, ("H100", "fp8"): 1979.0,
               ("H200", "none"): 989.0, ("H200", "fp8"): 1979.0}  # fmt: skip
QDTYPE = {"fp8": torch.float8_e4m3fn, "int8": torch.int8}


def model_config(shape: str) -> ModelConfig:
    s = SHAPES[shape]
    return ModelConfig(
        hidden_size=s["hidden"], num_layers=s["layers"], num_heads=s["heads"],
        num_kv_heads=s["kv_heads"], head_dim=s["hidden"] // s["heads"],
        intermediate_size=s["inter"], vocab_size=VOCAB if shape != "tiny" else 1000,
        rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        max_position_embeddings=131072, tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False, head_kind=SEQUENCE_CLASSIFICATION, num_labels=1,
        checkpoint_dtype=torch.bfloat16, architecture="LlamaForSequenceClassification",
    )  # fmt: skip


def linear_flops_per_token(cfg: ModelConfig) -> float:
    h, q, kv, inter = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    return 2.0 * cfg.num_layers * (h * (q + 2 * kv) + q * h + 2 * inter * h + inter * h)


def _linear(n, k, quantization, dtype, device, g) -> DenseLinear | QuantizedLinear:
    """A random layer whose outputs keep activations of order 1 (weights ~ 1/sqrt(k))."""
    w = torch.randn((n, k), generator=g, device=device, dtype=torch.float32) * k**-0.5
    if quantization == "none":
        return DenseLinear(w.to(dtype))
    qmax = 448.0 if quantization == "fp8" else 127.0
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / qmax
    codes = (w / scale[:, None]).clamp(-qmax, qmax)
    codes = codes.to(QDTYPE[quantization]) if quantization == "fp8" else codes.round().to(
        torch.int8)  # fmt: skip
    del w
    # activations stay within about 8 of zero after each norm: a static scale for that range
    input_scale = torch.tensor(8.0 / qmax, device=device)
    return QuantizedLinear(quantization, codes, scale.float(), input_scale, dtype)


def synthetic_weights(cfg: ModelConfig, quantization: str, dtype: torch.dtype, device,
                      seed: int = 0) -> ModelWeights:  # fmt: skip
    g = torch.Generator(device=device).manual_seed(seed)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    layers = []
    for _ in range(cfg.num_layers):
        layers.append(LayerWeights(
            input_norm=torch.ones(h, dtype=dtype, device=device),
            qkv=_linear(cfg.q_size + 2 * cfg.kv_size, h, quantization, dtype, device, g),
            o_proj=_linear(h, cfg.q_size, quantization, dtype, device, g),
            post_norm=torch.ones(h, dtype=dtype, device=device),
            gate_up=_linear(2 * inter, h, quantization, dtype, device, g),
            down=_linear(h, inter, quantization, dtype, device, g),
        ))  # fmt: skip
    embed = torch.randn((cfg.vocab_size, h), generator=g, device=device).to(dtype)
    head = (torch.randn((1, h), generator=g, device=device) * h**-0.5).to(dtype)
    return ModelWeights(embed=embed, layers=layers, final_norm=torch.ones(h, dtype=dtype,
                        device=device), head=head)  # fmt: skip


def weight_bytes(weights: ModelWeights) -> int:
    def size(obj):
        if isinstance(obj, torch.Tensor):
            return obj.numel() * obj.element_size()
        if isinstance(obj, list):
            return sum(size(o) for o in obj)
        if hasattr(obj, "__dataclass_fields__"):
            return sum(size(getattr(obj, f)) for f in obj.__dataclass_fields__)
        return 0

    return size(weights)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from engine.hardware import cpu_info

    return cpu_info().model


def peak_tflops(name: str, quantization: str) -> float | None:
    for (key, q), value in PEAK_TFLOPS.items():
        if key in name and q == ("fp8" if quantization == "fp8" else "none"):
            return value
    return None


def run(shape: str, quantization: str, device: str, workloads: list[str], dtype=torch.bfloat16,
        budget: int = 8192, fraction: float = 1.0) -> list[dict]:  # fmt: skip
    from e2e import WARMUP, workload  # the same workloads as the CPU benchmark

    device = torch.device(device)
    cfg = model_config(shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    weights = synthetic_weights(cfg, quantization, dtype, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    made = time.perf_counter() - start
    model = LlamaRewardModel(cfg, weights, max_position=4096)
    runtime = RuntimeConfig(max_num_batched_tokens=budget, max_model_len=4096,
                            kv_cache_pretouch=False,
                            **({"kv_cache_gib": 0.25} if device.type == "cpu" else {}))  # fmt: skip
    eng = RewardEngine(model, None, runtime)
    vocab_cap = cfg.vocab_size
    warm = [[t % vocab_cap for t in s] for s in WARMUP]
    eng.score_token_ids(warm)
    name = device_name(device)
    rows = []
    for wl in workloads:
        seqs = [[t % vocab_cap for t in s] for s in workload(wl)]
        seqs = seqs[: max(1, int(len(seqs) * fraction))]
        eng.reset_prefix_cache()
        before = eng.metrics()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        rewards = eng.score_token_ids(seqs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        after = eng.metrics()
        tokens = sum(len(s) for s in seqs)
        computed = after["tokens_computed"] - before["tokens_computed"]
        tflops = computed * linear_flops_per_token(cfg) / seconds / 1e12
        peak = peak_tflops(name, quantization)
        rows.append({
            "shape": shape, "quantization": quantization, "dtype": str(dtype).removeprefix("torch."),
            "device": name, "workload": wl, "sequences": len(seqs), "tokens": tokens,
            "tokens_computed": computed, "seconds": seconds, "tok_s": tokens / seconds,
            "linear_tflop_s": tflops, "peak_tflop_s": peak,
            "pct_peak": None if peak is None else 100 * tflops / peak,
            "weights_gib": weight_bytes(weights) / 2**30,
            "kv_cache_gib": eng.kv_cache.nbytes / 2**30,
            "peak_device_gib": (torch.cuda.max_memory_allocated(device) / 2**30
                                if device.type == "cuda" else None),
            "rewards_finite": all(torch.isfinite(torch.tensor(rewards)).tolist()),
            "weights_made_s": made,
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    del eng, model, weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def render(rows: list[dict]) -> str:
    out = ["| shape | weights | device | workload | tok/s | linear TFLOP/s | % of dense peak "
           "| weights GiB | KV GiB | peak GiB |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        pct = "-" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}%"
        peak = "-" if r["peak_device_gib"] is None else f"{r['peak_device_gib']:.1f}"
        weights = r["quantization"] if r["quantization"] != "none" else r["dtype"]
        out.append(f"| {r['shape']} | {weights} | {r['device']} | {r['workload']} "
                   f"| {r['tok_s']:.0f} | {r['linear_tflop_s']:.1f} | {pct} "
                   f"| {r['weights_gib']:.1f} | {r['kv_cache_gib']:.1f} | {peak} |")  # fmt: skip
    pairs = {}
    for r in rows:
        pairs.setdefault((r["shape"], r["workload"]), {})[r["quantization"]] = r["tok_s"]
    ratios = [f"- {s} {w}: FP8 {q['fp8'] / q['none']:.2f}x bf16" for (s, w), q in pairs.items()
              if "fp8" in q and "none" in q]  # fmt: skip
    return "\n".join(out + ([""] + ratios if ratios else [])) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--shape", default="70b", help=f"one or more of {', '.join(SHAPES)}")
    ap.add_argument("--quantization", default="fp8", help="none (bf16), fp8 and/or int8")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--workloads", default="rlhf-group,mixed")
    ap.add_argument("--fraction", type=float, default=1.0, help="share of each workload to run")
    ap.add_argument("--budget", type=int, default=8192, help="tokens per step")
    ap.add_argument("--out", type=Path, default=None, help="write <out>.md and <out>.json")
    args = ap.parse_args(argv)
    rows = []
    for shape in args.shape.split(","):
        for q in args.quantization.split(","):
            rows += run(shape, q, args.device, args.workloads.split(","), budget=args.budget,
                        fraction=args.fraction)  # fmt: skip
    text = render(rows)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = (f"# Synthetic-weight engines ({stamp})\n\nWeights drawn on the device with a "
              "fixed seed; workloads of bench/e2e.py through the scheduler and runner. "
              "Linear TFLOP/s: computed tokens x 2 x non-embedding linear parameters.\n\n")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(header + text)
        args.out.with_suffix(".json").write_text(json.dumps({"date": stamp, "rows": rows}, indent=2))
    print(header + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
