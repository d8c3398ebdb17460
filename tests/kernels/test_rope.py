"""rope and compute_cos_sin_cache: the cos/sin cache against HF's LlamaRotaryEmbedding,
the reference against HF's apply_rotary_pos_emb, and the cpu backend (every ISA path)
against the reference, including q/k as strided views into a fused qkv tensor."""

from __future__ import annotations

import functools

import pytest
import torch
from kernel_testing import DTYPES, assert_close

import kernels
from kernels.rope import rope_reference

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
THETA = 500000.0
MAX_POSITION = 16384
# (q heads, kv heads, head_dim): GQA 1/4/8, and head dims whose half (4, 9, 48, 64) is
# below, between and at multiples of the vector widths
HEAD_SHAPES = [(4, 4, 8), (8, 2, 18), (8, 1, 96), (16, 2, 128)]
NUM_TOKENS = [1, 7, 83]


@functools.cache
def cos_sin_cache(head_dim: int, scaled: bool) -> torch.Tensor:
    """Shared across tests: building a [16384, D] cache costs more than a rope call."""
    return kernels.compute_cos_sin_cache(
        head_dim, MAX_POSITION, THETA, LLAMA3_SCALING if scaled else None
    )


def hf_cos_sin(head_dim, rope_scaling, positions):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=2 * head_dim,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=131072,
        rope_theta=THETA,
        rope_scaling=rope_scaling,
    )
    rotary = LlamaRotaryEmbedding(config)
    return rotary(torch.zeros(1, dtype=torch.float32), positions[None])


@pytest.mark.parametrize("rope_scaling", [None, LLAMA3_SCALING], ids=["plain", "llama3"])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_cos_sin_cache_equals_hf_llama_rotary_embedding(rope_scaling, head_dim):
    positions = torch.cat([torch.arange(0, 40), torch.arange(8100, 8300), torch.tensor([131071])])
    cache = kernels.compute_cos_sin_cache(head_dim, 131072, THETA, rope_scaling)
    cos, sin = hf_cos_sin(head_dim, rope_scaling, positions)
    half = head_dim // 2
    assert cache.dtype == torch.float32 and cache.shape == (131072, head_dim)
    # HF's cos/sin are cat(freqs, freqs): the cache keeps one half of each
    torch.testing.assert_close(cache[positions, :half], cos[0, :, :half], atol=1e-6, rtol=0)
    torch.testing.assert_close(cache[positions, half:], sin[0, :, :half], atol=1e-6, rtol=0)


def test_llama3_scaling_changes_only_low_frequencies():
    plain = kernels.compute_cos_sin_cache(128, 4, THETA, None)
    scaled = kernels.compute_cos_sin_cache(128, 4, THETA, LLAMA3_SCALING)
    legacy = kernels.compute_cos_sin_cache(128, 4, THETA, {**LLAMA3_SCALING, "type": "llama3"})
    assert torch.equal(scaled, legacy)
    assert torch.equal(plain[:, :8], scaled[:, :8])  # high frequencies untouched
    assert not torch.equal(plain[1, 32:64], scaled[1, 32:64])  # low ones scaled


def test_cos_sin_cache_rejects_unknown_rope_types():
    with pytest.raises(ValueError, match="not supported"):
        kernels.compute_cos_sin_cache(128, 8, THETA, {"rope_type": "yarn", "factor": 4.0})


def make_qkv(tokens, num_q, num_kv, head_dim, dtype, seed=0):
    """A fused qkv projection output [T, (Hq + 2 Hkv) * D] and its q, k, v views."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (num_q + 2 * num_kv) * head_dim, generator=g).to(dtype)
    q = qkv[:, : num_q * head_dim].view(tokens, num_q, head_dim)
    k = qkv[:, num_q * head_dim : (num_q + num_kv) * head_dim].view(tokens, num_kv, head_dim)
    v = qkv[:, (num_q + num_kv) * head_dim :].view(tokens, num_kv, head_dim)
    positions = torch.randint(0, MAX_POSITION, (tokens,), generator=g)
    return qkv, q, k, v, positions


@pytest.mark.parametrize("head_shape", HEAD_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_cpu_on_fused_qkv_views_matches_reference(isa, dtype, tokens, head_shape):
    num_q, num_kv, head_dim = head_shape
    # llama3-scaled frequencies for head dims 8, 96, 128; plain ones for 18
    cache = cos_sin_cache(head_dim, scaled=head_dim % 4 == 0)
    qkv, q, k, v, positions = make_qkv(tokens, num_q, num_kv, head_dim, dtype)
    if tokens > 1:
        assert q.stride(0) == k.stride(0) == qkv.shape[1]  # the fused tensor's row stride
    eq, ek, v_before = q.clone(), k.clone(), v.clone()
    rope_reference(eq, ek, positions, cache)

    out_q, out_k = kernels.rope(q, k, positions.to(torch.int32), cache, backend="cpu")
    assert out_q is q and out_k is k
    assert_close(q, eq, f"rope q[{isa}]")
    assert_close(k, ek, f"rope k[{isa}]")
    assert torch.equal(v, v_before), "rope wrote outside q and k"


@pytest.mark.parametrize("positions_dtype", [torch.int32, torch.int64])
def test_rope_cpu_accepts_int32_and_int64_positions_and_contiguous_inputs(
    cpu_module, positions_dtype
):
    cache = cos_sin_cache(64, True)
    g = torch.Generator().manual_seed(1)
    q = torch.randn(5, 4, 64, generator=g).to(torch.bfloat16)
    k = torch.randn(5, 2, 64, generator=g).to(torch.bfloat16)
    positions = torch.tensor([0, 1, 2, 8191, 16383], dtype=positions_dtype)
    eq, ek = q.clone(), k.clone()
    rope_reference(eq, ek, positions, cache)
    kernels.rope(q, k, positions, cache, backend="cpu")
    assert_close(q, eq, "q")
    assert_close(k, ek, "k")


def test_position_zero_is_identity(isa):
    cache = kernels.compute_cos_sin_cache(128, 8, THETA, LLAMA3_SCALING)
    q, k = torch.randn(3, 4, 128).to(torch.bfloat16), torch.randn(3, 1, 128).to(torch.bfloat16)
    q0, k0 = q.clone(), k.clone()
    kernels.rope(q, k, torch.zeros(3, dtype=torch.int64), cache, backend="cpu")
    assert torch.equal(q, q0) and torch.equal(k, k0)


def test_reference_matches_hf_apply_rotary_pos_emb_in_fp32():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    tokens, head_dim = 11, 128
    positions = torch.arange(100, 100 + tokens)
    cos, sin = hf_cos_sin(head_dim, LLAMA3_SCALING, positions)
    q, k = torch.randn(tokens, 8, head_dim), torch.randn(tokens, 2, head_dim)
    # HF layout: [batch, heads, seq, head_dim]
    hq, hk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    cache = kernels.compute_cos_sin_cache(head_dim, 256, THETA, LLAMA3_SCALING)
    rope_reference(q, k, positions, cache)
    assert_close(q, hq[0].transpose(0, 1), "q vs HF")
    assert_close(k, hk[0].transpose(0, 1), "k vs HF")


def test_out_of_range_position_raises_and_writes_nothing(cpu_module):
    cache = kernels.compute_cos_sin_cache(64, 16, THETA)
    q, k = torch.randn(3, 2, 64), torch.randn(3, 1, 64)
    q0 = q.clone()
    with pytest.raises(IndexError, match=r"positions\[2\] = 16"):
        kernels.rope(q, k, torch.tensor([0, 5, 16]), cache, backend="cpu")
    assert torch.equal(q, q0)


def test_bad_arguments_raise_clear_errors():
    cache = kernels.compute_cos_sin_cache(64, 16, THETA)
    q, k = torch.randn(3, 2, 64), torch.randn(3, 1, 64)
    with pytest.raises(ValueError, match="positions must be int32/int64"):
        kernels.rope(q, k, torch.zeros(3), cache)
    with pytest.raises(ValueError, match="cos_sin_cache must be float32"):
        kernels.rope(q, k, torch.zeros(3, dtype=torch.int64), cache.double())
    with pytest.raises(ValueError, match="expected q"):
        kernels.rope(q, k[:2], torch.zeros(3, dtype=torch.int64), cache)
    with pytest.raises(ValueError, match="last dim"):
        q_strided = torch.randn(3, 64, 2).transpose(1, 2)  # [3, 2, 64], last-dim stride 2
        kernels.rope(q_strided, k, torch.zeros(3, dtype=torch.int64), cache)
