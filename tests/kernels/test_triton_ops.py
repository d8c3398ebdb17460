"""The triton backend of rms_norm, fused_add_rms_norm, silu_mul, rope and rope_and_cache
against the reference: on CPU tensors through Triton's interpreter (fp32, fp16; tiny
shapes, the interpreter is slow) and on CUDA tensors compiled (also bf16; gpu marker)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close
from triton_testing import device_dtype  # noqa: F401  (fixture)

import kernels
from kernels.activation import silu_mul_reference
from kernels.norm import fused_add_rms_norm_reference, rms_norm_reference
from kernels.rope import rope_and_cache_reference, rope_reference

EPS = 1e-5
# rows x hidden: one row, a hidden size that is no power of two (769), 3-D input,
# and no rows at all
NORM_SHAPES = [(1, 8), (7, 769), (2, 3, 64), (0, 32)]
# rows x I: a single element, and I above the kernel's 1024-column block
SILU_SHAPES = [(1, 1), (5, 1100), (3, 37)]
# (q heads, kv heads, head_dim): GQA 1/4/8, head_dim 18 (half not a power of 2), 64, 128
ROPE_HEADS = [(4, 4, 18), (8, 2, 64), (8, 1, 128)]


def randn(*shape, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype).to(device)


@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_rms_norm(device_dtype, shape):  # noqa: F811
    device, dtype = device_dtype
    x = randn(*shape, dtype=dtype, device=device)
    w = randn(shape[-1], dtype=dtype, device=device, seed=1)
    got = kernels.rms_norm(x, w, EPS, backend="triton")
    assert_close(got, rms_norm_reference(x, w, EPS), "rms_norm")


@pytest.mark.parametrize("shape", NORM_SHAPES, ids=str)
def test_fused_add_rms_norm(device_dtype, shape):  # noqa: F811
    device, dtype = device_dtype
    x = randn(*shape, dtype=dtype, device=device)
    r = randn(*shape, dtype=dtype, device=device, seed=1)
    w = randn(shape[-1], dtype=dtype, device=device, seed=2)
    r_got, r_expected = r.clone(), r.clone()
    got = kernels.fused_add_rms_norm(x, r_got, w, EPS, backend="triton")
    expected = fused_add_rms_norm_reference(x, r_expected, w, EPS)
    assert torch.equal(r_got, r_expected), "the residual add must equal torch's, bit for bit"
    assert_close(got, expected, "fused_add_rms_norm")


def test_fused_add_rms_norm_in_place_and_strided(device_dtype):  # noqa: F811
    """out=x (fully in place) on x that is a row-strided view; residual in place."""
    device, dtype = device_dtype
    base = randn(6, 2 * 96, dtype=dtype, device=device)
    x = base[:, :96]  # row stride 192
    r = randn(6, 96, dtype=dtype, device=device, seed=1)
    w = randn(96, dtype=dtype, device=device, seed=2)
    expected = fused_add_rms_norm_reference(x.clone(), r.clone(), w, EPS)
    got = kernels.fused_add_rms_norm(x, r, w, EPS, out=x, backend="triton")
    assert got is x
    assert_close(x, expected, "in place")


@pytest.mark.parametrize("shape", SILU_SHAPES, ids=str)
def test_silu_mul(device_dtype, shape):  # noqa: F811
    device, dtype = device_dtype
    rows, inter = shape
    x = randn(rows, 2 * inter, dtype=dtype, device=device)
    out = torch.empty(rows, inter, dtype=dtype, device=device)
    got = kernels.silu_mul(x, out=out, backend="triton")
    assert got is out
    assert_close(got, silu_mul_reference(x), "silu_mul")


def _qkv_views(qkv, num_q, num_kv, head_dim):
    """q, k, v as strided views into a fused qkv tensor, as the model makes them."""
    tokens = qkv.shape[0]
    q = qkv[:, : num_q * head_dim].view(tokens, num_q, head_dim)
    k = qkv[:, num_q * head_dim : (num_q + num_kv) * head_dim].view(tokens, num_kv, head_dim)
    v = qkv[:, (num_q + num_kv) * head_dim :].view(tokens, num_kv, head_dim)
    return q, k, v


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.mark.parametrize("heads", ROPE_HEADS, ids=lambda h: "{}q{}kv-d{}".format(*h))
@pytest.mark.parametrize("tokens", [1, 9])
def test_rope_and_cache(device_dtype, heads, tokens):  # noqa: F811
    device, dtype = device_dtype
    num_q, num_kv, head_dim = heads
    block_size, num_blocks = 5, 4
    g = torch.Generator().manual_seed(3)
    qkv = randn(tokens, (num_q + 2 * num_kv) * head_dim, dtype=dtype, device=device)
    cache = kernels.compute_cos_sin_cache(head_dim, 512, 500000.0, LLAMA3_SCALING, device)
    positions = torch.randint(0, 512, (tokens,), generator=g).to(device)
    slots = torch.randperm(num_blocks * block_size, generator=g)[:tokens]
    if tokens > 2:
        slots[[0, tokens - 1]] = -1  # padding tokens: not written
    slots = slots.to(device=device, dtype=torch.int32)
    caches = randn(2, num_blocks, block_size, num_kv, head_dim, dtype=dtype, device=device)

    def run(fn):
        x = qkv.clone()
        kc, vc = caches[0].clone(), caches[1].clone()
        fn(*_qkv_views(x, num_q, num_kv, head_dim), positions, cache, kc, vc, slots)
        return x, kc, vc

    got = run(lambda *a: kernels.rope_and_cache(*a, backend="triton"))
    expected = run(rope_and_cache_reference)
    for name, a, e in zip(["qkv", "key_cache", "value_cache"], got, expected, strict=True):
        assert_close(a, e, f"rope_and_cache {name}")


def test_rope_without_cache(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    qkv = randn(7, (8 + 2 * 2) * 64, dtype=dtype, device=device)
    cache = kernels.compute_cos_sin_cache(64, 32, 500000.0, device=device)
    positions = torch.arange(7, device=device) * 3
    got, expected = qkv.clone(), qkv.clone()
    kernels.rope(*_qkv_views(got, 8, 2, 64)[:2], positions, cache, backend="triton")
    rope_reference(*_qkv_views(expected, 8, 2, 64)[:2], positions, cache)
    assert_close(got, expected, "rope")


def test_rope_and_cache_checks_slots_and_positions_before_writing(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    q, k, v = (randn(2, h, 8, dtype=dtype, device=device) for h in (2, 1, 1))
    kc, vc = (torch.zeros(2, 4, 1, 8, dtype=dtype, device=device) for _ in range(2))
    q0 = q.clone()
    cache = kernels.compute_cos_sin_cache(8, 4, 10000.0, device=device)
    ok = torch.tensor([1, 2], device=device)
    with pytest.raises(IndexError, match="slot_mapping value 8"):
        kernels.rope_and_cache(q, k, v, ok, cache, kc, vc, torch.tensor([0, 8], device=device),
                               backend="triton")  # fmt: skip
    with pytest.raises(IndexError, match="positions value 4"):
        kernels.rope_and_cache(q, k, v, torch.tensor([0, 4], device=device), cache, kc, vc, ok,
                               backend="triton")  # fmt: skip
    assert torch.equal(q, q0) and not kc.any()
