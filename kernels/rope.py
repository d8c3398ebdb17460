"""Rotary position embedding (HF Llama rotate-half convention) and its cos/sin cache.

`compute_cos_sin_cache` reproduces the frequencies of HF transformers'
LlamaRotaryEmbedding (modeling_rope_utils.py: default, linear and llama3 rope types);
`rope` rotates q and k in place from that cache by token position.
"""

from __future__ import annotations

import math

import torch

from . import custom_ops
from ._checks import check_dtype, check_same
from .backend import Op, triton_impl
from .fp8 import FP8_DTYPE, fp8_quantize_reference, kv_cache_scales

# ----------------------------------------------------------------------------- cos/sin cache


def _inv_freq(
    head_dim: int, rope_theta: float, rope_scaling: dict | None
) -> tuple[torch.Tensor, float]:
    """(inv_freq [head_dim/2] fp32, attention_scaling), the same tensor ops as HF.

    - default: inv_freq = 1 / theta^(arange(0, D, 2) / D)  (arange as int64 -> fp32)
    - linear:  inv_freq / factor
    - llama3 (Llama-3.1, `_compute_llama3_parameters`): with wavelen = 2 pi / inv_freq,
      low_wl = original_max / low_freq_factor, high_wl = original_max / high_freq_factor:
        wavelen > low_wl           -> inv_freq / factor
        high_wl <= wavelen <= low_wl -> (1 - smooth) * inv_freq / factor + smooth * inv_freq,
                                      smooth = (original_max / wavelen - low) / (high - low)
        otherwise                  -> inv_freq
    All three have attention_scaling 1.0 in HF.
    """
    scaling = dict(rope_scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if scaling.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("compute_cos_sin_cache: partial_rotary_factor != 1 is not supported")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(dtype=torch.float) / head_dim
    inv_freq = 1.0 / (rope_theta**exponent)
    if rope_type == "default":
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / scaling["factor"], 1.0
    if rope_type != "llama3":
        raise ValueError(
            f"compute_cos_sin_cache: rope_type {rope_type!r} is not supported "
            "(supported: default, linear, llama3)"
        )
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, inv_freq_llama), 1.0


def compute_cos_sin_cache(
    head_dim: int,
    max_position: int,
    rope_theta: float,
    rope_scaling: dict | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """fp32 [max_position, head_dim]: row p = cat(cos(p * inv_freq), sin(p * inv_freq)).

    As in HF's LlamaRotaryEmbedding.forward: freqs = float(p) * inv_freq in fp32, then
    cos and sin in fp32 (times attention_scaling when a rope type defines one != 1).
    `rope_scaling` is the config's dict (keys `rope_type` or legacy `type`, `factor`, ...).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"compute_cos_sin_cache: head_dim must be even and > 0, got {head_dim}")
    inv_freq, attention_scaling = _inv_freq(head_dim, rope_theta, rope_scaling)
    positions = torch.arange(max_position, dtype=torch.int64).float()
    freqs = positions[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    if attention_scaling != 1.0:
        cos, sin = cos * attention_scaling, sin * attention_scaling
    return torch.cat([cos, sin], dim=-1).to(device or "cpu")


# ----------------------------------------------------------------------------- reference


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_reference(q, k, positions, cos_sin_cache):
    """Rotate q [T, Hq, D] and k [T, Hkv, D] in place; returns (q, k).

    1. c, s = cos_sin_cache[positions] split in halves, each repeated to width D;
    2. x_rot = x * c + rotate_half(x) * s, with x, c, s in fp32,
       rotate_half(x) = cat(-x[D/2:], x[:D/2]) (HF `rotate_half`);
    3. x <- x_rot rounded once to x's dtype.
    HF's apply_rotary_pos_emb does step 2 in the activation dtype (cos/sin rounded to
    bf16 and each product rounded); fp32 with one rounding is closer to exact and
    differs from HF by about one bf16 ulp. In fp32 the two agree.
    """
    half = cos_sin_cache.shape[1] // 2
    rows = cos_sin_cache[positions.long()]
    cos = rows[:, :half].repeat(1, 2)[:, None, :]
    sin = rows[:, half:].repeat(1, 2)[:, None, :]
    for x in (q, k):
        h = x.float()
        x.copy_((h * cos + _rotate_half(h) * sin).to(x.dtype))
    return q, k


# ----------------------------------------------------------------------------- cpu


def rope_native(q, k, positions, cos_sin_cache):
    """cpu and cuda backends: torch.ops.reward_engine.rope on q's device."""
    custom_ops.rope(q, k, positions, cos_sin_cache)
    return q, k


rope_cpu = rope_native


def check_indices_on_device(positions, max_position, slot_mapping=None, num_slots=0):
    """The cuda kernels do not range-check (that would need a host copy inside the
    launcher): check here with tensor ops, one synchronization, IndexError as on CPU.
    Skipped while a CUDA graph is captured or torch.compile traces (no host sync there)."""
    if torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing():
        return
    bad = ((positions < 0) | (positions >= max_position)).any()
    if slot_mapping is not None:
        bad = bad | (slot_mapping >= num_slots).any()
    if bool(bad):
        raise IndexError(
            f"rope: a position is outside [0, {max_position}) or a slot is >= {num_slots}"
        )


def rope_cuda(q, k, positions, cos_sin_cache):
    check_indices_on_device(positions, cos_sin_cache.shape[0])
    return rope_native(q, k, positions, cos_sin_cache)


# ----------------------------------------------------------------------------- public op

ROPE = Op(
    "rope",
    {
        "reference": rope_reference,
        "cpu": rope_cpu,
        "cuda": rope_cuda,
        "triton": triton_impl("rope", "rope_triton"),
    },
)


# ----------------------------------------------------------------------------- rope + KV-cache write


def rope_and_cache_reference(
    q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """1. rope_reference(q, k, positions, cos_sin_cache) in place;
    2. for every token t with slot_mapping[t] >= 0, write the rotated k[t] and v[t] to
       key_cache / value_cache at slot = block * block_size + offset (the cache viewed
       as [num_blocks * block_size, Hkv, D]); negative slots (padding) are skipped;
    3. with float8_e4m3fn caches, what is written is fp8_quantize(k[t], k_scale) and
       fp8_quantize(v[t], v_scale) of the activation-dtype values (kernels/fp8.py: x / scale
       in fp32, clamped to +-448, rounded to nearest even; NaN stays NaN, inf saturates).
    """
    rope_reference(q, k, positions, cos_sin_cache)
    valid = slot_mapping >= 0
    slots = slot_mapping[valid].long()
    rows_k, rows_v = k[valid], v[valid]
    if key_cache.dtype == FP8_DTYPE:
        width = rows_k.shape[-1]
        rows_k = fp8_quantize_reference(rows_k.reshape(-1, width), k_scale, "tensor")[0]
        rows_v = fp8_quantize_reference(rows_v.reshape(-1, width), v_scale, "tensor")[0]
    key_cache.view(-1, *key_cache.shape[2:])[slots] = rows_k.view(-1, *key_cache.shape[2:])
    value_cache.view(-1, *value_cache.shape[2:])[slots] = rows_v.view(-1, *value_cache.shape[2:])
    return q, k


def _code_view(cache: torch.Tensor) -> torch.Tensor:
    """E4M3 caches cross the op boundary as uint8 views (kernels/custom_ops.py)."""
    return cache.view(torch.uint8) if cache.dtype == FP8_DTYPE else cache


def rope_and_cache_native(
    q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """cpu and cuda backends: torch.ops.reward_engine.rope_and_cache on q's device."""
    custom_ops.rope_and_cache(
        q, k, v, positions, cos_sin_cache, _code_view(key_cache), _code_view(value_cache),
        slot_mapping, k_scale, v_scale,
    )  # fmt: skip
    return q, k


rope_and_cache_cpu = rope_and_cache_native


def rope_and_cache_cuda(
    q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
    k_scale=None, v_scale=None,
):  # fmt: skip
    num_slots = key_cache.shape[0] * key_cache.shape[1]
    check_indices_on_device(positions, cos_sin_cache.shape[0], slot_mapping, num_slots)
    return rope_and_cache_native(
        q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping, k_scale, v_scale
    )


ROPE_AND_CACHE = Op(
    "rope_and_cache",
    {
        "reference": rope_and_cache_reference,
        "cpu": rope_and_cache_cpu,
        "cuda": rope_and_cache_cuda,
        "triton": triton_impl("rope", "rope_and_cache_triton"),
    },
)


def _check_rope_args(q, k, positions, cos_sin_cache) -> None:
    check_dtype("rope", "q", q)
    check_same("rope", "q", q, k=k)
    if q.dim() != 3 or k.dim() != 3 or q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"rope: expected q [T, Hq, D] and k [T, Hkv, D]; got {tuple(q.shape)}, {tuple(k.shape)}"
        )
    if q.shape[2] % 2 or (q.stride(2) != 1 and q.numel()) or (k.stride(2) != 1 and k.numel()):
        raise ValueError("rope: head_dim must be even and the last dim of q and k contiguous")
    if positions.dtype not in (torch.int32, torch.int64) or positions.shape != (q.shape[0],):
        raise ValueError(
            f"rope: positions must be int32/int64 [{q.shape[0]}]; "
            f"got {positions.dtype} {tuple(positions.shape)}"
        )
    if (
        cos_sin_cache.dtype != torch.float32
        or cos_sin_cache.dim() != 2
        or (cos_sin_cache.shape[1] != q.shape[2])
    ):
        raise ValueError(
            f"rope: cos_sin_cache must be float32 [max_pos, {q.shape[2]}]; "
            f"got {cos_sin_cache.dtype} {tuple(cos_sin_cache.shape)}"
        )
    for name, t in (("positions", positions), ("cos_sin_cache", cos_sin_cache)):
        if t.device != q.device:
            raise ValueError(f"rope: {name} is on {t.device} but q is on {q.device}")


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    *,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply rotary embedding to q [T, Hq, D] and k [T, Hkv, D] in place; returns (q, k).

    q and k may be strided views into a fused qkv tensor [T, (Hq + 2 Hkv) * D]: any
    token and head strides work as long as the last dim is contiguous. positions is
    int32 or int64 [T]; cos_sin_cache is compute_cos_sin_cache(...) [max_pos, D] fp32.
    """
    _check_rope_args(q, k, positions, cos_sin_cache)
    impl = ROPE.select(q.device, backend)
    return impl(q, k, positions.contiguous(), cos_sin_cache.contiguous())


def rope_and_cache(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rope(q, k, ...) in place, then k (rotated) and v [T, Hkv, D] written to the paged
    caches [num_blocks, block_size, Hkv, D] (contiguous) at slot_mapping[t] (int32/int64,
    block * block_size + offset; negative = skip). Returns (q, k).

    The caches hold q's dtype, or float8_e4m3fn: then k_scale and v_scale (per-tensor fp32
    scales, one per layer, static; required) are given and the cache rows are
    fp8_quantize(k, k_scale) and fp8_quantize(v, v_scale) of the rotated k and of v.
    """
    op = "rope_and_cache"
    _check_rope_args(q, k, positions, cos_sin_cache)
    check_same(op, "q", q, v=v)
    check_same(op, "key_cache", key_cache, value_cache=value_cache)
    if key_cache.device != q.device:
        raise ValueError(f"{op}: key_cache is on {key_cache.device} but q is on {q.device}")
    k_scale, v_scale = kv_cache_scales(op, q.dtype, key_cache, k_scale, v_scale)
    if v.shape != k.shape or (v.stride(-1) != 1 and v.numel()):
        raise ValueError(
            f"{op}: v {tuple(v.shape)} must match k {tuple(k.shape)}, last dim contiguous"
        )
    if (
        key_cache.dim() != 4
        or value_cache.shape != key_cache.shape
        or (key_cache.shape[2:] != k.shape[1:])
    ):
        raise ValueError(
            f"{op}: caches must be [num_blocks, block_size, {k.shape[1]}, {k.shape[2]}]; got "
            f"{tuple(key_cache.shape)} and {tuple(value_cache.shape)}"
        )
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError(f"{op}: key_cache and value_cache must be contiguous")
    if slot_mapping.dtype not in (torch.int32, torch.int64) or slot_mapping.shape != (q.shape[0],):
        raise ValueError(
            f"{op}: slot_mapping must be int32/int64 [{q.shape[0]}]; "
            f"got {slot_mapping.dtype} {tuple(slot_mapping.shape)}"
        )
    impl = ROPE_AND_CACHE.select(q.device, backend)
    scales = {} if k_scale is None else {"k_scale": k_scale, "v_scale": v_scale}
    return impl(
        q, k, v, positions.contiguous(), cos_sin_cache.contiguous(), key_cache, value_cache,
        slot_mapping.contiguous(), **scales,
    )  # fmt: skip
