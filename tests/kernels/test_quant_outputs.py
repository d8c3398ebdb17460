"""The inputs of W8A8 GEMMs quantized by the ops that produce them: rms_norm_quant,
fused_add_rms_norm_quant and silu_mul_quant, E4M3 and int8, static (per tensor) and
dynamic (per row). The fused cpu kernels equal the op followed by the quantize op bit
for bit, on every ISA path; the reference is that composition in PyTorch."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, assert_close

import kernels

QDTYPES = [torch.float8_e4m3fn, torch.int8]
SCALES = [None, 0.02]  # dynamic per row, static per tensor
SHAPES = [(1, 8), (7, 83), (33, 769), (2, 3, 64)]


def make(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randn(shape, generator=g)).to(dtype)


def raw(codes):
    return codes.view(torch.uint8) if codes.dtype == torch.float8_e4m3fn else codes


def quantize(y, qdtype, scale):
    granularity = "tensor" if scale is not None else "token"
    if qdtype == torch.int8:
        return kernels.int8_quantize(y, scale, granularity)
    return kernels.fp8_quantize(y, scale, granularity)


def assert_same_codes(got, want):
    (c, s), (c_ref, s_ref) = got, want
    assert c.dtype == c_ref.dtype and c.shape == c_ref.shape
    assert s.shape == s_ref.shape and torch.equal(s, s_ref)
    assert torch.equal(raw(c), raw(c_ref))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_cpu_kernels_equal_op_then_quantize(isa, dtype, shape, qdtype, scale):
    x, w = make(shape, dtype, 1), make(shape[-1:], dtype, 2)
    got = kernels.rms_norm_quant(x, w, 1e-5, qdtype, scale, backend="cpu")
    assert_same_codes(got, quantize(kernels.rms_norm(x, w, 1e-5, backend="cpu"), qdtype, scale))

    residual, residual_ref = make(shape, dtype, 3), make(shape, dtype, 3)
    got = kernels.fused_add_rms_norm_quant(x, residual, w, 1e-5, qdtype, scale, backend="cpu")
    y = kernels.fused_add_rms_norm(x, residual_ref, w, 1e-5, backend="cpu")
    assert_same_codes(got, quantize(y, qdtype, scale))
    assert torch.equal(residual, residual_ref)  # the residual is updated as without quantizing

    gate_up = make((*shape[:-1], 2 * shape[-1]), dtype, 4)
    got = kernels.silu_mul_quant(gate_up, qdtype, scale, backend="cpu")
    assert_same_codes(got, quantize(kernels.silu_mul(gate_up, backend="cpu"), qdtype, scale))


@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_is_close_to_the_reference(cpu_module, dtype, qdtype):
    """Dequantized, the fused cpu result matches the reference's within the op's own
    tolerance plus one quantization step."""
    x, w = make((19, 256), dtype, 5), make((256,), dtype, 6)
    c, s = kernels.rms_norm_quant(x, w, 1e-5, qdtype, backend="cpu")
    c_ref, s_ref = kernels.rms_norm_quant(x, w, 1e-5, qdtype, backend="reference")
    step = s_ref * (1 if qdtype == torch.int8 else 32)  # E4M3: 3 mantissa bits
    diff = (c.float() * s - c_ref.float() * s_ref).abs()
    assert (diff <= step + 0.02 * (c_ref.float() * s_ref).abs()).all()
    assert_close(s.to(dtype), s_ref.to(dtype), "row scales")


def test_static_scale_is_returned_and_dynamic_is_per_row(cpu_module):
    x, w = make((4, 5, 32), torch.float32), torch.ones(32)
    c, s = kernels.rms_norm_quant(x, w, 1e-5, torch.int8, 0.5)
    assert c.shape == x.shape and s.shape == () and s.item() == 0.5
    c, s = kernels.rms_norm_quant(x, w, 1e-5, torch.int8)
    assert s.shape == (4, 5, 1)
    assert (c.abs().amax(-1) == 127).all()  # each row's largest value maps to 127


def test_errors_name_the_problem(cpu_module):
    x, w = make((2, 8), torch.float32), torch.ones(8)
    with pytest.raises(ValueError, match="qdtype"):
        kernels.rms_norm_quant(x, w, 1e-5, torch.uint8)
    with pytest.raises(ValueError, match="one value"):
        kernels.silu_mul_quant(make((2, 16), torch.float32), torch.int8, torch.ones(2))
    with pytest.raises(ValueError, match="residual"):
        kernels.fused_add_rms_norm_quant(x, x[:1], w, 1e-5, torch.int8)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("qdtype", QDTYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_codes_land_in_out(backend, qdtype, scale, request):
    if backend == "cpu":
        request.getfixturevalue("cpu_module")
    x, w = make((5, 64), torch.bfloat16, 1), make((64,), torch.bfloat16, 2)
    gate_up = make((5, 128), torch.bfloat16, 4)
    calls = {
        "rms_norm_quant": lambda **kw: kernels.rms_norm_quant(x, w, 1e-5, qdtype, scale, **kw),
        "fused_add_rms_norm_quant": lambda **kw: kernels.fused_add_rms_norm_quant(
            x, make((5, 64), torch.bfloat16, 3), w, 1e-5, qdtype, scale, **kw
        ),
        "silu_mul_quant": lambda **kw: kernels.silu_mul_quant(gate_up, qdtype, scale, **kw),
    }
    for name, call in calls.items():
        want = call(backend=backend)
        out = torch.full((5, 64), 3, dtype=torch.int8).view(qdtype)  # stale contents
        got = call(backend=backend, out=out)
        assert got[0] is out, name
        assert_same_codes(got, want)


def test_a_wrong_out_is_refused(cpu_module):
    x, w = make((2, 8), torch.float32), torch.ones(8)
    for bad in (torch.empty(2, 8, dtype=torch.float8_e4m3fn), torch.empty(2, 9, dtype=torch.int8),
                torch.empty(8, 2, dtype=torch.int8).t()):  # fmt: skip
        with pytest.raises(ValueError, match="out must be a contiguous"):
            kernels.rms_norm_quant(x, w, 1e-5, torch.int8, out=bad)
    with pytest.raises(ValueError, match=r"shape \(2, 8\)"):
        kernels.silu_mul_quant(make((2, 16), torch.float32), torch.int8,
                               out=torch.empty(2, 16, dtype=torch.int8))  # fmt: skip
