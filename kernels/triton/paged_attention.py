"""Causal GQA prefill attention over the paged KV cache, in Triton (FlashAttention-2
style: tiled, online softmax in fp32). Layout and semantics: kernels/paged_attention.py
and kernels/README.md ("Paged KV cache").

Work unit: one program per (query tile, kv head). A query tile holds TILE_TOKENS new
tokens of one sequence times the GROUP q heads that share the kv head (row r = token
r // GROUP, q head kv_head * GROUP + r % GROUP), so each K/V tile is loaded once for the
whole GQA group. For each tile of BLOCK_N keys, up to the tile's last query position:
1. gather K and V rows through the block table (slot = block * block_size + offset);
2. scores = (q @ k^T) * scale * log2(e) in fp32, so that step 3 uses exp2, the
   hardware's instruction (fp32 inputs use 3xTF32 tensor-core products, whose error
   is near fp32's, not plain TF32; it also compiles twice as fast as IEEE); keys after
   the query's absolute position (context_len - query_len + i) are masked, in the
   tiles that hold such keys only: tiles wholly before the query tile's first
   position go through a loop that builds no mask (`_attend_keys`, CAUSAL_MASK);
3. online softmax: m_new = max(m, rowmax(scores)); acc, l rescaled by exp2(m - m_new);
   p = exp2(scores - m_new); l += rowsum(p); acc += p @ v (p rounded to v's dtype, as
   FlashAttention-2 feeds the tensor cores);
4. out = acc / l, rounded to q's dtype.
E4M3 caches (KV_FP8; passed as uint8 views of the codes): each K/V tile is decoded to
fp32 with integer operations (`_e4m3_to_fp32`: exact, the same in the interpreter and on
every GPU, sm_80 included, which has no E4M3 conversion instructions), then cast to q's
dtype (exact: every E4M3 value is a normal fp16 and bf16 number); k_scale is folded
into the softmax scale of step 2 and v_scale into step 4 (out = acc / l * v_scale).
Masked scores use a large finite negative, not -inf, so a row never computes
exp(-inf - -inf); every real query row sees key 0, so its sum l is >= 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2

# Query rows (tokens x GROUP) per program: 128 on GPUs, with 8 warps for the [128, D] fp32
# accumulator (the FlashAttention-2 tile for head_dim 128; not yet tuned by measurement),
# 64 in the interpreter, where smaller tiles run faster.
BLOCK_M_GPU, BLOCK_M_INTERPRETER = 128, 64
BLOCK_N = 64  # keys per tile
MASKED = tl.constexpr(-1.0e30)  # a global a kernel reads must be constexpr
LOG2E = tl.constexpr(1.4426950408889634)  # softmax in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _e4m3_to_fp32(codes):
    """E4M3 codes (uint8) -> fp32, exactly: a normal code's exponent is rebiased (7 ->
    127) and its 3 mantissa bits moved to the top of fp32's; a subnormal one (exponent 0)
    is mantissa * 2^-9; magnitude 0x7F is NaN; bit 7 is the sign."""
    x = codes.to(tl.int32)
    mag = x & 0x7F
    normal = ((mag << 20) + (120 << 23)).to(tl.float32, bitcast=True)
    value = tl.where(mag < 8, mag.to(tl.float32) * 0.001953125, normal)
    value = tl.where(mag == 0x7F, float("nan"), value)
    return tl.where(x >= 128, -value, value)


@triton.jit
def _attend_keys(
    acc, l_i, m_i, q, q_pos, key_start, key_stop, table, key_cache_ptr, value_cache_ptr,
    qk_scale, block_size, row_elems, kv_head, head_dim,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP32_DOT: tl.constexpr,
    CAUSAL_MASK: tl.constexpr, KV_FP8: tl.constexpr,
):  # fmt: skip
    """Steps 1-3 for the key tiles in [key_start, key_stop). Without CAUSAL_MASK every
    key of every tile is visible to every row, so no mask is built."""
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    for tile_start in range(key_start, key_stop, BLOCK_N):
        keys = tile_start + tl.arange(0, BLOCK_N)
        if CAUSAL_MASK:
            key_ok = keys < key_stop
            block = tl.load(table + keys // block_size, mask=key_ok, other=0).to(tl.int64)
            kv_mask = key_ok[:, None] & d_ok[None, :]
        else:
            block = tl.load(table + keys // block_size).to(tl.int64)
            kv_mask = d_ok[None, :]
        kv_off = (block * block_size + keys % block_size) * row_elems + kv_head * head_dim
        k = tl.load(key_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0)
        if KV_FP8:
            k = _e4m3_to_fp32(k).to(q.dtype)
        if FP32_DOT:
            s = tl.dot(q, tl.trans(k), input_precision="tf32x3")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale  # log2 units: exp2 below
        if CAUSAL_MASK:
            s = tl.where((keys[None, :] <= q_pos[:, None]) & key_ok[None, :], s, MASKED)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(value_cache_ptr + kv_off[:, None] + d[None, :], mask=kv_mask, other=0)
        if KV_FP8:
            v = _e4m3_to_fp32(v).to(q.dtype)
        if FP32_DOT:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="tf32x3")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _paged_prefill_kernel(
    out_ptr, q_ptr, key_cache_ptr, value_cache_ptr, block_tables_ptr, tiles_ptr,
    query_start_ptr, context_lens_ptr, k_scale_ptr, v_scale_ptr,
    scale, q_stride_t, q_stride_h, out_stride_t, out_stride_h, table_stride,
    block_size, num_kv_heads, head_dim,
    GROUP: tl.constexpr, TILE_TOKENS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, FP32_DOT: tl.constexpr,
    KV_FP8: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    seq = tl.load(tiles_ptr + 2 * tile)
    first = tl.load(tiles_ptr + 2 * tile + 1)  # first new token of the tile, within the chunk
    q_start = tl.load(query_start_ptr + seq)
    q_len = tl.load(query_start_ptr + seq + 1) - q_start
    ctx = tl.load(context_lens_ptr + seq)

    rows = tl.arange(0, BLOCK_M)
    token = first + rows // GROUP
    head = kv_head * GROUP + rows % GROUP
    row_ok = (rows < TILE_TOKENS * GROUP) & (token < q_len)
    q_pos = ctx - q_len + token  # absolute position of each query row
    d = tl.arange(0, BLOCK_D)
    d_ok = d < head_dim
    q_off = (q_start + token).to(tl.int64) * q_stride_t + head * q_stride_h
    q = tl.load(q_ptr + q_off[:, None] + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)  # fmt: skip

    m_i = tl.full([BLOCK_M], MASKED, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    if KV_FP8:
        qk_scale = scale * tl.load(k_scale_ptr) * LOG2E
    else:
        qk_scale = scale * LOG2E
    table = block_tables_ptr + seq.to(tl.int64) * table_stride
    row_elems = num_kv_heads * head_dim  # one cache slot: [Hkv, D] contiguous
    # Keys before the tile's first query position are visible to all its rows: whole
    # tiles of them go through the unmasked loop, the rest (up to the position the
    # tile's last row sees) through the masked one.
    last_token = tl.minimum(first + TILE_TOKENS, q_len) - 1
    key_end = ctx - q_len + last_token + 1
    open_end = ((ctx - q_len + first + 1) // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attend_keys(
        acc, l_i, m_i, q, q_pos, 0, open_end, table, key_cache_ptr, value_cache_ptr,
        qk_scale, block_size, row_elems, kv_head, head_dim,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, FP32_DOT=FP32_DOT, CAUSAL_MASK=False, KV_FP8=KV_FP8,
    )  # fmt: skip
    acc, l_i, m_i = _attend_keys(
        acc, l_i, m_i, q, q_pos, open_end, key_end, table, key_cache_ptr, value_cache_ptr,
        qk_scale, block_size, row_elems, kv_head, head_dim,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, FP32_DOT=FP32_DOT, CAUSAL_MASK=True, KV_FP8=KV_FP8,
    )  # fmt: skip

    out = acc / tl.where(row_ok, l_i, 1.0)[:, None]
    if KV_FP8:
        out = out * tl.load(v_scale_ptr)
    o_off = (q_start + token).to(tl.int64) * out_stride_t + head * out_stride_h
    tl.store(out_ptr + o_off[:, None] + d[None, :], out.to(q.dtype),
             mask=row_ok[:, None] & d_ok[None, :])  # fmt: skip


def _as_list(values) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else [int(v) for v in values]


def _tiles(starts: list[int], lens: list[int], tile_tokens: int) -> list[int]:
    """Flat (sequence, first token) pairs, longest sequences' tiles first, so the
    longest-running programs start earliest. Checks the metadata on the host."""
    tiles = []
    for s, ctx in enumerate(lens):
        q_len = starts[s + 1] - starts[s]
        if q_len < 0 or ctx < q_len:
            raise ValueError(
                f"triton paged_prefill_attention: sequence {s} has context_len {ctx} "
                f"< query_len {q_len}"
            )
        tiles += [(ctx, s, first) for first in range(0, q_len, tile_tokens)]
    tiles.sort(key=lambda t: -t[0])
    return [v for _, s, first in tiles for v in (s, first)]


def paged_prefill_attention_triton(
    q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """kernels.paged_prefill_attention's triton backend (arguments checked there)."""
    kv_fp8 = k_scale is not None
    if kv_fp8:  # the kernel decodes the codes itself
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
    num_blocks, block_size, num_kv, head_dim = key_cache.shape
    group = q.shape[1] // num_kv
    on_gpu = q.device.type == "cuda"
    block_m = max(BLOCK_M_GPU if on_gpu else BLOCK_M_INTERPRETER, next_power_of_2(group))
    tile_tokens = block_m // group
    starts, lens = _as_list(query_start_loc), _as_list(context_lens)
    max_blocks = max((-(-n // block_size) for n in lens), default=0)
    if max_blocks > block_tables.shape[1]:
        raise ValueError(
            f"triton paged_prefill_attention: a context needs {max_blocks} blocks but "
            f"block_tables has {block_tables.shape[1]} columns"
        )
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    tiles = _tiles(starts, lens, tile_tokens)
    if not tiles:
        return out
    device = q.device
    tiles_t = torch.tensor(tiles, dtype=torch.int32, device=device)
    starts_t = torch.tensor(starts, dtype=torch.int32, device=device)
    lens_t = torch.tensor(lens, dtype=torch.int32, device=device)
    tables = block_tables.to(device=device, dtype=torch.int32)
    if tables.stride(1) != 1:
        tables = tables.contiguous()
    launch(
        _paged_prefill_kernel, (len(tiles) // 2, num_kv), device,
        out, q, key_cache, value_cache, tables, tiles_t, starts_t, lens_t,
        k_scale if kv_fp8 else lens_t, v_scale if kv_fp8 else lens_t,  # unread unless KV_FP8
        float(scale), q.stride(0), q.stride(1), out.stride(0), out.stride(1), tables.stride(0),
        block_size, num_kv, head_dim,
        GROUP=group, TILE_TOKENS=tile_tokens, BLOCK_M=block_m, BLOCK_N=BLOCK_N,
        BLOCK_D=max(16, next_power_of_2(head_dim)), FP32_DOT=q.dtype == torch.float32,
        KV_FP8=kv_fp8, num_warps=8 if on_gpu else 4, num_stages=3 if on_gpu else 1,
    )  # fmt: skip
    return out
