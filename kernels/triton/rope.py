"""Rotary embedding (HF Llama rotate-half) fused with the paged KV-cache write, in Triton.

One program per token. With c, s = the cos and sin halves of cos_sin_cache[position]
(compute_cos_sin_cache; Llama-3.1 frequency scaling is already in the cache) and
x1, x2 = the halves of a head vector, in fp32 and rounded once to the activation dtype:
1. x1' = x1 * c - x2 * s and x2' = x2 * c + x1 * s, i.e. x * cos + rotate_half(x) * sin
   with rotate_half(x) = cat(-x2, x1) (HF `rotate_half`, `apply_rotary_pos_emb`);
2. q and k are rotated in place (any token/head strides, last dim contiguous);
3. with WRITE_CACHE, the rotated k and v go to key_cache/value_cache viewed as
   [num_blocks * block_size, Hkv, D] at row slot_mapping[t]; a negative slot is skipped.
Positions and slots are range-checked on the host before the launch (IndexError).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h,
    num_q_heads, num_kv_heads, half,
    WRITE_CACHE: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)
    d_mask = d < half
    c = tl.load(cos_sin_ptr + pos * 2 * half + d, mask=d_mask, other=0.0)[None, :]
    s = tl.load(cos_sin_ptr + pos * 2 * half + half + d, mask=d_mask, other=0.0)[None, :]

    hq = tl.arange(0, BLOCK_HQ)
    mask = (hq < num_q_heads)[:, None] & d_mask[None, :]
    ptr = q_ptr + t * q_stride_t + hq[:, None] * q_stride_h + d[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + half, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(ptr, (a * c - b * s).to(x1.dtype), mask=mask)
    tl.store(ptr + half, (b * c + a * s).to(x1.dtype), mask=mask)

    hk = tl.arange(0, BLOCK_HKV)
    mask = (hk < num_kv_heads)[:, None] & d_mask[None, :]
    ptr = k_ptr + t * k_stride_t + hk[:, None] * k_stride_h + d[None, :]
    x1 = tl.load(ptr, mask=mask, other=0.0)
    x2 = tl.load(ptr + half, mask=mask, other=0.0)
    a, b = x1.to(tl.float32), x2.to(tl.float32)
    k1 = (a * c - b * s).to(x1.dtype)
    k2 = (b * c + a * s).to(x1.dtype)
    tl.store(ptr, k1, mask=mask)
    tl.store(ptr + half, k2, mask=mask)

    if WRITE_CACHE:
        slot = tl.load(slot_ptr + t).to(tl.int64)
        if slot >= 0:
            # cache row `slot` is [Hkv, D] contiguous
            dst = slot * num_kv_heads * 2 * half + hk[:, None] * 2 * half + d[None, :]
            tl.store(key_cache_ptr + dst, k1, mask=mask)
            tl.store(key_cache_ptr + dst + half, k2, mask=mask)
            vptr = v_ptr + t * v_stride_t + hk[:, None] * v_stride_h + d[None, :]
            tl.store(value_cache_ptr + dst, tl.load(vptr, mask=mask, other=0.0), mask=mask)
            v2 = tl.load(vptr + half, mask=mask, other=0.0)
            tl.store(value_cache_ptr + dst + half, v2, mask=mask)


def _check_range(name: str, values: torch.Tensor, limit: int, allow_negative: bool) -> None:
    """IndexError unless every value is in [0, limit) (negative allowed when asked)."""
    if values.numel() == 0:
        return
    valid = values[values >= 0] if allow_negative else values
    low, high = (0, -1) if valid.numel() == 0 else (int(valid.min()), int(valid.max()))
    if low < 0 or high >= limit:
        bad = low if low < 0 else high
        raise IndexError(f"triton rope: {name} value {bad} is outside [0, {limit})")


def _run(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping):
    tokens, num_q, head_dim = q.shape
    num_kv = k.shape[1]
    _check_range("positions", positions, cos_sin_cache.shape[0], allow_negative=False)
    write = key_cache is not None
    if write:
        slots = key_cache.shape[0] * key_cache.shape[1]
        _check_range("slot_mapping", slot_mapping, slots, allow_negative=True)
    if tokens == 0:
        return q, k
    half = head_dim // 2
    if not write:  # the cache arguments are not read (WRITE_CACHE=False): any pointer will do
        v, key_cache, value_cache, slot_mapping = k, k, k, positions
    launch(
        _rope_kernel, (tokens,), q.device,
        q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        num_q, num_kv, half,
        WRITE_CACHE=write, BLOCK_HQ=next_power_of_2(num_q), BLOCK_HKV=next_power_of_2(num_kv),
        BLOCK_HALF=next_power_of_2(half),
    )  # fmt: skip
    return q, k


def rope_triton(q, k, positions, cos_sin_cache):
    """kernels.rope's triton backend (arguments checked by kernels.rope)."""
    return _run(q, k, None, positions, cos_sin_cache, None, None, None)


def rope_and_cache_triton(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping):
    """kernels.rope_and_cache's triton backend (arguments checked by kernels.rope)."""
    return _run(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping)
