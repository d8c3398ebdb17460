"""Rotary embedding (HF Llama rotate-half) fused with the paged KV-cache write, in Triton.

One program per token. With c, s = the cos and sin halves of cos_sin_cache[position]
(compute_cos_sin_cache; Llama-3.1 frequency scaling is already in the cache) and
x1, x2 = the halves of a head vector, in fp32 and rounded once to the activation dtype:
1. x1' = x1 * c - x2 * s and x2' = x2 * c + x1 * s, i.e. x * cos + rotate_half(x) * sin
   with rotate_half(x) = cat(-x2, x1) (HF `rotate_half`, `apply_rotary_pos_emb`);
2. q and k are rotated in place (any token/head strides, last dim contiguous);
3. with WRITE_CACHE, the rotated k and v go to key_cache/value_cache viewed as
   [num_blocks * block_size, Hkv, D] at row slot_mapping[t]; a negative slot is skipped;
4. with KV_FP8 (float8_e4m3fn caches, passed as uint8 views), the rows written are the
   E4M3 codes of x / scale for the rounded k and for v: div_rn (a correctly rounded
   division), then `_e4m3_code`, an integer encoder (round to nearest even, +-448 and
   beyond saturating, inf too, NaN kept): kernels/fp8.py's fp8_quantize bit for bit. It
   avoids Triton's FP8 casts, which need sm_89+ and round unreliably in the interpreter,
   so the write is the same, and tested, everywhere.
Positions and slots are range-checked on the host before the launch (IndexError).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2


@triton.jit
def _e4m3_code(y):
    """fp32 -> E4M3 code (uint8), the encoder of csrc/cpu/fp8.h with int32 operations."""
    u = y.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    # at least 2^-6 (normal): exponent rebiased 127 -> 7, 20 mantissa bits rounded away
    normal = (a + (-120 << 23) + 0x7FFFF + ((a >> 20) & 1)) >> 20
    # below: adding 2^14 puts the subnormal step 2^-9 at fp32's last mantissa bit, so the
    # fp32 add rounds to nearest even
    magic = 141 << 23
    sub = (a.to(tl.float32, bitcast=True) + 16384.0).to(tl.int32, bitcast=True) - magic
    code = tl.where(a < (121 << 23), sub, normal)
    code = tl.where(a >= 0x43E00000, 0x7E, code)  # >= 448 and inf saturate
    code = tl.where(a > 0x7F800000, 0x7F, code)  # NaN
    return (sign | code).to(tl.uint8)


@triton.jit
def _to_e4m3(x, scale):
    """Step 4: the E4M3 code of x / scale."""
    return _e4m3_code(tl.math.div_rn(x.to(tl.float32), scale))


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, v_ptr, pos_ptr, cos_sin_ptr, key_cache_ptr, value_cache_ptr, slot_ptr,
    k_scale_ptr, v_scale_ptr,
    q_stride_t, q_stride_h, k_stride_t, k_stride_h, v_stride_t, v_stride_h,
    num_q_heads, num_kv_heads, half,
    WRITE_CACHE: tl.constexpr, KV_FP8: tl.constexpr, BLOCK_HQ: tl.constexpr,
    BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
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
            vptr = v_ptr + t * v_stride_t + hk[:, None] * v_stride_h + d[None, :]
            v1 = tl.load(vptr, mask=mask, other=0.0)
            v2 = tl.load(vptr + half, mask=mask, other=0.0)
            if KV_FP8:
                k_scale = tl.load(k_scale_ptr)
                v_scale = tl.load(v_scale_ptr)
                tl.store(key_cache_ptr + dst, _to_e4m3(k1, k_scale), mask=mask)
                tl.store(key_cache_ptr + dst + half, _to_e4m3(k2, k_scale), mask=mask)
                tl.store(value_cache_ptr + dst, _to_e4m3(v1, v_scale), mask=mask)
                tl.store(value_cache_ptr + dst + half, _to_e4m3(v2, v_scale), mask=mask)
            else:
                tl.store(key_cache_ptr + dst, k1, mask=mask)
                tl.store(key_cache_ptr + dst + half, k2, mask=mask)
                tl.store(value_cache_ptr + dst, v1, mask=mask)
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


def _run(q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping, k_scale=None,
         v_scale=None):  # fmt: skip
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
    kv_fp8 = k_scale is not None
    if kv_fp8:  # the kernel writes the codes itself
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
    else:  # the scale arguments are not read either
        k_scale = v_scale = cos_sin_cache
    launch(
        _rope_kernel, (tokens,), q.device,
        q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
        k_scale, v_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        num_q, num_kv, half,
        WRITE_CACHE=write, KV_FP8=kv_fp8, BLOCK_HQ=next_power_of_2(num_q),
        BLOCK_HKV=next_power_of_2(num_kv), BLOCK_HALF=next_power_of_2(half),
    )  # fmt: skip
    return q, k


def rope_triton(q, k, positions, cos_sin_cache):
    """kernels.rope's triton backend (arguments checked by kernels.rope)."""
    return _run(q, k, None, positions, cos_sin_cache, None, None, None)


def rope_and_cache_triton(
    q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """kernels.rope_and_cache's triton backend (arguments checked by kernels.rope)."""
    return _run(
        q, k, v, positions, cos_sin_cache, key_cache, value_cache, slot_mapping, k_scale, v_scale
    )
