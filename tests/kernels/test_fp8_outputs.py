"""fp8_scale= on rms_norm, fused_add_rms_norm and silu_mul: the E4M3 output equals
fp8_quantize of the activation-dtype output (bit for bit for the reference; the cpu
kernel's activation-dtype result may differ by one rounding, hence one E4M3 step)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES

import kernels
from kernels.fp8 import FP8_DTYPE

HIDDEN = [8, 17, 769, 5125]
TOKENS = [1, 7, 33]


def make(shape, dtype, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype)


def assert_fp8_close(actual, expected_activation, scale, what):
    """actual (E4M3) is the quantization of a value within two activation-dtype ulps of
    expected_activation: at most one E4M3 step apart, and equal almost everywhere."""
    assert actual.dtype == FP8_DTYPE and actual.shape == expected_activation.shape, what
    expected, _ = kernels.fp8_quantize(expected_activation, scale, backend="reference")
    a, e = actual.float(), expected.float()
    step = torch.maximum(e.abs() / 8, torch.tensor(2.0**-9))
    assert ((a - e).abs() <= step).all(), what
    assert (a != e).float().mean() < 0.02, what


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_fp8(isa, dtype, tokens, hidden):
    x, w = make((tokens, hidden), dtype), make((hidden,), dtype, seed=1, scale=1.0)
    scale = torch.tensor(0.02)
    ref = kernels.rms_norm(x, w, 1e-5, fp8_scale=scale, backend="reference")
    y = kernels.rms_norm(x, w, 1e-5, backend="reference")
    assert torch.equal(ref.view(torch.uint8), kernels.fp8_quantize(y, scale)[0].view(torch.uint8))
    out = kernels.rms_norm(x, w, 1e-5, fp8_scale=scale, backend="cpu")
    assert_fp8_close(out, kernels.rms_norm(x, w, 1e-5, backend="cpu"), scale, f"rms_norm[{isa}]")


@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_fp8(isa, dtype, hidden):
    x, r, w = make((7, hidden), dtype), make((7, hidden), dtype, 2), make((hidden,), dtype, 3)
    r_ref, r_cpu = r.clone(), r.clone()
    ref = kernels.fused_add_rms_norm(x, r_ref, w, 1e-5, fp8_scale=0.05, backend="reference")
    out = kernels.fused_add_rms_norm(x, r_cpu, w, 1e-5, fp8_scale=0.05, backend="cpu")
    assert torch.equal(r_cpu, r_ref)  # the residual add is bit-equal to torch's
    y = kernels.rms_norm(r_cpu, w, 1e-5, backend="cpu")
    assert_fp8_close(out, y, torch.tensor(0.05), f"fused_add_rms_norm[{isa}]")
    assert ref.dtype == FP8_DTYPE


@pytest.mark.parametrize("inter", [8, 17, 769])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul_fp8(isa, dtype, inter):
    x = make((9, 2 * inter), dtype, scale=4.0)
    scale = torch.tensor(0.01)
    ref = kernels.silu_mul(x, fp8_scale=scale, backend="reference")
    assert ref.shape == (9, inter) and ref.dtype == FP8_DTYPE
    out = kernels.silu_mul(x, fp8_scale=scale, backend="cpu")
    # the cpu kernel's activation-dtype result is its own silu_mul, bit for bit
    expected, _ = kernels.fp8_quantize(kernels.silu_mul(x, backend="cpu"), scale)
    assert torch.equal(out.view(torch.uint8), expected.view(torch.uint8))
    assert_fp8_close(out, kernels.silu_mul(x, backend="reference"), scale, f"silu_mul[{isa}]")


def test_saturates_and_rejects_out(cpu_module):
    x = make((3, 16), torch.float32, scale=100.0)
    out = kernels.silu_mul(x, fp8_scale=1e-3, backend="cpu")
    assert out.float().abs().max() == 448.0
    with pytest.raises(ValueError, match="cannot be combined"):
        kernels.silu_mul(x, out=torch.empty(3, 8), fp8_scale=1.0)
    with pytest.raises(ValueError, match="scale"):
        kernels.rms_norm(x, torch.ones(16), 1e-5, fp8_scale=torch.ones(2))
