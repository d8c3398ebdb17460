"""Varlen causal attention over packed (unpadded) sequences.

The model runs a batch as one flat token dimension: sequence ``s`` owns query rows
``query_start_loc[s]:query_start_loc[s+1]`` and key/value rows
``key_start_loc[s]:key_start_loc[s+1]``. Its queries are the LAST ``q_len`` tokens of
its ``k_len`` keys (q_len <= k_len), so query row i sits at absolute position
``k_len - q_len + i`` and attends to keys 0 .. that position ("bottom-right aligned"
causality). The two cases the model uses:
  - a full prefill: q_len == k_len (plain causal attention);
  - the final layer: q_len == 1 (only the last token needs an attention output).
This is the same metadata a paged KV cache uses (context length = k_len), so the
paged kernel replaces this one without changing the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _bounds(loc: torch.Tensor | list[int]) -> list[int]:
    return loc.tolist() if isinstance(loc, torch.Tensor) else list(loc)


def varlen_causal_attention_reference(q, k, v, query_start_loc, key_start_loc, scale):
    """The specification, written for clarity.

    1. For each sequence take its q [q_len, Hq, D] and k, v [k_len, Hkv, D].
    2. Repeat each kv head Hq/Hkv times (GQA: q head h reads kv head h // group).
    3. scores = (q @ k^T) * scale in fp32; mask key j > k_len - q_len + i with -inf.
    4. softmax in fp32, multiply by v in fp32, cast to q's dtype.
    """
    qs, ks = _bounds(query_start_loc), _bounds(key_start_loc)
    group = q.shape[1] // k.shape[1]
    out = torch.empty_like(q)
    for s in range(len(qs) - 1):
        qi = q[qs[s]:qs[s + 1]].float().transpose(0, 1)  # [Hq, q_len, D]
        ki = k[ks[s]:ks[s + 1]].float().repeat_interleave(group, dim=1).transpose(0, 1)
        vi = v[ks[s]:ks[s + 1]].float().repeat_interleave(group, dim=1).transpose(0, 1)
        q_len, k_len = qi.shape[1], ki.shape[1]
        scores = (qi @ ki.transpose(1, 2)) * scale
        q_pos = torch.arange(q_len).unsqueeze(1) + (k_len - q_len)
        mask = torch.arange(k_len).unsqueeze(0) > q_pos
        scores = scores.masked_fill(mask, float("-inf"))
        out[qs[s]:qs[s + 1]] = (scores.softmax(-1) @ vi).transpose(0, 1).to(q.dtype)
    return out


def varlen_causal_attention_sdpa(q, k, v, query_start_loc, key_start_loc, scale):
    """PyTorch's fused SDPA (flash attention on CPU) called once per sequence.

    Inputs are passed as 4-D [1, H, L, D] views: PyTorch's CPU flash kernel only takes
    4-D inputs and silently falls back to the unfused math path (3x slower) otherwise.
    For q_len == 1 each query head group is folded into the query length: q heads
    g*group .. g*group+group-1 all read kv head g, so q viewed as [Hkv, group, D]
    needs no repeated K/V. That breaks the row->position map a causal mask relies on,
    so elsewhere enable_gqa lets SDPA broadcast kv heads itself.
    """
    qs, ks = _bounds(query_start_loc), _bounds(key_start_loc)
    num_q_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_q_heads // num_kv_heads
    out = torch.empty_like(q)
    for s in range(len(qs) - 1):
        qi, ki, vi = q[qs[s]:qs[s + 1]], k[ks[s]:ks[s + 1]], v[ks[s]:ks[s + 1]]
        q_len, k_len = qi.shape[0], ki.shape[0]
        kt, vt = ki.transpose(0, 1)[None], vi.transpose(0, 1)[None]  # [1, Hkv, k_len, D]
        if q_len == 1:
            qt = qi.reshape(1, num_kv_heads, group, qi.shape[-1])
            o = F.scaled_dot_product_attention(qt, kt, vt, scale=scale)
            out[qs[s]:qs[s + 1]] = o.reshape(1, num_q_heads, -1)
            continue
        qt = qi.transpose(0, 1)[None]  # [1, Hq, q_len, D]
        if q_len == k_len:
            o = F.scaled_dot_product_attention(
                qt, kt, vt, is_causal=True, scale=scale, enable_gqa=group > 1
            )
        else:
            q_pos = torch.arange(q_len, device=q.device).unsqueeze(1) + (k_len - q_len)
            allowed = torch.arange(k_len, device=q.device).unsqueeze(0) <= q_pos
            o = F.scaled_dot_product_attention(
                qt, kt, vt, attn_mask=allowed, scale=scale, enable_gqa=group > 1
            )
        out[qs[s]:qs[s + 1]] = o[0].transpose(0, 1)
    return out


_IMPLS = {
    "reference": varlen_causal_attention_reference,
    # SDPA is PyTorch's own fused kernel: the fast path on every device until the
    # paged attention kernels replace this op.
    "cpu": varlen_causal_attention_sdpa,
    "cuda": varlen_causal_attention_sdpa,
    "triton": varlen_causal_attention_sdpa,
}


def varlen_causal_attention(q, k, v, query_start_loc, key_start_loc, scale, *, backend=None):
    """Causal attention of packed queries over packed keys; see the module docstring.

    q [Tq, Hq, D]; k, v [Tk, Hkv, D] (Hq a multiple of Hkv); query_start_loc [S+1] and
    key_start_loc [S+1] (int tensors or lists). Returns [Tq, Hq, D] in q's dtype.
    """
    if q.dim() != 3 or k.dim() != 3 or v.shape != k.shape:
        raise ValueError(
            f"expected q [T, Hq, D] and k, v [T, Hkv, D]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q heads ({q.shape[1]}) must be a multiple of kv heads ({k.shape[1]}) "
            f"with equal head_dim ({q.shape[2]} vs {k.shape[2]})"
        )
    name = backend or ("cpu" if q.device.type == "cpu" else "cuda")
    if name not in _IMPLS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {sorted(_IMPLS)}")
    return _IMPLS[name](q, k, v, query_start_loc, key_start_loc, scale)
