"""rms_norm and fused_add_rms_norm: the cpu backend (every ISA path) against the reference,
and the reference against HF LlamaRMSNorm."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, assert_close

import kernels
from kernels.norm import fused_add_rms_norm_reference, rms_norm_reference

HIDDEN_SIZES = [8, 17, 768, 769, 5120, 5125]  # vector-width multiples and awkward tails
NUM_TOKENS = [1, 7, 83]
EPS = 1e-5


def make(tokens, hidden, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=g).to(dtype)
    residual = torch.randn(tokens, hidden, generator=g).to(dtype)
    weight = (1 + 0.1 * torch.randn(hidden, generator=g)).to(dtype)
    return x, residual, weight


@pytest.mark.parametrize("hidden", HIDDEN_SIZES)
@pytest.mark.parametrize("tokens", NUM_TOKENS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_matches_reference(isa, dtype, tokens, hidden):
    x, residual, weight = make(tokens, hidden, dtype)
    out = kernels.rms_norm(x, weight, EPS, backend="cpu")
    assert_close(out, rms_norm_reference(x, weight, EPS), f"rms_norm[{isa}]")

    expected_residual = residual.clone()
    expected = fused_add_rms_norm_reference(x, expected_residual, weight, EPS)
    out = kernels.fused_add_rms_norm(x, residual, weight, EPS, backend="cpu")
    assert_close(out, expected, f"fused_add_rms_norm[{isa}] output")
    # the add is one rounding of the same fp32 sum: bit-identical to torch
    assert torch.equal(residual, expected_residual), "residual differs from x + residual"


def test_fused_add_rms_norm_updates_residual_in_place_and_leaves_x(cpu_module):
    x, residual, weight = make(7, 64, torch.bfloat16)
    x_before, residual_before, ptr = x.clone(), residual.clone(), residual.data_ptr()
    out = kernels.fused_add_rms_norm(x, residual, weight, EPS, backend="cpu")
    assert residual.data_ptr() == ptr
    assert torch.equal(residual, x_before + residual_before)
    assert torch.equal(x, x_before)
    assert out.data_ptr() not in (x.data_ptr(), residual.data_ptr())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_residual_add_rounds_like_torch_on_special_values(isa, dtype):
    """Round-to-nearest-even, subnormals, overflow to inf, inf and NaN in the add."""
    info = torch.finfo(dtype)
    values = torch.tensor(
        [0.0, -0.0, info.tiny, -info.tiny, info.tiny / 4, info.smallest_normal / 3,
         info.max, -info.max, float("inf"), float("-inf"), float("nan"), 1.0, 1.0 + info.eps,
         3.0, 1e-3, -2.5, 0.1, 7.0],
        dtype=torch.float32,
    )  # fmt: skip
    a = values.repeat_interleave(len(values)).to(dtype)
    b = values.repeat(len(values)).to(dtype)
    hidden = 17  # a vector body plus a tail on every ISA
    pad = -len(a) % hidden
    a = torch.cat([a, torch.ones(pad, dtype=dtype)]).view(-1, hidden)
    b = torch.cat([b, torch.ones(pad, dtype=dtype)]).view(-1, hidden)
    residual = b.clone()
    kernels.fused_add_rms_norm(a, residual, torch.ones(hidden, dtype=dtype), EPS, backend="cpu")
    expected = a + b
    same = (residual.view(torch.int16) == expected.view(torch.int16)) | (
        residual.isnan() & expected.isnan()
    )
    assert same.all(), f"residual[{isa}] != torch add at {(~same).nonzero()[:5].tolist()}"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_leading_dims_are_flattened(cpu_module, backend):
    x, residual, weight = make(10, 96, torch.float32)
    x3, r3 = x.view(2, 5, 96), residual.clone().view(2, 5, 96)
    out = kernels.fused_add_rms_norm(x3, r3, weight, EPS, backend=backend)
    assert out.shape == (2, 5, 96)
    expected_residual = residual.clone()
    expected = fused_add_rms_norm_reference(x, expected_residual, weight, EPS)
    assert_close(out.view(10, 96), expected, "fused_add_rms_norm [2, 5, 96]")
    assert_close(r3.view(10, 96), expected_residual, "residual [2, 5, 96]")
    assert_close(kernels.rms_norm(x3, weight, EPS, backend=backend).view(10, 96),
                 rms_norm_reference(x, weight, EPS), "rms_norm [2, 5, 96]")  # fmt: skip


def test_strided_rows(isa):
    """x and residual may be row-strided views (e.g. slices of a wider buffer)."""
    hidden = 769
    x_buf, r_buf, weight = make(9, 2 * hidden, torch.bfloat16)
    weight = weight[:hidden].contiguous()
    x, residual = x_buf[:, 3 : 3 + hidden], r_buf[:, hidden:]
    expected_residual = residual.clone()
    expected = fused_add_rms_norm_reference(x, expected_residual, weight, EPS)
    out = kernels.fused_add_rms_norm(x, residual, weight, EPS, backend="cpu")
    assert_close(out, expected, "strided fused_add_rms_norm")
    assert torch.equal(residual, expected_residual)
    assert_close(kernels.rms_norm(x, weight, EPS, backend="cpu"),
                 rms_norm_reference(x, weight, EPS), "strided rms_norm")  # fmt: skip


def test_nan_stays_in_its_row(isa):
    x, _, weight = make(3, 40, torch.bfloat16)
    x[1, 7] = float("nan")
    out = kernels.rms_norm(x, weight, EPS, backend="cpu")
    assert out[1].isnan().all() and not out[[0, 2]].isnan().any()
    assert_close(out, rms_norm_reference(x, weight, EPS), "rms_norm with NaN")


def test_threaded_rows_match_single_threaded(cpu_module):
    """Large inputs are split across the thread pool; the split must not change results."""
    x, residual, weight = make(1024, 1024, torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        r1 = residual.clone()
        one = kernels.fused_add_rms_norm(x, r1, weight, EPS, backend="cpu")
        torch.set_num_threads(max(2, threads))
        r2 = residual.clone()
        many = kernels.fused_add_rms_norm(x, r2, weight, EPS, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many) and torch.equal(r1, r2)


def test_empty_input(cpu_module):
    x, residual, weight = make(0, 64, torch.float16)
    assert kernels.rms_norm(x, weight, EPS, backend="cpu").shape == (0, 64)
    assert kernels.fused_add_rms_norm(x, residual, weight, EPS, backend="cpu").shape == (0, 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_is_hf_llama_rmsnorm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x, residual, weight = make(7, 769, dtype)
    hf = LlamaRMSNorm(769, eps=EPS).to(dtype)
    with torch.no_grad():
        hf.weight.copy_(weight)
        assert torch.equal(rms_norm_reference(x, weight, EPS), hf(x))
        expected_residual = x + residual  # HF: hidden_states = residual + hidden_states
        assert torch.equal(fused_add_rms_norm_reference(x, residual, weight, EPS),
                           hf(expected_residual))  # fmt: skip
        assert torch.equal(residual, expected_residual)


@pytest.mark.parametrize(
    ("x_shape", "weight_shape", "weight_dtype", "message"),
    [
        ((4, 8), (9,), torch.float32, "weight must be"),
        ((4, 8), (8,), torch.float16, "dtype"),
        ((4, 8), (2, 4), torch.float32, "weight must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(x_shape, weight_shape, weight_dtype, message):
    x = torch.randn(x_shape)
    with pytest.raises(ValueError, match=message):
        kernels.rms_norm(x, torch.ones(weight_shape, dtype=weight_dtype), EPS)


def test_unsupported_dtype_and_mismatched_residual():
    with pytest.raises(ValueError, match="supported: float32, bfloat16, float16"):
        kernels.rms_norm(
            torch.ones(2, 4, dtype=torch.float64), torch.ones(4, dtype=torch.float64), EPS
        )
    with pytest.raises(ValueError, match="residual"):
        kernels.fused_add_rms_norm(torch.ones(2, 4), torch.ones(3, 4), torch.ones(4), EPS)
    with pytest.raises(ValueError, match="updated in place"):
        residual = torch.ones(4, 2).t()  # [2, 4] with a strided last dim
        kernels.fused_add_rms_norm(torch.ones(2, 4), residual, torch.ones(4), EPS, backend="cpu")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_out_argument_reuses_a_buffer_and_may_alias_x(cpu_module, backend):
    x, residual, weight = make(7, 769, torch.bfloat16)
    expected_residual = residual.clone()
    expected = fused_add_rms_norm_reference(x, expected_residual, weight, EPS)

    buffer = torch.empty_like(x)
    assert kernels.rms_norm(x, weight, EPS, out=buffer, backend=backend) is buffer
    assert_close(buffer, rms_norm_reference(x, weight, EPS), "rms_norm out=")

    x_inplace = x.clone()  # out=x: x <- normed, residual <- x + residual
    y = kernels.fused_add_rms_norm(x_inplace, residual, weight, EPS, out=x_inplace, backend=backend)
    assert y is x_inplace
    assert_close(y, expected, "fused_add_rms_norm out=x")
    assert torch.equal(residual, expected_residual)

    with pytest.raises(ValueError, match="out"):
        kernels.rms_norm(x, weight, EPS, out=torch.empty(7, 768, dtype=torch.bfloat16))
