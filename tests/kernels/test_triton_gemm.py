"""batch_invariant_linear's triton backend (kernels/triton/gemm.py): the reference's
result within the fp32 accumulation bound, and every row the same bits in any batch.
In Triton's interpreter here (fp32, fp16); on a GPU the same tests run on CUDA tensors,
bf16 included (marked `gpu`)."""

from __future__ import annotations

import pytest
import torch
from test_gemm import assert_within_fp32_accumulation, operands
from triton_testing import device_dtype  # noqa: F401 - fixture

import kernels
from kernels.gemm import batch_invariant_linear_reference

SHAPES = [(1, 1, 1), (5, 17, 33), (40, 70, 129)]


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_the_reference(device_dtype, m, k, n):  # noqa: F811
    device, dtype = device_dtype
    x, w, bias = (t.to(device) for t in operands(m, k, n, dtype))
    got = kernels.batch_invariant_linear(x, w, bias, backend="triton")
    want = batch_invariant_linear_reference(x.cpu(), w.cpu(), bias.cpu())
    assert_within_fp32_accumulation(got.cpu(), want, x.cpu(), w.cpu(), bias.cpu())


def test_a_row_is_the_same_bits_in_any_batch(device_dtype):  # noqa: F811
    device, dtype = device_dtype
    x, w, bias = (t.to(device) for t in operands(70, 90, 150, dtype, seed=3))
    full = kernels.batch_invariant_linear(x, w, bias, backend="triton")
    for rows in ([0], [69, 3, 3], list(range(17, 60)), list(range(70))[::-1]):
        got = kernels.batch_invariant_linear(x[rows], w, bias, backend="triton")
        assert torch.equal(got, full[rows]), f"rows {rows[:5]}... changed with the batch"
    out = torch.empty(70, 150, dtype=dtype, device=device)
    assert kernels.batch_invariant_linear(x, w, None, out=out, backend="triton") is out
