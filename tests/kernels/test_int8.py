"""Symmetric INT8: int8_quantize (reference semantics; cpu bit-equal on every ISA path)
and int8_gemm (every CPU kernel bit-equal to the reference, exact integer sums, close
to the unquantized matmul)."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_testing import DTYPES

import kernels
from kernels.int8 import MAX_K, int8_gemm_reference

SHAPES = [(1, 1), (7, 17), (83, 769), (16, 5125), (3, 64)]
# (M, N, K): single elements, partial 16-column groups and 64-deep k blocks, a
# partial last block of 32 rows, more groups than one thread takes.
# m covers every row tail of the register tiles (m % 6 and m % 4), n every group tail
GEMM_SHAPES = [(1, 1, 1), (7, 5, 3), (33, 48, 64), (31, 33, 200), (100, 130, 1000),
               (64, 520, 128), (257, 16, 63), (38, 70, 130)]  # fmt: skip


def make(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype)


def codes(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-127, 128, shape, generator=g, dtype=torch.int8)


# ----------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("granularity", ["tensor", "token"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_quantize_bit_equal_to_reference(isa, dtype, shape, granularity):
    x = make(shape, dtype)
    q, s = kernels.int8_quantize(x, granularity=granularity, backend="cpu")
    q_ref, s_ref = kernels.int8_quantize(x, granularity=granularity, backend="reference")
    assert q.dtype == torch.int8 and s.shape == s_ref.shape
    assert torch.equal(s, s_ref) and torch.equal(q, q_ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [7, 16, 40])  # a tail only; whole vectors; both
def test_cpu_quantize_edge_values_on_every_isa(isa, dtype, width):
    # NaN, infinities, ties at +-k.5, values past +-127 and -0.0, in every lane
    # position of the vector loop and of its tail, against the reference
    special = [float("nan"), float("inf"), -float("inf"), 0.5, 1.5, 2.5, -0.5, -1.5,
               126.5, -126.5, 127.49, 128.0, -128.0, -0.0, 3.0, 1e-30]  # fmt: skip
    x = torch.tensor([special[(i * 7 + r) % len(special)] for r in range(5)
                      for i in range(width)]).reshape(5, width).to(dtype)  # fmt: skip
    for scale in (1.0, 0.75):
        q = kernels.int8_quantize(x, scale, backend="cpu")[0]
        assert torch.equal(q, kernels.int8_quantize(x, scale, backend="reference")[0])


def test_cpu_quantize_with_one_scale_rounds_every_quotient_like_a_division(isa):
    """With one scale the cpu kernel multiplies by 1/scale and corrects the quotient
    with its FMA residual: every bf16 value, and fp32 values a few ulps either side of
    each half-integer multiple of the scale (where a wrong quotient would change the
    code), over scales from 1e-30 to 1e30, give the reference's codes."""
    every_bf16 = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    scales = torch.empty(60).uniform_(math.log(1e-30), math.log(1e30), generator=g).exp()
    scales = [*scales.tolist(), 1.0, 1 / 127, 0.1, 3.0, 2.0**-126]
    for scale in scales:
        scale = float(torch.tensor(scale, dtype=torch.float32))
        halves = ((torch.arange(-128, 128, dtype=torch.float64) + 0.5) * scale).float()
        bits = halves.view(torch.int32)
        near = torch.cat([(bits + ulps).view(torch.float32) for ulps in range(-3, 4)])
        for x in (every_bf16, near):
            got, _ = kernels.int8_quantize(x, scale, backend="cpu")
            want, _ = kernels.int8_quantize(x, scale, backend="reference")
            assert torch.equal(got, want), f"scale {scale}: {int((got != want).sum())} codes differ"


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_quantize_semantics(backend, request):
    if backend == "cpu":
        request.getfixturevalue("cpu_module")
    x = torch.tensor([[0.0, 1.0, -2.0, 2.5, float("nan"), float("inf"), -float("inf"), 3.5]])
    q, s = kernels.int8_quantize(x, 0.5, backend=backend)  # static per tensor
    # 2.5 / 0.5 = 5, 3.5 / 0.5 = 7; NaN -> 0, +-inf saturate
    assert q.tolist() == [[0, 2, -4, 5, 0, 127, -127, 7]]
    assert s.item() == 0.5
    half = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0]])
    assert kernels.int8_quantize(half, 1.0, backend=backend)[0].tolist() == [
        [0, 2, 2, 0, -2, 127, -127]  # ties to even; never -128
    ]
    q, s = kernels.int8_quantize(torch.tensor([[0.0, 0.0], [1.0, -127.0]]), backend=backend)
    assert s.flatten().tolist() == [1.0, 1.0] and q.tolist() == [[0, 0], [1, -127]]
    # NaN and inf never enlarge a dynamic scale
    q, s = kernels.int8_quantize(torch.tensor([[float("nan"), float("inf"), 2.54]]),
                                 backend=backend)  # fmt: skip
    assert s.item() == pytest.approx(2.54 / 127) and q[0, 2].item() == 127


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_quantize_shapes_and_errors(backend, request):
    if backend == "cpu":
        request.getfixturevalue("cpu_module")
    x = make((2, 3, 5), torch.float32)
    q, s = kernels.int8_quantize(x, backend=backend)
    assert q.shape == x.shape and s.shape == (2, 3, 1)
    q, s = kernels.int8_quantize(x, torch.arange(1, 7.0), "token", backend=backend)
    assert s.shape == (2, 3, 1) and torch.equal(q, kernels.int8_quantize(x, torch.arange(1, 7.0),
                                                                     "token")[0])  # fmt: skip
    empty = kernels.int8_quantize(torch.empty(0, 4), backend=backend)
    assert empty[0].shape == (0, 4) and empty[1].shape == (0, 1)
    with pytest.raises(ValueError, match="granularity"):
        kernels.int8_quantize(x, granularity="channel")
    with pytest.raises(ValueError, match="scale value"):
        kernels.int8_quantize(x, torch.ones(2))
    with pytest.raises(ValueError, match="dtype"):
        kernels.int8_quantize(x.to(torch.int32))


# ----------------------------------------------------------------------------- gemm


@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=str)
def test_every_cpu_kernel_is_bit_equal_to_the_reference(int8_isa, mnk, out_dtype):
    m, n, k = mnk
    a, b = codes((m, k), 1), codes((n, k), 2)
    a_scale, b_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
    bias = make((n,), out_dtype, 3)
    packed = kernels.prepack_int8_weight(b)
    for sa, sb, bi in [(a_scale, b_scale, bias), (a_scale[:1], b_scale[:1], None),
                       (a_scale, b_scale[:1], bias)]:  # fmt: skip
        got = kernels.int8_gemm(a, packed, sa, sb, out_dtype, bi)
        want = int8_gemm_reference(a, b, sa, sb, out_dtype, bi)
        assert got.dtype == out_dtype and torch.equal(got, want), (int8_isa, mnk, sa.numel())


@pytest.mark.parametrize("out_dtype", DTYPES)
def test_outputs_past_the_caches_are_bit_equal_too(int8_isa, out_dtype):
    # 16 MiB and more of output: written with streaming stores where the kernel has them
    # (AMX); n = 1030 leaves most rows unaligned for those stores, n = 1024 none
    for n in (1030, 1024):
        m, k = 4100, 64
        a, b = codes((m, k), 1), codes((n, k), 2)
        a_scale, b_scale, bias = torch.rand(m) + 0.01, torch.rand(n) + 0.01, make((n,), out_dtype)
        got = kernels.int8_gemm(a, kernels.prepack_int8_weight(b), a_scale, b_scale, out_dtype, bias)
        want = int8_gemm_reference(a, b, a_scale, b_scale, out_dtype, bias)
        assert torch.equal(got, want), (int8_isa, n)


def test_integer_sums_are_exact_at_the_extremes(int8_isa):
    """Every product at +-127 * 127 with a long k: sums reach 64 million, past fp32's
    exact integers, still equal to the float64 reference (and to the true integer)."""
    k = 4096
    a = torch.full((5, k), 127, dtype=torch.int8)
    a[1] = -127
    b = torch.full((19, k), 127, dtype=torch.int8)
    b[3, ::2] = -127
    one = torch.ones(1)
    got = kernels.int8_gemm(a, kernels.prepack_int8_weight(b), one, one, torch.float32)
    assert torch.equal(got, int8_gemm_reference(a, b, one, one, torch.float32, None))
    assert got[0, 0].item() == 127 * 127 * k and got[1, 0].item() == -127 * 127 * k
    assert got[0, 3].item() == 0.0


def test_results_land_in_out_and_unpacked_weights_work(cpu_module):
    a, b = codes((9, 70), 4), codes((21, 70), 5)
    sa, sb = torch.rand(9), torch.rand(21)
    want = int8_gemm_reference(a, b, sa, sb, torch.bfloat16, None)
    out = torch.empty(9, 21, dtype=torch.bfloat16)
    assert kernels.int8_gemm(a, b, sa, sb, torch.bfloat16, out=out) is out
    assert torch.equal(out, want)
    assert torch.equal(kernels.int8_gemm(a[:, :70], b, sa, sb, torch.bfloat16), want)
    assert kernels.int8_gemm(a[:0], b, sa[:1], sb, torch.bfloat16).shape == (0, 21)


def test_close_to_the_unquantized_matmul(cpu_module):
    """W8A8 with per-channel weights and per-token activations against fp32: the
    end-to-end error bound (cosine similarity > 0.999 on Gaussian data)."""
    x, w = make((64, 512), torch.float32, 6), make((96, 512), torch.float32, 7)
    qx, sx = kernels.int8_quantize(x)
    qw, sw = kernels.int8_quantize(w)  # one scale per row of w = per output channel
    y = kernels.int8_gemm(qx, kernels.prepack_int8_weight(qw), sx, sw, torch.float32)
    cos = torch.nn.functional.cosine_similarity(y.flatten(), (x @ w.T).flatten(), dim=0)
    assert cos > 0.999, cos


def test_gemm_argument_errors(cpu_module):
    a, b = codes((4, 8)), codes((3, 8))
    one = torch.ones(1)
    with pytest.raises(ValueError, match="int8"):
        kernels.int8_gemm(a.float(), b, one, one)
    with pytest.raises(ValueError, match=r"a \[M, K\] and b \[N, K\]"):
        kernels.int8_gemm(a, codes((3, 9)), one, one)
    with pytest.raises(ValueError, match="a_scale needs 1 or 4"):
        kernels.int8_gemm(a, b, torch.ones(2), one)
    with pytest.raises(ValueError, match="bias must be"):
        kernels.int8_gemm(a, b, one, one, torch.float32, torch.ones(4))
    with pytest.raises(ValueError, match="out must be"):
        kernels.int8_gemm(a, b, one, one, torch.float32, out=torch.empty(4, 4))
    with pytest.raises(ValueError, match="exceeds"):
        big = torch.zeros(1, MAX_K + 1, dtype=torch.int8)
        kernels.int8_gemm(big, big, one, one)
    with pytest.raises(ValueError, match="expected int8"):
        kernels.prepack_int8_weight(b.float())


def test_bad_kernel_choice_says_what_is_allowed(cpu_module, monkeypatch):
    monkeypatch.setenv("REWARD_ENGINE_INT8_GEMM", "sse")
    with pytest.raises(ValueError, match="scalar, avx2, avx512_vnni, amx"):
        cpu_module.int8_gemm_isa()
