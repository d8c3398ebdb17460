"""The cuda backend (kernels._C_cuda) against the reference, on the same parametrized
cases as the cpu backend: silu_mul (+ FP8 output), rope / rope_and_cache, paged prefill
attention, fp8_quantize (bit-equal), the cuBLASLt fp8_gemm and the E4M3 KV cache (write
and read). Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
from kernel_testing import DTYPES, assert_close
from test_fp8_kv_cache import WRITE_SHAPES as FP8_WRITE_SHAPES
from test_fp8_kv_cache import (
    check_literal_codes,
    check_sweep,
    check_write,
    every_code_case,
    fp8_batch,
    reference_read,
    write_case,
)
from test_paged_attention import BATCH, LAYOUTS, make_batch

import kernels
from kernels import _native
from kernels.activation import silu_mul_reference
from kernels.fp8 import FP8_DTYPE, GRANULARITIES, fp8_gemm_reference
from kernels.paged_attention import paged_prefill_attention_reference
from kernels.rope import rope_and_cache_reference, rope_reference


def _skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (the cuda backend is compiled but runs only on a GPU)"
    if _native.cuda_module() is None:
        return f"kernels._C_cuda is not built: {_native.import_error('_C_cuda')}"
    return None


# marked `gpu` so that bench/gpu_check.sh (pytest -m gpu) runs them
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
]
DEV = "cuda"


def make(shape, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(shape, generator=g)).to(dtype)


@pytest.mark.parametrize("inter", [8, 17, 768, 769, 5125])
@pytest.mark.parametrize("tokens", [1, 7, 83])
@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_mul(dtype, tokens, inter):
    x = make((tokens, 2 * inter), dtype)
    out = kernels.silu_mul(x.to(DEV), backend="cuda")
    assert_close(out, silu_mul_reference(x), "silu_mul[cuda]")
    q = kernels.silu_mul(x.to(DEV), fp8_scale=0.05, backend="cuda")
    expected, _ = kernels.fp8_quantize(out.cpu(), 0.05, backend="reference")
    assert torch.equal(q.cpu().view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("hidden", [8, 17, 769, 5125])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norms_with_fp8_output(dtype, hidden):
    x, r, w = make((7, hidden), dtype), make((7, hidden), dtype, 1), make((hidden,), dtype, 2)
    xd, rd, wd = x.to(DEV), r.to(DEV), w.to(DEV)
    y = kernels.rms_norm(xd, wd, 1e-5, backend="cuda")
    q = kernels.rms_norm(xd, wd, 1e-5, fp8_scale=0.02, backend="cuda")
    expected, _ = kernels.fp8_quantize(y.cpu(), 0.02, backend="reference")
    assert torch.equal(q.cpu().view(torch.uint8), expected.view(torch.uint8))
    r_ref = r.clone()
    q = kernels.fused_add_rms_norm(xd, rd, wd, 1e-5, fp8_scale=0.02, backend="cuda")
    kernels.fused_add_rms_norm(x, r_ref, w, 1e-5, backend="reference")
    assert torch.equal(rd.cpu(), r_ref)
    y = kernels.rms_norm(rd, wd, 1e-5, backend="cuda")
    expected, _ = kernels.fp8_quantize(y.cpu(), 0.02, backend="reference")
    assert torch.equal(q.cpu().view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("head_shape", [(4, 4, 64), (8, 2, 128), (8, 1, 18)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_cache(dtype, head_shape):
    num_q, num_kv, d = head_shape
    tokens, block = 37, 5
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(tokens, (num_q + 2 * num_kv) * d, generator=g).to(dtype)
    positions = torch.randint(0, 200, (tokens,), generator=g)
    cache = kernels.compute_cos_sin_cache(d, 256, 500000.0)
    slots = torch.randperm(12 * block, generator=g)[:tokens].to(torch.int32)
    slots[3] = -1

    def run(qkv, backend, device):
        qkv = qkv.clone().to(device)
        q = qkv[:, : num_q * d].view(tokens, num_q, d)
        k = qkv[:, num_q * d : (num_q + num_kv) * d].view(tokens, num_kv, d)
        v = qkv[:, (num_q + num_kv) * d :].view(tokens, num_kv, d)
        kc = torch.zeros(12, block, num_kv, d, dtype=dtype, device=device)
        vc = torch.zeros_like(kc)
        args = (positions.to(device), cache.to(device), kc, vc, slots.to(device))
        if backend == "reference":
            rope_and_cache_reference(q, k, v, *args)
        else:
            kernels.rope_and_cache(q, k, v, *args, backend=backend)
        return q.cpu(), k.cpu(), kc.cpu(), vc.cpu()

    for got, want in zip(run(qkv, "cuda", DEV), run(qkv, "reference", "cpu"), strict=True):
        assert_close(got, want, "rope_and_cache[cuda]")
    q = qkv[:, : num_q * d].view(tokens, num_q, d)
    k = qkv[:, num_q * d : (num_q + num_kv) * d].view(tokens, num_kv, d)
    qc, kc = q.to(DEV), k.to(DEV)
    kernels.rope(qc, kc, positions.to(DEV), cache.to(DEV), backend="cuda")
    qr, kr = rope_reference(q.clone(), k.clone(), positions, cache)
    assert_close(qc.cpu(), qr, "rope[cuda] q")
    assert_close(kc.cpu(), kr, "rope[cuda] k")
    with pytest.raises(IndexError):
        kernels.rope(qc, kc, positions.to(DEV) + 1000, cache.to(DEV), backend="cuda")


# head_dim 64 and 128 in bf16/fp16 run the tensor-core kernel, the others the scalar one
CUDA_LAYOUTS = LAYOUTS + [(8, 2, 16, 128), (64, 8, 16, 128)]


@pytest.mark.parametrize("layout", CUDA_LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_prefill_attention(dtype, layout):
    num_q, num_kv, block_size, head_dim = layout
    q, kc, vc, tables, starts, lens = make_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype)
    scale = head_dim**-0.5
    out = kernels.paged_prefill_attention(
        q.to(DEV), kc.to(DEV), vc.to(DEV), tables.to(DEV), starts, lens, scale, backend="cuda"
    )
    expected = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, scale)
    assert_close(out.cpu(), expected, "attention[cuda]")


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("shape", [(1, 1), (7, 17), (83, 769), (16, 5125)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fp8_quantize_bit_equal(dtype, shape, granularity):
    x = make(shape, dtype, scale=100.0)
    x.view(-1)[0] = float("nan")
    if x.numel() > 2:
        x.view(-1)[1], x.view(-1)[2] = float("inf"), -float("inf")
    q, s = kernels.fp8_quantize(x.to(DEV), granularity=granularity, backend="cuda")
    q_ref, s_ref = kernels.fp8_quantize(x, granularity=granularity, backend="reference")
    assert torch.equal(s.cpu(), s_ref)
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))
    q, _ = kernels.fp8_quantize(x.to(DEV), s_ref.to(DEV), granularity, backend="cuda")
    assert torch.equal(q.cpu().view(torch.uint8), q_ref.view(torch.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_prefill_attention_over_long_contexts(dtype):
    """Several 64-token query tiles and 64-key tiles per sequence, chunks after long
    cached prefixes, and a block table whose blocks are scattered."""
    seqs = [(0, 300), (517, 64), (1000, 1), (130, 129)]
    q, kc, vc, tables, starts, lens = make_batch(seqs, 16, 4, 128, 16, dtype)
    out = kernels.paged_prefill_attention(
        q.to(DEV), kc.to(DEV), vc.to(DEV), tables.to(DEV), starts, lens, 0.088, backend="cuda"
    )
    expected = paged_prefill_attention_reference(q, kc, vc, tables, starts, lens, 0.088)
    assert_close(out.cpu(), expected, "attention[cuda], long contexts")


def _fp8_gemm_capable() -> bool:
    return torch.cuda.get_device_capability() >= (8, 9) and hasattr(
        _native.cuda_module(), "fp8_gemm"
    )


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mnk", [(1, 16, 16), (33, 64, 64), (83, 144, 784), (256, 512, 1024)])
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_fp8_gemm(out_dtype, mnk, with_bias, per_channel, per_token):
    if not _fp8_gemm_capable():
        pytest.skip("cuBLASLt FP8 needs sm_89+ and a build with cuBLASLt")
    m, n, k = mnk
    g = torch.Generator().manual_seed(0)
    a = (torch.randn(m, k, generator=g) * 4).to(FP8_DTYPE)
    b = (torch.randn(n, k, generator=g) * 4).to(FP8_DTYPE)
    sa = torch.rand(m if per_token else 1, generator=g) + 0.5
    sb = torch.rand(n if per_channel else 1, generator=g) + 0.5
    bias = make((n,), out_dtype, seed=1) if with_bias else None
    args = (a.to(DEV), b.to(DEV), sa.to(DEV), sb.to(DEV), out_dtype)
    out = kernels.fp8_gemm(*args, None if bias is None else bias.to(DEV), backend="cuda")
    ref = fp8_gemm_reference(a, b, sa, sb, out_dtype, bias)
    # fp32 accumulation in another order: compare relative to the row's magnitude
    err = (out.cpu().double() - ref.double()).abs()
    assert (err <= 2e-2 * ref.double().abs() + 1e-2 * ref.double().abs().amax(1, True)).all()


@pytest.mark.parametrize("scales", ["tensor", "token x channel"])
def test_fp8_gemm_on_views_that_are_only_16_byte_aligned(scales):
    """cuBLASLt assumes 256-byte aligned buffers unless told otherwise: row 1 of an
    [M+1, 48] FP8 tensor starts 48 bytes in, and must still give the right product."""
    if not _fp8_gemm_capable():
        pytest.skip("cuBLASLt FP8 needs sm_89+ and a build with cuBLASLt")
    m, n, k = 40, 24, 48
    g = torch.Generator().manual_seed(1)
    a_full = (torch.randn(m + 1, k, generator=g) * 4).to(FP8_DTYPE)
    b_full = (torch.randn(n + 1, k, generator=g) * 4).to(FP8_DTYPE)
    a, b = a_full[1:], b_full[1:]
    per_row = scales != "tensor"
    sa = torch.rand(m if per_row else 1, generator=g) + 0.5
    sb = torch.rand(n if per_row else 1, generator=g) + 0.5
    a_dev, b_dev = a_full.to(DEV)[1:], b_full.to(DEV)[1:]
    assert a_dev.data_ptr() % 256 == 48
    out = kernels.fp8_gemm(a_dev, b_dev, sa.to(DEV), sb.to(DEV), torch.bfloat16, backend="cuda")
    ref = fp8_gemm_reference(a, b, sa, sb, torch.bfloat16, None)
    err = (out.cpu().double() - ref.double()).abs()
    assert (err <= 2e-2 * ref.double().abs() + 1e-2 * ref.double().abs().amax(1, True)).all()


def test_fp8_gemm_rejects_unaligned_k():
    a = torch.ones(4, 17, device=DEV).to(FP8_DTYPE)
    with pytest.raises(ValueError, match="multiples of 16"):
        kernels.fp8_gemm(a, a, torch.ones(1, device=DEV), torch.ones(1, device=DEV), backend="cuda")


# ----------------------------------------------------------------------------- E4M3 KV cache
# The cases of test_fp8_kv_cache.py on the cuda backend: the write bit-equal to the
# reference (NaN codes as NaN), the read at the tolerance of q's dtype, every code exact.


@pytest.mark.parametrize("shape", FP8_WRITE_SHAPES, ids=lambda s: "t{}-{}q{}kv-d{}-b{}".format(*s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_and_cache_fp8_write(dtype, shape):
    check_write(write_case(*shape, dtype), shape, "cuda", DEV)


def test_rope_and_cache_fp8_literal_codes_and_sweep():
    for dtype in DTYPES:
        check_literal_codes("cuda", dtype, DEV)
    check_sweep("cuda", DEV)


@pytest.mark.parametrize("random_codes", [False, True], ids=["quantized", "codes"])
@pytest.mark.parametrize("layout", CUDA_LAYOUTS, ids=lambda x: "{}q{}kv-block{}-d{}".format(*x))
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_prefill_attention_fp8_cache(dtype, layout, random_codes):
    num_q, num_kv, block_size, head_dim = layout
    args, (ks, vs), _ = fp8_batch(BATCH, num_q, num_kv, head_dim, block_size, dtype,
                                  random_codes=random_codes)  # fmt: skip
    scale = head_dim**-0.5
    on_device = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
    out = kernels.paged_prefill_attention(
        *on_device, scale, k_scale=torch.tensor(ks, device=DEV), v_scale=vs, backend="cuda"
    )
    assert_close(out.cpu(), reference_read(args, scale, (ks, vs)), "fp8-cache attention[cuda]")


@pytest.mark.parametrize("head_dim", [64, 128, 254])  # the tensor-core kernel, the scalar one
@pytest.mark.parametrize("dtype", DTYPES)
def test_paged_prefill_attention_fp8_cache_decodes_every_code(dtype, head_dim):
    args, expected = every_code_case(dtype, head_dim)
    args = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
    out = kernels.paged_prefill_attention(*args, 0.1, k_scale=1.0, v_scale=1.0, backend="cuda")
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_paged_prefill_attention_fp8_cache_over_long_contexts(dtype):
    seqs = [(0, 300), (517, 64), (1000, 1), (130, 129)]
    args, (ks, vs), _ = fp8_batch(seqs, 16, 4, 128, 16, dtype, random_codes=True)
    on_device = [a.to(DEV) if isinstance(a, torch.Tensor) else a for a in args]
    out = kernels.paged_prefill_attention(*on_device, 0.088, k_scale=ks, v_scale=vs,
                                          backend="cuda")  # fmt: skip
    assert_close(out.cpu(), reference_read(args, 0.088, (ks, vs)), "fp8 attention, long contexts")
