"""fp8_quantize and fp8_gemm on the triton backend. Triton's interpreter rounds FP8
unreliably, so the numeric tests run on a GPU with E4M3 support (sm_89+, gpu marker);
on CPU only the clear refusal is tested (and test_triton_compile compiles the kernels
for sm_90)."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import assert_close
from triton_testing import HAS_GPU, HAS_TRITON

import kernels
from kernels.fp8 import FP8_DTYPE, fp8_gemm_reference, fp8_quantize_reference

FP8_GPU = HAS_GPU and torch.cuda.get_device_capability() >= (8, 9)


def gpu_fp8(test):
    """Marks a test `gpu` and skips it without triton and a GPU with E4M3 (sm_89+)."""
    skip = pytest.mark.skipif(not (HAS_TRITON and FP8_GPU), reason="needs triton and an sm_89+ GPU")
    return pytest.mark.gpu(skip(test))


CUDA = torch.device("cuda")
# (rows, cols): a single element, odd sizes, a row longer than one 1024-column block
QUANT_SHAPES = [(1, 1), (7, 33), (130, 1500)]
# (M, N, K): M = 1 and odd sizes on every edge, K below and above one tile
GEMM_SHAPES = [(1, 16, 32), (7, 70, 33), (130, 257, 200), (256, 512, 1024)]


def _x(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * 30
    if x.numel() > 3:
        x.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), -1e6])  # NaN, saturation
    return x


@pytest.mark.parametrize("granularity", ["tensor", "token", "channel"])
@pytest.mark.parametrize("shape", QUANT_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dynamic", [True, False], ids=["dynamic", "static"])
@gpu_fp8
def test_quantize_is_bit_exact(granularity, shape, dtype, dynamic):
    x = _x(*shape).to(dtype).to(CUDA)
    scale = None
    if not dynamic:
        scale = {"tensor": torch.tensor(0.5), "token": torch.rand(shape[0], 1) + 0.1,
                 "channel": torch.rand(shape[1]) + 0.1}[granularity].to(CUDA)  # fmt: skip
    q, s = kernels.fp8_quantize(x, scale, granularity, backend="triton")
    q_ref, s_ref = kernels.fp8_quantize(x, scale, granularity, backend="reference")
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)), "E4M3 bits differ"


@pytest.fixture
def one_gemm_config(monkeypatch):
    """Pin the smallest tile: autotuning would compile all GEMM_CONFIGS for each shape
    (test_every_gemm_config_is_correct covers each config)."""
    from kernels.triton import fp8

    smallest = min(range(len(fp8.GEMM_CONFIGS)), key=lambda i: _tile_area(fp8.GEMM_CONFIGS[i]))
    monkeypatch.setenv(fp8.GEMM_CONFIG_ENV, str(smallest))


def _tile_area(config):
    return config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"]


@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "M{}-N{}-K{}".format(*s))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scales", ["tensor", "row"])
@gpu_fp8
def test_gemm_matches_the_quantized_matmul(mnk, out_dtype, scales, one_gemm_config):
    _check_gemm(mnk, out_dtype, scales)


@pytest.mark.parametrize("config", range(8))
@gpu_fp8
def test_every_gemm_config_is_correct(config, monkeypatch):
    from kernels.triton import fp8

    assert len(fp8.GEMM_CONFIGS) == 8
    monkeypatch.setenv(fp8.GEMM_CONFIG_ENV, str(config))
    _check_gemm((130, 257, 200), torch.bfloat16, "row")  # a partial tile on every edge


@gpu_fp8
def test_autotuned_gemm_is_correct(monkeypatch):
    from kernels.triton import fp8

    monkeypatch.delenv(fp8.GEMM_CONFIG_ENV, raising=False)
    _check_gemm((130, 257, 200), torch.bfloat16, "row")


def test_a_bad_pinned_gemm_config_says_what_to_give(monkeypatch):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from kernels.triton import fp8

    monkeypatch.setenv(fp8.GEMM_CONFIG_ENV, "8")
    with pytest.raises(ValueError, match="an index into GEMM_CONFIGS, 0 to 7"):
        fp8.pinned_gemm_config()
    monkeypatch.setenv(fp8.GEMM_CONFIG_ENV, "3")
    assert fp8.pinned_gemm_config() is fp8.GEMM_CONFIGS[3]
    monkeypatch.delenv(fp8.GEMM_CONFIG_ENV)
    assert fp8.pinned_gemm_config() is None


def _check_gemm(mnk, out_dtype, scales):
    m, n, k = mnk
    a, b = _x(m, k, 1).nan_to_num(0, 0, 0).cuda(), _x(n, k, 2).nan_to_num(0, 0, 0).cuda()
    gran = "tensor" if scales == "tensor" else "token"
    (aq, sa), (bq, sb) = (kernels.fp8_quantize(t, granularity=gran) for t in (a, b))
    bias = torch.randn(n, device=CUDA).to(out_dtype)
    got = kernels.fp8_gemm(aq, bq, sa, sb, out_dtype, bias, backend="triton")
    expected = fp8_gemm_reference(aq, bq, sa.reshape(-1), sb.reshape(-1), out_dtype, bias)
    if out_dtype == torch.float32:  # only the summation order differs
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3 * expected.abs().max())
    else:
        assert_close(got, expected, "fp8_gemm")
    exact = (a @ b.T + bias.float()).flatten()
    cos = torch.nn.functional.cosine_similarity(got.float().flatten(), exact, dim=0)
    assert cos > 0.99, f"cosine similarity to the unquantized product {cos:.4f}"


@pytest.mark.parametrize("fused", [False, True], ids=["rms_norm", "fused_add_rms_norm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@gpu_fp8
def test_norm_fp8_output_is_the_quantized_norm(fused, dtype):
    """The E4M3 output equals fp8_quantize of the same backend's activation-dtype output,
    bit for bit (isolates the fused quantization from the norm's own rounding)."""
    x, r = (_x(37, 769, s).nan_to_num(0, 0, 0).to(dtype).to(CUDA) / 30 for s in (3, 4))
    w = torch.randn(769, device=CUDA).to(dtype)
    scale = torch.tensor(0.01, device=CUDA)
    if fused:
        r1, r2 = r.clone(), r.clone()
        q = kernels.fused_add_rms_norm(x, r1, w, 1e-5, fp8_scale=scale, backend="triton")
        y = kernels.fused_add_rms_norm(x, r2, w, 1e-5, backend="triton")
        assert torch.equal(r1, r2)
    else:
        q = kernels.rms_norm(x, w, 1e-5, fp8_scale=scale, backend="triton")
        y = kernels.rms_norm(x, w, 1e-5, backend="triton")
    expected = fp8_quantize_reference(y, scale, "tensor")[0]
    assert q.dtype == FP8_DTYPE
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@gpu_fp8
def test_silu_mul_fp8_output_is_the_quantized_product(dtype):
    x = _x(37, 2 * 1100, 5).nan_to_num(0, 0, 0).to(dtype).to(CUDA) / 10
    scale = torch.tensor(0.005, device=CUDA)
    q = kernels.silu_mul(x, fp8_scale=scale, backend="triton")
    y = kernels.silu_mul(x, backend="triton")
    expected = fp8_quantize_reference(y, scale, "tensor")[0]
    assert q.dtype == FP8_DTYPE
    assert torch.equal(q.view(torch.uint8), expected.view(torch.uint8))


def test_fp8_on_cpu_tensors_is_refused_clearly():
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from kernels.triton import fp8

    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        fp8.fp8_quantize_triton(torch.ones(2, 4), None, "tensor")
    a = torch.zeros(2, 16, dtype=FP8_DTYPE)
    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        fp8.fp8_gemm_triton(a, a, torch.ones(1), torch.ones(1), torch.float32, None)
    from kernels.triton import norm

    with pytest.raises(RuntimeError, match="CUDA tensors only"):
        norm.rms_norm_fp8_triton(torch.ones(2, 4), torch.ones(4), 1e-5, torch.tensor(1.0))
