"""Configuration records: what the checkpoint says (ModelConfig) and how to run it.

ModelConfig is read from an HF config.json. Both spellings of rope settings are
accepted: `rope_theta` + `rope_scaling` (checkpoints saved before transformers 5, e.g.
the Llama-3.1 releases) and `rope_parameters` (transformers 5).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}

SEQUENCE_CLASSIFICATION = "sequence_classification"
CAUSAL_LM = "causal_lm"


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'bfloat16' | 'float16' | 'float32' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"unsupported compute dtype {dtype}; use bfloat16, float16 or float32")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}; use one of 'bfloat16', 'float16', 'float32'"
        ) from None


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """The shape and numerics of a Llama-architecture reward model."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    mlp_bias: bool
    head_kind: str  # SEQUENCE_CLASSIFICATION or CAUSAL_LM
    num_labels: int
    checkpoint_dtype: torch.dtype
    architecture: str = ""
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_dict(cls, cfg: dict) -> ModelConfig:
        model_type = cfg.get("model_type", "llama")
        if model_type != "llama":
            raise ValueError(
                f"model_type {model_type!r} is not supported: reward-engine runs "
                "Llama-architecture checkpoints (model_type 'llama')"
            )
        if cfg.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {cfg['hidden_act']!r} is not supported (Llama uses silu)")
        architectures = cfg.get("architectures") or ["LlamaForSequenceClassification"]
        arch = architectures[0]
        if arch.endswith("ForSequenceClassification"):
            head_kind = SEQUENCE_CLASSIFICATION
        elif arch.endswith("ForCausalLM"):
            head_kind = CAUSAL_LM
        else:
            raise ValueError(
                f"architecture {arch!r} has no known reward head; expected "
                "LlamaForSequenceClassification or LlamaForCausalLM"
            )
        num_labels = cfg.get("num_labels") or len(cfg.get("id2label") or {}) or 1
        rope = cfg.get("rope_parameters") or {}
        rope_theta = float(cfg.get("rope_theta", rope.get("rope_theta", 10000.0)))
        scaling = cfg.get("rope_scaling") or (rope if rope else None)
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "default":
                scaling = None
            elif kind != "llama3":
                raise ValueError(f"rope_type {kind!r} is not supported; use 'llama3' or plain rope")
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        dtype_name = cfg.get("dtype") or cfg.get("torch_dtype") or "float32"
        return cls(
            hidden_size=hidden,
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=cfg.get("head_dim") or hidden // heads,
            intermediate_size=cfg["intermediate_size"],
            vocab_size=cfg["vocab_size"],
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 8192),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            head_kind=head_kind,
            num_labels=int(num_labels),
            checkpoint_dtype=parse_dtype(dtype_name),
            architecture=arch,
            extra={"pad_token_id": cfg.get("pad_token_id")},
        )

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: --model must be an HF checkpoint directory "
                "(config.json + *.safetensors + tokenizer.json)"
            )
        return cls.from_dict(json.loads(path.read_text()))


# "auto": the cache holds the compute dtype; "fp8": E4M3 (torch.float8_e4m3fn) with a
# per-tensor K and V scale per layer (LayerWeights.k_scale / v_scale; 1.0 when a layer
# holds none), 1 byte per element: the same memory holds twice the tokens of bf16.
KV_CACHE_DTYPES = ("auto", "fp8")


def kv_cache_dtype(kv_cache_dtype: str, compute_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype of the KV cache for RuntimeConfig.kv_cache_dtype."""
    return torch.float8_e4m3fn if kv_cache_dtype == "fp8" else compute_dtype


GIB = 1 << 30
# CPU default KV pool: big enough for thousands of cached prompt blocks, small
# enough to leave the host its memory (a fraction of what is available caps it).
CPU_DEFAULT_KV_CACHE_GIB = 2.0
CPU_DEFAULT_KV_CACHE_FRACTION = 0.25
CUDA_DEFAULT_KV_CACHE_FRACTION = 0.9


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """How the engine runs a loaded model: KV pool, token budget, queue limits.

    KV pool size, first match wins: ``num_kv_blocks`` (exact); ``kv_cache_gib``
    (explicit memory); ``kv_cache_memory_fraction`` (of the device's free memory, or
    of the host's available memory on CPU); default on CPU min(2 GiB, 25 % of
    available memory), on CUDA 90 % of free memory. The pool never exceeds what
    ``max_num_seqs`` requests of ``max_model_len`` tokens could occupy at once.

    ``kv_cache_dtype``: "auto" stores keys and values in the compute dtype; "fp8" stores
    them as E4M3 with per-layer scales, at 1 byte per element (twice the tokens of a
    bf16 pool in the same memory).
    """

    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_gib: float | None = None
    kv_cache_memory_fraction: float | None = None
    max_num_batched_tokens: int = 4096  # tokens per forward pass (the step's budget)
    max_num_seqs: int = 256  # requests running at once
    max_model_len: int | None = None  # default: the checkpoint's max_position_embeddings
    max_waiting_requests: int = 4096  # beyond: EngineOverloadedError
    max_chunk_tokens: int | None = None  # largest chunk of one request per step
    enable_prefix_caching: bool = True
    kv_cache_dtype: str = "auto"
    # Batch-invariant scoring: a sequence's reward is the same bits alone, in any batch,
    # at any position, in any chunking and with or without the prefix cache (every
    # dense product through kernels.batch_invariant_linear; README, "Deterministic
    # mode"). Off by default: the library GEMMs are faster.
    deterministic: bool = False
    # Zero the pool at startup: claims its memory up front and, on CPU, faults its
    # pages in then, not in the first steps that write each block (about 0.25 s
    # per GiB on a 2-core host). Default: on, unless REWARD_ENGINE_KV_CACHE_PRETOUCH=0.
    kv_cache_pretouch: bool = field(
        default_factory=lambda: os.environ.get("REWARD_ENGINE_KV_CACHE_PRETOUCH", "1") != "0"
    )

    def __post_init__(self):
        required = ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_waiting_requests")
        optional = ("num_kv_blocks", "max_model_len", "max_chunk_tokens")
        for name in required + optional:
            value = getattr(self, name)
            if value is None and name in optional:
                continue
            if type(value) is not int or value < 1:  # bool is an int subclass: excluded
                raise ValueError(f"RuntimeConfig.{name} must be a positive int, got {value!r}")
        for name in ("enable_prefix_caching", "deterministic", "kv_cache_pretouch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"RuntimeConfig.{name} must be True or False, got {getattr(self, name)!r}"
                )
        if self.kv_cache_gib is not None and not self.kv_cache_gib > 0:
            raise ValueError(f"RuntimeConfig.kv_cache_gib must be > 0, got {self.kv_cache_gib!r}")
        if self.kv_cache_dtype not in KV_CACHE_DTYPES:
            raise ValueError(
                f"RuntimeConfig.kv_cache_dtype must be 'auto' (the compute dtype) or 'fp8' "
                f"(E4M3 with per-layer scales), got {self.kv_cache_dtype!r}"
            )
        fraction = self.kv_cache_memory_fraction
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(
                f"RuntimeConfig.kv_cache_memory_fraction must be in (0, 1], got {fraction!r}"
            )
