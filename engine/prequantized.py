"""Pre-quantized FP8 HF checkpoints: NVIDIA ModelOpt, compressed-tensors, vLLM "fp8".

Recognized by their quantization config:
- ModelOpt: ``hf_quant_config.json`` {"quantization": {"quant_algo": "FP8" |
  "FP8_PER_CHANNEL_PER_TOKEN", "kv_cache_quant_algo": "FP8" | null, "exclude_modules"}}
  or config.json "quantization_config" {"quant_method": "modelopt", "quant_algo", ...,
  "kv_cache_scheme", "ignore"} (TensorRT-LLM tensorrt_llm/quantization/modelopt_config.py
  reads both shapes; vLLM vllm/model_executor/layers/quantization/modelopt.py);
- compressed-tensors: config.json "quantization_config" {"quant_method":
  "compressed-tensors", "config_groups": {...: {"weights": {"type": "float", "num_bits":
  8, "strategy": "tensor" | "channel"}, "input_activations": {..., "dynamic"}}},
  "kv_cache_scheme"} (vllm .../quantization/compressed_tensors/compressed_tensors.py);
- "fp8": config.json "quantization_config" {"quant_method": "fp8", "activation_scheme":
  "static" | "dynamic"} without "weight_block_size" (vllm .../quantization/fp8.py).

The tensors of every linear layer follow one table (``TENSOR_NAMES``). Loading keeps
the E4M3 codes as stored: the fused q|k|v and gate|up layers concatenate the
projections' codes and give each row its projection's weight scale (this engine's
FP8 GEMM takes one scale per output channel, so no projection is requantized; vLLM,
whose fused GEMM takes one scale per tensor, requantizes them to the largest one).
Static input scales of the projections that share an input (q, k, v; gate, up) are
merged by taking the largest, as vLLM does, so no input is clipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, CheckpointReader, LayerWeights, ModelWeights, load_head
from .config import ModelConfig
from .linear import DenseLinear, QuantizedLinear

FP8 = torch.float8_e4m3fn

# Per linear layer (prefix = "model.layers.{i}.self_attn.q_proj" and so on) and per
# attention block (prefix = "model.layers.{i}.self_attn"):
#   tensor (format)  name                              source
TENSOR_NAMES = {
    "weight": ("{prefix}.weight", "all: E4M3 codes [out, in]"),
    "weight_scale": ("{prefix}.weight_scale",
                     "all: fp32, 1 value (per tensor) or out values (per channel: ModelOpt "
                     "FP8_PER_CHANNEL_PER_TOKEN, compressed-tensors strategy channel)"),
    "input_scale": ("{prefix}.input_scale", "all: fp32, 1 value; absent: dynamic per token"),
    "k_scale/modelopt": ("{attn}.k_proj.k_scale",
                         "ModelOpt; vllm model_loader/weight_utils.py maybe_remap_kv_scale_name"),
    "v_scale/modelopt": ("{attn}.v_proj.v_scale", "ModelOpt (as above)"),
    "k_scale": ("{attn}.k_scale", "compressed-tensors, vLLM fp8"),
    "v_scale": ("{attn}.v_scale", "compressed-tensors, vLLM fp8"),
}  # fmt: skip
PROJECTIONS = {
    "qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")),
    "o_proj": ("self_attn", ("o_proj",)),
    "gate_up": ("mlp", ("gate_proj", "up_proj")),
    "down": ("mlp", ("down_proj",)),
}


@dataclass(frozen=True, slots=True)
class QuantizedSource:
    kind: str  # "modelopt" | "compressed-tensors" | "fp8"
    algo: str  # as the config says it, for messages
    kv_cache_fp8: bool


def detect(path: Path, raw_config: dict) -> QuantizedSource | None:
    """The pre-quantization of a checkpoint directory, None when it has none. An
    unsupported scheme raises CheckpointError saying what is supported."""
    hf_quant = path / "hf_quant_config.json"
    qc = raw_config.get("quantization_config")
    if hf_quant.is_file():
        data = json.loads(hf_quant.read_text())
        q = data.get("quantization") if isinstance(data.get("quantization"), dict) else data
        return _modelopt(q.get("quant_algo"), q.get("kv_cache_quant_algo"), hf_quant.name)
    if qc is None:
        return None
    method = str(qc.get("quant_method", "")).lower()
    if method.startswith("modelopt"):
        kv = qc.get("kv_cache_quant_algo") or _kv_scheme(qc.get("kv_cache_scheme"))
        return _modelopt(qc.get("quant_algo"), kv, "config.json")
    if method == "compressed-tensors":
        return _compressed_tensors(qc)
    if method == "fp8":
        if qc.get("weight_block_size"):
            raise CheckpointError(
                "block-wise FP8 (weight_block_size) is not supported: this engine's FP8 GEMM "
                "takes one weight scale per output channel; use a per-tensor or per-channel "
                "FP8 checkpoint, or the unquantized one"
            )
        return QuantizedSource("fp8", f"fp8 ({qc.get('activation_scheme', 'dynamic')})", False)
    raise CheckpointError(
        f"quantization_config quant_method {qc.get('quant_method')!r} is not supported; "
        "supported: modelopt (FP8, FP8_PER_CHANNEL_PER_TOKEN), compressed-tensors FP8, fp8"
    )


def _kv_scheme(scheme) -> str | None:
    if isinstance(scheme, dict) and scheme.get("type") == "float" and scheme.get("num_bits") == 8:
        return "FP8"
    return None


def _modelopt(algo, kv_algo, where: str) -> QuantizedSource:
    algo = str(algo or "").upper()
    if algo not in ("FP8", "FP8_PER_CHANNEL_PER_TOKEN"):
        raise CheckpointError(
            f"ModelOpt quant_algo {algo or None!r} ({where}) is not supported; supported: FP8, "
            "FP8_PER_CHANNEL_PER_TOKEN"
        )
    kv = str(kv_algo or "").upper()
    if kv not in ("", "NONE", "FP8"):
        raise CheckpointError(f"ModelOpt kv_cache_quant_algo {kv!r} is not supported (FP8 is)")
    return QuantizedSource("modelopt", algo, kv == "FP8")


def _compressed_tensors(qc: dict) -> QuantizedSource:
    groups = qc.get("config_groups") or {}
    for name, group in groups.items():
        w = group.get("weights") or {}
        a = group.get("input_activations") or {}
        if w.get("type") != "float" or w.get("num_bits") != 8 or w.get("strategy") not in (
            "tensor", "channel"
        ):  # fmt: skip
            raise CheckpointError(
                f"compressed-tensors group {name!r}: weights {w} are not FP8 per tensor or per "
                "channel (the only compressed-tensors scheme supported)"
            )
        if a and (a.get("type") != "float" or a.get("num_bits") != 8):
            raise CheckpointError(f"compressed-tensors group {name!r}: input activations {a} "
                                  "are not FP8")  # fmt: skip
    kv = _kv_scheme(qc.get("kv_cache_scheme")) == "FP8"
    return QuantizedSource("compressed-tensors", "FP8", kv)


def load_prequantized(
    path: Path, cfg: ModelConfig, source: QuantizedSource, dtype: torch.dtype,
    reward_token_ids: tuple[int, ...],
) -> ModelWeights:  # fmt: skip
    """The checkpoint's FP8 layers as stored (module docstring); everything else dense
    in ``dtype``. Layers the quantization left out (exclude_modules) stay dense."""
    with CheckpointReader(path) as reader:
        layers = [_layer(reader, cfg, i, dtype, source) for i in range(cfg.num_layers)]
        return ModelWeights(
            embed=reader.get("model.embed_tokens.weight", dtype),
            layers=layers,
            final_norm=reader.get("model.norm.weight", dtype),
            head=load_head(reader, cfg, dtype, reward_token_ids),
        )


def _layer(reader, cfg, i, dtype, source: QuantizedSource) -> LayerWeights:
    p = f"model.layers.{i}."
    linears = {n: _linear(reader, p + group + ".", projs, dtype)
               for n, (group, projs) in PROJECTIONS.items()}  # fmt: skip
    layer = LayerWeights(
        input_norm=reader.get(p + "input_layernorm.weight", dtype),
        post_norm=reader.get(p + "post_attention_layernorm.weight", dtype),
        **linears,
    )
    if source.kv_cache_fp8:
        attn = p + "self_attn"
        k = _first(reader, [f"{attn}.k_proj.k_scale", f"{attn}.k_scale"])
        v = _first(reader, [f"{attn}.v_proj.v_scale", f"{attn}.v_scale"])
        if k is None or v is None:
            raise CheckpointError(f"the checkpoint declares an FP8 KV cache but layer {i} has no "
                                  f"k_scale / v_scale ({TENSOR_NAMES['k_scale/modelopt'][0]})")  # fmt: skip
        layer.k_scale = _scalar(k, f"{attn} k_scale")
        layer.v_scale = _scalar(v, f"{attn} v_scale")
    return layer


def _first(reader, names):
    for name in names:
        if name in reader:
            return reader.get(name, torch.float32)
    return None


def _scalar(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.numel() != 1:
        raise CheckpointError(f"{what} has shape {list(t.shape)}; expected one value")
    return t.reshape(()).float()


def _linear(reader, prefix: str, projs: tuple[str, ...], dtype):
    names = [prefix + p for p in projs]
    fp8 = [reader.dtype(n + ".weight") == FP8 for n in names]
    bias = [reader.get_optional(n + ".bias", dtype) for n in names]
    bias = None if all(b is None for b in bias) else torch.cat(bias)
    if not any(fp8):
        return DenseLinear(torch.cat([reader.get(n + ".weight", dtype) for n in names]), bias)
    if not all(fp8):
        raise CheckpointError(f"{', '.join(names)}: some are FP8 and some are not; the engine "
                              "fuses them into one layer, so they must all be FP8 or none")  # fmt: skip
    codes, scales, inputs = [], [], []
    for n in names:
        w = reader.get(n + ".weight", None)
        s = reader.get(n + ".weight_scale", torch.float32) if n + ".weight_scale" in reader else None
        if s is None:
            raise CheckpointError(f"{n}.weight is FP8 but {n}.weight_scale is missing")
        if s.numel() == 1:
            s = s.reshape(1).expand(w.shape[0])
        elif s.numel() == w.shape[0]:
            s = s.reshape(-1)
        else:
            raise CheckpointError(
                f"{n}.weight_scale has shape {list(s.shape)}; expected 1 or {w.shape[0]} values "
                "(block-wise scales are not supported)"
            )
        codes.append(w)
        scales.append(s)
        inputs.append(reader.get_optional(n + ".input_scale", torch.float32))
    if any(x is None for x in inputs) and not all(x is None for x in inputs):
        raise CheckpointError(f"{', '.join(names)}: input_scale given for some, not all")
    input_scale = None
    if inputs[0] is not None:
        input_scale = torch.stack([x.reshape(-1).max() for x in inputs]).max().reshape(())
    return QuantizedLinear("fp8", torch.cat(codes), torch.cat(scales).contiguous(), input_scale,
                           dtype, None if bias is None else bias.to(dtype))  # fmt: skip
