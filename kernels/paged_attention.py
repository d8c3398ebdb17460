"""Causal prefill attention over a paged KV cache.

KV-cache layout (see kernels/README.md): key_cache and value_cache are
[num_blocks, block_size, num_kv_heads, head_dim] (block size 16 by default in the
engine); token j of sequence s lives in block block_tables[s, j // block_size] at
offset j % block_size, i.e. slot block * block_size + offset (what rope_and_cache
writes). A batch packs the NEW tokens of S sequences: sequence s owns q rows
query_start_loc[s]:query_start_loc[s+1] and has context_lens[s] tokens in the cache
(cached prefix + the new ones), so its new tokens sit at absolute positions
context_len - query_len .. context_len - 1 and attend causally to all cached keys.

The caches hold q's dtype, or float8_e4m3fn with per-tensor fp32 scales k_scale and
v_scale (what rope_and_cache wrote: e4m3(k / k_scale)): keys and values are then
k_fp8 * k_scale and v_fp8 * v_scale in fp32 (the decode is exact; the multiply rounds
once in fp32, and kernels may fold the scales into the softmax scale and the output).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import custom_ops
from ._checks import check_dtype, check_same
from .backend import Op, triton_impl
from .fp8 import FP8_DTYPE, kv_cache_scales


def _as_list(values) -> list[int]:
    return values.tolist() if isinstance(values, torch.Tensor) else [int(v) for v in values]


def _gather_sequence(key_cache, value_cache, block_tables, s: int, ctx: int):
    """Sequence s's first ctx keys and values, [ctx, Hkv, D] each, through its block table."""
    block_size, num_kv_heads, head_dim = key_cache.shape[1:]
    blocks = block_tables[s, : -(-ctx // block_size)].long()
    # rows of whole blocks: index_select copies a flat row at a time (3x faster here
    # than selecting along dim 0 of the 4-d cache)
    rows = key_cache.shape[0]
    k = key_cache.view(rows, -1).index_select(0, blocks).view(-1, num_kv_heads, head_dim)
    v = value_cache.view(rows, -1).index_select(0, blocks).view(-1, num_kv_heads, head_dim)
    return k[:ctx], v[:ctx]


def paged_prefill_attention_reference(
    q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """The specification, written for clarity; for each sequence s:

    1. gather its context_len keys/values from the cache through its block table
       (E4M3 caches: decoded to fp32 and multiplied by k_scale / v_scale in fp32);
    2. repeat each kv head Hq/Hkv times (GQA: q head h reads kv head h // group);
    3. scores = (q @ k^T) * scale in fp32; the query at absolute position p masks keys
       j > p with -inf (p = context_len - query_len + i for its i-th new token);
    4. softmax in fp32, times v in fp32, cast to q's dtype.
    """
    starts, lens = _as_list(query_start_loc), _as_list(context_lens)
    group = q.shape[1] // key_cache.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for s, ctx in enumerate(lens):
        q_len = starts[s + 1] - starts[s]
        if q_len == 0:
            continue
        k, v = _gather_sequence(key_cache, value_cache, block_tables, s, ctx)
        qi = q[starts[s] : starts[s + 1]].float().transpose(0, 1)  # [Hq, q_len, D]
        if key_cache.dtype == FP8_DTYPE:
            k, v = k.float() * k_scale, v.float() * v_scale
        ki = k.float().repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, ctx, D]
        vi = v.float().repeat_interleave(group, dim=1).transpose(0, 1)
        scores = (qi @ ki.transpose(1, 2)) * scale
        q_pos = torch.arange(q_len, device=q.device)[:, None] + (ctx - q_len)
        scores.masked_fill_(torch.arange(ctx, device=q.device)[None, :] > q_pos, float("-inf"))
        out[starts[s] : starts[s + 1]] = (scores.softmax(-1) @ vi).transpose(0, 1).to(q.dtype)
    return out


def paged_prefill_attention_native(
    q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
    k_scale=None, v_scale=None,
):  # fmt: skip
    """cpu: fp32 online softmax over chunks of 64 keys (csrc/cpu/attention_kernels.h);
    cuda: FlashAttention-2 on mma.sync tensor cores for bf16/fp16 at head_dim 64/128
    (csrc/cuda/attention_mma_kernels.cuh), else a scalar kernel (attention_kernels.cuh).
    Both through torch.ops.reward_engine.paged_prefill_attention; E4M3 caches travel as
    uint8 views."""
    if key_cache.dtype == FP8_DTYPE:
        key_cache, value_cache = key_cache.view(torch.uint8), value_cache.view(torch.uint8)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    starts = torch.as_tensor(query_start_loc, dtype=torch.int64, device=q.device).contiguous()
    lens = torch.as_tensor(context_lens, dtype=torch.int64, device=q.device).contiguous()
    tables = block_tables.to(device=q.device, dtype=torch.int32).contiguous()
    custom_ops.paged_prefill_attention(
        out, q, key_cache, value_cache, tables, starts, lens, float(scale), k_scale, v_scale
    )
    return out


def paged_prefill_attention_sdpa(
    q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
):  # fmt: skip
    """The same attention as torch SDPA per sequence: its keys and values gathered from
    the cache into contiguous tensors, the causal mask aligned to the end (a query at
    absolute position p sees keys 0..p). Taken only when REWARD_ENGINE_CPU_ATTENTION=sdpa
    asks for it (a cross-check of the kernel, or a way round a problem with it). Its
    split over keys follows SDPA's blocking, not absolute positions: never used in
    batch-invariant mode."""
    starts, lens = _as_list(query_start_loc), _as_list(context_lens)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    for s, ctx in enumerate(lens):
        q_len = starts[s + 1] - starts[s]
        if q_len == 0:
            continue
        k, v = _gather_sequence(key_cache, value_cache, block_tables, s, ctx)
        qi = q[starts[s] : starts[s + 1]].transpose(0, 1).unsqueeze(0)  # [1, Hq, q_len, D]
        ki, vi = k.transpose(0, 1).unsqueeze(0), v.transpose(0, 1).unsqueeze(0)
        if q_len == ctx:
            mask, causal = None, q_len > 1
        else:  # a chunk after cached keys: query i sits at ctx - q_len + i
            mask = torch.ones(q_len, ctx, dtype=torch.bool, device=q.device).tril(ctx - q_len)
            causal = False
        o = F.scaled_dot_product_attention(
            qi, ki, vi, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True
        )
        out[starts[s] : starts[s + 1]] = o[0].transpose(0, 1)
    return out


CPU_ATTENTION = ("auto", "kernel", "sdpa")


def cpu_attention_path(q: torch.Tensor, key_cache: torch.Tensor) -> str:
    """"sdpa" or "kernel": what the cpu backend runs for these tensors. Auto is the C++
    kernel on every CPU: with AMX-BF16 its products run on the tile unit and it takes
    0.61-0.80x the time of the SDPA route there (kernels/README.md); elsewhere (VDPBF16PS
    or FMA) SDPA is slower still. REWARD_ENGINE_CPU_ATTENTION=kernel|sdpa forces one (sdpa
    only for unquantized caches)."""
    forced = os.environ.get("REWARD_ENGINE_CPU_ATTENTION", "auto") or "auto"
    if forced not in CPU_ATTENTION:
        raise ValueError(
            f"REWARD_ENGINE_CPU_ATTENTION={forced!r} is not one of {', '.join(CPU_ATTENTION)}"
        )
    return "sdpa" if forced == "sdpa" and key_cache.dtype != FP8_DTYPE else "kernel"


def paged_prefill_attention_cpu(
    q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
    k_scale=None, v_scale=None, batch_invariant=False,
):  # fmt: skip
    if not batch_invariant and cpu_attention_path(q, key_cache) == "sdpa":
        return paged_prefill_attention_sdpa(
            q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale
        )
    return paged_prefill_attention_native(
        q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale,
        k_scale, v_scale,
    )  # fmt: skip


paged_prefill_attention_cuda = paged_prefill_attention_native


PAGED_PREFILL_ATTENTION = Op(
    "paged_prefill_attention",
    {
        "reference": paged_prefill_attention_reference,
        "cpu": paged_prefill_attention_cpu,
        "cuda": paged_prefill_attention_cuda,
        "triton": triton_impl("paged_attention", "paged_prefill_attention_triton"),
    },
    # Both run the two products on tensor cores, the Triton kernel with Hopper's wgmma
    # and pipelined cp.async loads (tests/kernels/test_triton_compile.py), the CUDA one
    # with mma.sync and unpipelined loads (tests/kernels/test_cuda_sass.py). Until
    # bench/gpu_check.sh has timed both, Triton goes first.
    gpu_order=("triton", "cuda"),
)


def paged_prefill_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_tables: torch.Tensor,
    query_start_loc: torch.Tensor | list[int],
    context_lens: torch.Tensor | list[int],
    scale: float,
    *,
    k_scale: torch.Tensor | float | None = None,
    v_scale: torch.Tensor | float | None = None,
    batch_invariant: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal GQA attention of packed new tokens over the paged cache (module docstring).

    batch_invariant=True keeps to kernels whose split over keys is fixed by absolute
    position, so a query row's result never depends on the step it runs in (the cpu
    backend then never takes its SDPA route; see cpu_attention_path).

    q [T, Hq, D] (any token/head strides, last dim contiguous); key_cache, value_cache
    [num_blocks, block_size, Hkv, D] contiguous, Hq a multiple of Hkv; block_tables int
    [S, max_blocks]; query_start_loc [S + 1] and context_lens [S] (int tensors or lists).
    The caches hold q's dtype, or float8_e4m3fn with k_scale and v_scale (per-tensor
    fp32, required). Returns [T, Hq, D] in q's dtype.
    """
    op = "paged_prefill_attention"
    check_dtype(op, "q", q)
    check_same(op, "key_cache", key_cache, value_cache=value_cache)
    if key_cache.device != q.device:
        raise ValueError(f"{op}: key_cache is on {key_cache.device} but q is on {q.device}")
    k_scale, v_scale = kv_cache_scales(op, q.dtype, key_cache, k_scale, v_scale)
    if q.dim() != 3 or key_cache.dim() != 4 or value_cache.shape != key_cache.shape:
        raise ValueError(
            f"{op}: expected q [T, Hq, D] and caches [num_blocks, block_size, Hkv, D]; got "
            f"{tuple(q.shape)}, {tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    if q.shape[1] % key_cache.shape[2] or q.shape[2] != key_cache.shape[3]:
        raise ValueError(
            f"{op}: q heads ({q.shape[1]}) must be a multiple of kv heads "
            f"({key_cache.shape[2]}) with equal head_dim ({q.shape[2]} vs {key_cache.shape[3]})"
        )
    if q.stride(2) != 1 and q.numel():
        raise ValueError(f"{op}: q's last dim must be contiguous")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError(f"{op}: key_cache and value_cache must be contiguous")
    num_seqs = len(context_lens)
    if (
        block_tables.dim() != 2
        or block_tables.shape[0] != num_seqs
        or (block_tables.is_floating_point())
    ):
        raise ValueError(
            f"{op}: block_tables must be an int tensor [{num_seqs}, max_blocks]; "
            f"got {block_tables.dtype} {tuple(block_tables.shape)}"
        )
    if len(query_start_loc) != num_seqs + 1:
        raise ValueError(
            f"{op}: query_start_loc needs {num_seqs + 1} entries for {num_seqs} sequences"
        )
    impl = PAGED_PREFILL_ATTENTION.select(q.device, backend)
    scales = {} if k_scale is None else {"k_scale": k_scale, "v_scale": v_scale}
    if batch_invariant and impl is paged_prefill_attention_cpu:
        scales["batch_invariant"] = True
    return impl(
        q, key_cache, value_cache, block_tables, query_start_loc, context_lens, scale, **scales
    )
