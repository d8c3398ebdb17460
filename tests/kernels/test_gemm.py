"""batch_invariant_linear (kernels/gemm.py): the numerics of the module docstring on
every CPU instruction-set path, and the property it exists for: a row's result is the
same bits whatever batch it is computed in (its size, the row's position, the other
rows, the thread count)."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
from conftest import ISAS
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_testing import DTYPES

import kernels
from kernels import _native
from kernels.gemm import batch_invariant_linear_reference

# (M, K, N) with awkward members: one row, odd K (the pair paths' tail), K below and
# past one AMX block (32) and one K block (256), N below, at and past a 64-column panel.
SHAPES = [(1, 1, 1), (1, 5, 3), (7, 33, 70), (13, 64, 64), (6, 31, 129), (40, 300, 130),
          (97, 513, 65)]  # fmt: skip
# Paths whose one-k-at-a-time chain is bit-equal to the reference (products exact in
# fp32 for bf16/fp16; the scalar path also multiplies, then adds, for fp32).
EXACT = {"scalar": DTYPES, "avx2": DTYPES[1:], "avx512": DTYPES[1:]}


def randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def operands(m, k, n, dtype, seed=0):
    return (
        randn(m, k, dtype=dtype, seed=seed),
        randn(n, k, dtype=dtype, seed=seed + 1),
        randn(n, dtype=dtype, seed=seed + 2),
    )


def assert_within_fp32_accumulation(actual, expected, x, w, bias):
    """|actual - expected| within the worst-case fp32 summation error of K products
    (K * eps * sum |x||w|), plus one rounding of the output dtype."""
    k = x.shape[1]
    magnitude = x.float().abs() @ w.float().abs().T + bias.float().abs()
    bound = 2 * k * torch.finfo(torch.float32).eps * magnitude
    bound += expected.float().abs() * (torch.finfo(expected.dtype).eps if k else 0)
    diff = (actual.float() - expected.float()).abs()
    worst = (diff - bound).argmax()
    assert (diff <= bound).all(), (
        f"{int((diff > bound).sum())} elements beyond the fp32 accumulation bound; worst "
        f"{diff.flatten()[worst].item():.3g} > {bound.flatten()[worst].item():.3g}"
    )


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_matches_the_reference_on_every_isa(isa, m, k, n, dtype):
    x, w, bias = operands(m, k, n, dtype)
    got = kernels.batch_invariant_linear(x, w, bias, backend="cpu")
    want = batch_invariant_linear_reference(x, w, bias)
    if dtype in EXACT.get(isa, ()):
        assert torch.equal(got, want), f"{isa}: not bit-equal to the reference"
    else:
        assert_within_fp32_accumulation(got, want, x, w, bias)
    exact = (x.double() @ w.double().T + bias.double()).to(dtype)
    assert_within_fp32_accumulation(got, exact, x, w, bias)


@given(
    data=st.data(),
    m=st.integers(1, 70),
    k=st.integers(1, 300),
    n=st.integers(1, 140),
    dtype=st.sampled_from(DTYPES),
    isa=st.sampled_from(ISAS),
)
@settings(max_examples=40, deadline=None)
def test_a_row_is_the_same_bits_in_any_batch(data, m, k, n, dtype, isa):
    module = _native.cpu_module()
    if module is None:
        pytest.skip("kernels._C is not built")
    with forced_isa(isa if isa in module.supported_isas() else module.best_isa()):
        check_rows_in_other_batches(data, m, k, n, dtype, isa)


@contextlib.contextmanager
def forced_isa(isa):
    before = os.environ.get("REWARD_ENGINE_CPU_ISA")
    os.environ["REWARD_ENGINE_CPU_ISA"] = isa
    try:
        yield
    finally:
        if before is None:
            del os.environ["REWARD_ENGINE_CPU_ISA"]
        else:
            os.environ["REWARD_ENGINE_CPU_ISA"] = before


def check_rows_in_other_batches(data, m, k, n, dtype, isa):
    x, w, bias = operands(m, k, n, dtype, seed=data.draw(st.integers(0, 1000)))
    full = kernels.batch_invariant_linear(x, w, bias)
    # the rows again: a random subset in a random order, each also alone
    rows = data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=m))
    again = kernels.batch_invariant_linear(x[rows], w, bias)
    assert torch.equal(again, full[rows]), f"{isa}: rows {rows} changed in another batch"
    i = rows[0]
    assert torch.equal(kernels.batch_invariant_linear(x[i : i + 1], w, bias)[0], full[i])


def test_thread_count_does_not_change_a_bit(isa):
    x, w, bias = operands(300, 200, 300, torch.bfloat16)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.batch_invariant_linear(x, w, bias)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(kernels.batch_invariant_linear(x, w, bias), one)


def test_library_matmul_is_not_batch_invariant():
    """Why the op exists: torch's CPU matmul changes a row's bits with the batch size
    (checked so that a torch that becomes invariant shows up here)."""
    x, w, _ = operands(128, 512, 1024, torch.float32)
    alone = torch.mm(x[:1], w.T)[0]
    assert any(not torch.equal(torch.mm(x[:m], w.T)[0], alone) for m in (2, 3, 64, 128))


def test_strided_input_out_buffer_and_no_bias(cpu_module):
    x, w, _ = operands(9, 40, 70, torch.bfloat16)
    wide = torch.zeros(9, 64, dtype=torch.bfloat16)
    wide[:, :40] = x
    out = torch.full((9, 70), float("nan"), dtype=torch.bfloat16)
    got = kernels.batch_invariant_linear(wide[:, :40], w, out=out)
    assert got is out
    assert torch.equal(out, batch_invariant_linear_reference(x, w, None))
    empty = kernels.batch_invariant_linear(x[:0], w)
    assert empty.shape == (0, 70)
    no_k = kernels.batch_invariant_linear(x[:, :0], w[:, :0], torch.ones(70, dtype=torch.bfloat16))
    assert torch.equal(no_k, torch.ones(9, 70, dtype=torch.bfloat16))


def test_bad_arguments():
    x, w, bias = operands(3, 8, 5, torch.float32)
    with pytest.raises(ValueError, match="expected x \\[M, K\\] and weight \\[N, K\\]"):
        kernels.batch_invariant_linear(x, w[:, :7])
    with pytest.raises(ValueError, match="weight has dtype torch.bfloat16"):
        kernels.batch_invariant_linear(x, w.bfloat16())
    with pytest.raises(ValueError, match="bias must be \\[5\\]"):
        kernels.batch_invariant_linear(x, w, bias[:4])
    with pytest.raises(ValueError, match="out must be a \\[3, 5\\]"):
        kernels.batch_invariant_linear(x, w, out=torch.empty(3, 6))
