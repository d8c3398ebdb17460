"""FP8 E4M3: fp8_quantize (reference semantics, cpu bit-equal on every ISA path) and
fp8_gemm (cpu emulation exact against float64, close to the reference, close to the
unquantized matmul)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, TOLERANCES

import kernels
from kernels.fp8 import FP8_DTYPE, GRANULARITIES, fp8_gemm_reference

BACKENDS = ["reference", "cpu"]
SHAPES = [(1, 1), (7, 17), (83, 769), (16, 5125)]
GEMM_SHAPES = [(1, 1, 1), (7, 5, 3), (33, 65, 300), (83, 130, 769), (4, 129, 1025)]
ALL_CODES = torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE)
FINITE_VALUES = ALL_CODES.float()[ALL_CODES.float().isfinite()].unique()


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "cpu":
        request.getfixturevalue("cpu_module")
    return request.param


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8)


def make(shape, dtype, seed=0, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype)


def test_every_finite_code_round_trips(backend):
    """A value that is exactly an E4M3 number comes back unchanged (scale 1)."""
    x = FINITE_VALUES[None]
    q, _ = kernels.fp8_quantize(x, torch.tensor(1.0), backend=backend)
    assert torch.equal(q.float(), x)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_bit_equal_to_reference(isa, dtype, shape, granularity):
    x = make(shape, dtype)
    q, s = kernels.fp8_quantize(x, granularity=granularity, backend="cpu")
    q_ref, s_ref = kernels.fp8_quantize(x, granularity=granularity, backend="reference")
    assert s.shape == s_ref.shape and torch.equal(s, s_ref)
    assert torch.equal(bits(q), bits(q_ref))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_cpu_dynamic_scales_skip_nan_and_inf_on_every_isa(isa, granularity):
    """NaN and +-inf inside the vectorized body of a row (64-wide pieces) and in its
    tail leave the amax to the finite values, on every instruction-set path."""
    x = make((3, 200), torch.float32, scale=1.0)
    x[0, 70], x[1, 130], x[2, 199], x[0, 5] = float("nan"), float("inf"), -float("inf"), 1e-30
    x[1, 150], x[0, 63], x[2, 64], x[2, 195] = 300.0, -250.0, 7.5, -90.0
    q, s = kernels.fp8_quantize(x, granularity=granularity, backend="cpu")
    q_ref, s_ref = kernels.fp8_quantize(x, granularity=granularity, backend="reference")
    assert torch.equal(s, s_ref)
    assert torch.equal(bits(q), bits(q_ref))


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_dynamic_scales(backend, granularity):
    x = make((5, 9), torch.float32)
    q, s = kernels.fp8_quantize(x.view(1, 5, 9), granularity=granularity, backend=backend)
    a = x.abs()
    expected = {"tensor": a.amax() / 448, "token": a.amax(1) / 448, "channel": a.amax(0) / 448}
    expected_shape = {"tensor": (), "token": (1, 5, 1), "channel": (9,)}[granularity]
    assert s.shape == expected_shape and s.dtype == torch.float32
    assert torch.equal(s.reshape(-1), expected[granularity].reshape(-1))
    # the largest |x| of each group lands exactly on +-448
    assert q.float().abs().max() == 448.0
    recon = q.float().view(5, 9) * (s.view(-1, 1) if granularity == "token" else s)
    assert (recon - x).abs().max() <= a.max() / 16  # 3 mantissa bits: within 2^-4 relative


def test_static_scale_is_used_as_given(backend):
    x = make((4, 33), torch.bfloat16)
    q, s = kernels.fp8_quantize(x, 0.25, backend=backend)
    assert s.item() == 0.25
    expected = (x.float() / 0.25).clamp(-448, 448).to(FP8_DTYPE)
    assert torch.equal(bits(q), bits(expected))
    per_row = torch.arange(1, 5, dtype=torch.float32)
    q, s = kernels.fp8_quantize(x, per_row, "token", backend=backend)
    assert s.shape == (4, 1) and torch.equal(s.view(-1), per_row)
    assert torch.equal(bits(q), bits((x.float() / per_row[:, None]).to(FP8_DTYPE)))


def test_saturation_nan_and_inf(backend):
    """Past 448 saturates, +-inf saturates to +-448, NaN stays NaN (sign kept)."""
    x = torch.tensor([[448.0, 449.0, 464.0, 500.0, 1e30, float("inf"), -float("inf"), -1e6,
                       float("nan"), -float("nan"), 0.0, -0.0]])  # fmt: skip
    q, _ = kernels.fp8_quantize(x, torch.tensor(1.0), backend=backend)
    v = q.float()[0]
    assert v[:6].tolist() == [448.0] * 6 and v[6:8].tolist() == [-448.0] * 2
    assert v[8].isnan() and v[9].isnan() and bits(q)[0, 8] == 0x7F and bits(q)[0, 9] == 0xFF
    assert bits(q)[0, 10] == 0x00 and bits(q)[0, 11] == 0x80
    # NaN and inf do not enlarge a dynamic scale; an all-zero group gets scale 1
    x = torch.tensor([[float("nan"), float("inf"), 2.0], [0.0, 0.0, 0.0]])
    q, s = kernels.fp8_quantize(x, granularity="token", backend=backend)
    assert torch.equal(s.view(-1), torch.stack([torch.tensor(2.0) / 448, torch.tensor(1.0)]))
    assert q.float()[0, 1] == 448 and q.float()[0, 2] == 448 and q.float()[0, 0].isnan()
    assert torch.equal(q.float()[1], torch.zeros(3))


def test_round_to_nearest_even_ties(backend):
    """Midpoints between neighbouring E4M3 values round to the even mantissa."""
    lo, hi = FINITE_VALUES[FINITE_VALUES >= 0][:-1], FINITE_VALUES[FINITE_VALUES >= 0][1:]
    mid = (lo.double() + hi.double()) / 2  # exact in fp32: one more mantissa bit
    q, _ = kernels.fp8_quantize(mid.float()[None], torch.tensor(1.0), backend=backend)
    lo_bits, hi_bits = bits(lo.abs().to(FP8_DTYPE)), bits(hi.to(FP8_DTYPE))
    expected = torch.where(lo_bits % 2 == 0, lo_bits, hi_bits)
    assert torch.equal(bits(q)[0], expected)
    # just above / below a midpoint goes to the nearer value
    up, _ = kernels.fp8_quantize((mid * (1 + 1e-6)).float()[None], 1.0, backend=backend)
    assert torch.equal(bits(up)[0], hi_bits)


def test_round_trip_error_bound(backend):
    x = make((64, 256), torch.float32, scale=3.0)
    q, s = kernels.fp8_quantize(x, granularity="token", backend=backend)
    recon = q.float() * s
    # normal range: half an ulp = 2^-4 relative; below it the subnormal step 2^-9 * s
    assert ((recon - x).abs() <= x.abs() / 16 + s * 2.0**-10).all()


def test_bad_arguments():
    x = torch.ones(3, 4)
    with pytest.raises(ValueError, match="granularity"):
        kernels.fp8_quantize(x, granularity="row")
    with pytest.raises(ValueError, match="scale"):
        kernels.fp8_quantize(x, torch.ones(4), "token")
    a = torch.ones(2, 4).to(FP8_DTYPE)
    with pytest.raises(ValueError, match="b \\[N, K\\]"):
        kernels.fp8_gemm(a, a[:, :3], torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(ValueError, match="a_scale"):
        kernels.fp8_gemm(a, a, torch.ones(3), torch.tensor(1.0))


# ----------------------------------------------------------------------------- fp8_gemm


def random_fp8(shape, seed, low_exp=-9, high_exp=8):
    """Random E4M3 values with |v| in [2^low_exp, 2^high_exp] (and zeros), signs mixed."""
    g = torch.Generator().manual_seed(seed)
    v = FINITE_VALUES
    v = v[(v == 0) | ((v.abs() >= 2.0**low_exp) & (v.abs() <= 2.0**high_exp))]
    return v[torch.randint(len(v), shape, generator=g)].to(FP8_DTYPE)


def scales(m, n, per_row, per_col, seed, power_of_two=False):
    g = torch.Generator().manual_seed(seed)
    sa = torch.rand(m if per_row else 1, generator=g) + 0.5
    sb = torch.rand(n if per_col else 1, generator=g) + 0.5
    if power_of_two:
        sa, sb = 2.0 ** torch.floor(sa.log2() * 4), 2.0 ** torch.floor(-sb.log2() * 4)
    return sa.reshape(() if not per_row else (m,)), sb


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mnk", GEMM_SHAPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_gemm_cpu_exact_against_float64(isa, out_dtype, mnk, per_token, per_channel):
    """Values in [2^-3, 2^4] keep every partial sum a multiple of 2^-6 below 2^18, so
    fp32 accumulation is exact in any order; with power-of-two scales the whole
    result equals the float64 computation rounded once to out_dtype."""
    m, n, k = mnk
    a, b = random_fp8((m, k), 1, -3, 4), random_fp8((n, k), 2, -3, 4)
    sa, sb = scales(m, n, per_token, per_channel, 3, power_of_two=True)
    bias = make((n,), out_dtype, seed=4, scale=1.0)
    out = kernels.fp8_gemm(a, b, sa, sb, out_dtype, bias, backend="cpu")
    exact = (a.double() @ b.double().T) * (sa.double().reshape(-1, 1) * sb.double()[None])
    exact = (exact.float() + bias.float()).to(out_dtype)  # the bias add rounds in fp32
    assert out.dtype == out_dtype and torch.equal(out, exact)


@pytest.mark.parametrize("mnk", GEMM_SHAPES)
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_gemm_cpu_matches_reference(isa, out_dtype, mnk):
    """Subnormals to 16 (sums stay within fp16), arbitrary scales: only the fp32
    summation order differs."""
    m, n, k = mnk
    a, b = random_fp8((m, k), 5, high_exp=4), random_fp8((n, k), 6, high_exp=4)
    sa, sb = scales(m, n, True, True, 7)
    out = kernels.fp8_gemm(a, b, sa, sb, out_dtype, backend="cpu")
    ref = fp8_gemm_reference(a, b, sa, sb, out_dtype, None)
    exact = (a.double() @ b.double().T) * (sa.double()[:, None] * sb.double()[None])
    # fp32 accumulation error of K terms, relative to the sum of |products|
    bound = (a.double().abs() @ b.double().abs().T) * (sa.double()[:, None] * sb.double()[None])
    for got in (out, ref):
        err = (got.double() - exact).abs()
        assert (
            err <= bound * k * 2.0**-23 + TOLERANCES[out_dtype].rtol * exact.abs() + 1e-30
        ).all()


def test_gemm_close_to_unquantized_matmul(backend):
    g = torch.Generator().manual_seed(8)
    x, w = torch.randn(64, 512, generator=g), torch.randn(96, 512, generator=g) * 0.02
    xq, xs = kernels.fp8_quantize(x, granularity="token", backend=backend)
    wq, ws = kernels.fp8_quantize(w, granularity="token", backend=backend)
    y = kernels.fp8_gemm(xq, wq, xs, ws, torch.bfloat16, backend=backend)
    y_ref = (x.bfloat16() @ w.bfloat16().T).float()
    cos = torch.nn.functional.cosine_similarity(y.float().flatten(), y_ref.flatten(), dim=0)
    assert cos > 0.99


def test_gemm_empty_and_strided(cpu_module):
    a, b = random_fp8((0, 8), 1), random_fp8((5, 8), 2)
    one = torch.tensor(1.0)
    assert kernels.fp8_gemm(a, b, one, one, backend="cpu").shape == (0, 5)
    wide = random_fp8((6, 40), 3)
    a, b = wide[:, 3:20], random_fp8((9, 17), 4)  # a row stride of 40
    sa, sb = torch.tensor(0.5), torch.rand(9) + 0.5
    out = kernels.fp8_gemm(a, b, sa, sb, torch.float32, backend="cpu")
    ref = fp8_gemm_reference(a, b, sa, sb, torch.float32, None)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    zero_k = kernels.fp8_gemm(
        random_fp8((3, 0), 1), random_fp8((4, 0), 2), sa, sb[:4], torch.float32, backend="cpu"
    )
    assert torch.equal(zero_k, torch.zeros(3, 4))
