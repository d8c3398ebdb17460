"""silu_mul: the cpu backend (every ISA path) against the reference, and the reference
against HF LlamaMLP's activation."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, assert_close

import kernels
from kernels.activation import silu_mul_reference

INTERMEDIATE_SIZES = [8, 17, 768, 769, 5120, 5125]
NUM_TOKENS = [1, 7, 83]


def make(tokens, inter, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(tokens, 2 * inter, generator=g)).to(dtype)


@pytest.mark.parametrize("inter", INTERMEDIATE_SIZES)
@pytest.mark.parametrize("tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_cpu_matches_reference(isa, dtype, tokens, inter):
    x = make(tokens, inter, dtype)
    out = kernels.silu_mul(x, backend="cpu")
    assert out.shape == (tokens, inter)
    assert_close(out, silu_mul_reference(x), f"silu_mul[{isa}]")


def test_extreme_gates(isa):
    """exp saturates far from zero: silu(g) -> g for large g, -> 0 for very negative g."""
    gate = torch.tensor([0.0, -0.0, 1e-30, 20.0, 87.0, 88.5, 100.0, 1e4, -20.0, -87.5, -100.0,
                         -1e4, 3.4e38, -3.4e38, float("inf"), float("nan"), 0.5])  # fmt: skip
    x = torch.cat([gate, torch.full_like(gate, 1.5)])[None]
    out = kernels.silu_mul(x, backend="cpu")
    assert_close(out, silu_mul_reference(x), f"silu_mul[{isa}] extremes")


def test_leading_dims_and_row_strides(cpu_module):
    x = make(6, 40, torch.bfloat16).view(2, 3, 80)
    assert_close(kernels.silu_mul(x, backend="cpu"), silu_mul_reference(x), "[2, 3, 80]")
    wide = make(5, 100, torch.float16)
    x = wide[:, 20:100]  # rows of 80 with a row stride of 200
    assert_close(kernels.silu_mul(x, backend="cpu"), silu_mul_reference(x), "strided rows")


def test_reference_is_hf_llama_mlp_activation():
    from transformers.activations import ACT2FN

    x = make(7, 769, torch.bfloat16)
    gate, up = x[:, :769], x[:, 769:]
    assert torch.equal(silu_mul_reference(x), ACT2FN["silu"](gate) * up)


def test_odd_width_is_rejected():
    with pytest.raises(ValueError, match="2 \\* I"):
        kernels.silu_mul(torch.ones(3, 7))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_out_argument(cpu_module, backend):
    x = make(7, 769, torch.float16)
    out = torch.empty(7, 769, dtype=torch.float16)
    assert kernels.silu_mul(x, out=out, backend=backend) is out
    assert_close(out, silu_mul_reference(x), "silu_mul out=")
