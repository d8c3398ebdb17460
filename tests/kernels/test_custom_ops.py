"""The compiled kernels as torch ops (kernels/custom_ops.py): schema, mutation
annotations and fake implementations checked by torch.library.opcheck on CPU (and on
CUDA where a GPU and kernels._C_cuda exist), E4M3 KV caches (uint8 codes with their
k_scale / v_scale) included, and a torch.compile(fullgraph=True) trace through one op
and through the FP8-cache write and read."""

from __future__ import annotations

import pytest
import torch

import kernels
from kernels import _native, custom_ops
from kernels.fp8 import FP8_DTYPE

pytestmark = pytest.mark.usefixtures("cpu_module")
_HAS_CUDA = torch.cuda.is_available() and _native.cuda_module() is not None
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not _HAS_CUDA, reason="needs a GPU")]
    ),
]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def randn(*shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def opcheck(op, *args, device="cpu"):
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    torch.library.opcheck(op, moved)


@pytest.mark.parametrize("rows,hidden", [(1, 8), (7, 33), (16, 256)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_ops(rows, hidden, dtype, device):
    x, r, w = (
        randn(rows, hidden, dtype=dtype),
        randn(rows, hidden, dtype=dtype, seed=1),
        randn(hidden, dtype=dtype, seed=2),
    )
    opcheck(custom_ops.rms_norm, torch.empty_like(x), x, w, 1e-5, device=device)
    opcheck(custom_ops.fused_add_rms_norm, torch.empty_like(x), x, r, w, 1e-5, device=device)
    out8 = torch.empty(rows, hidden, dtype=torch.uint8)
    opcheck(custom_ops.rms_norm_fp8, out8, x, w, 1e-5, torch.tensor(0.01), device=device)
    opcheck(
        custom_ops.fused_add_rms_norm_fp8, out8, x, r, w, 1e-5, torch.tensor(0.01), device=device
    )


@pytest.mark.parametrize("rows,inter", [(1, 8), (5, 17)])
def test_silu_mul_ops(rows, inter, device):
    x = randn(rows, 2 * inter, dtype=torch.bfloat16)
    opcheck(custom_ops.silu_mul, torch.empty(rows, inter, dtype=torch.bfloat16), x, device=device)
    out8 = torch.empty(rows, inter, dtype=torch.uint8)
    opcheck(custom_ops.silu_mul_fp8, out8, x, torch.tensor(0.02), device=device)


@pytest.mark.parametrize("fp8_cache", [False, True], ids=["cache-in-q-dtype", "e4m3-cache"])
@pytest.mark.parametrize("tokens,hq,hkv,d", [(1, 2, 1, 16), (9, 8, 2, 64)])
def test_rope_ops(tokens, hq, hkv, d, fp8_cache, device):
    q, k, v = randn(tokens, hq, d), randn(tokens, hkv, d, seed=1), randn(tokens, hkv, d, seed=2)
    positions = torch.arange(tokens, dtype=torch.int64) * 3
    cache = kernels.compute_cos_sin_cache(d, 64, 10000.0)
    opcheck(custom_ops.rope, q, k, positions, cache, device=device)
    cache_dtype = torch.uint8 if fp8_cache else torch.float32  # E4M3 codes as uint8
    key_cache = torch.zeros(4, 5, hkv, d, dtype=cache_dtype)
    value_cache = torch.zeros_like(key_cache)
    slots = torch.randperm(20)[:tokens].to(torch.int32)
    scales = (torch.tensor(0.02), torch.tensor(0.03)) if fp8_cache else ()
    opcheck(
        custom_ops.rope_and_cache, q, k, v, positions, cache, key_cache, value_cache, slots,
        *scales, device=device,
    )  # fmt: skip


@pytest.mark.parametrize("fp8_cache", [False, True], ids=["cache-in-q-dtype", "e4m3-cache"])
@pytest.mark.parametrize("query_lens,context_lens", [([1], [1]), ([3, 0, 5], [7, 2, 5])])
def test_paged_prefill_attention_op(query_lens, context_lens, fp8_cache, device):
    hq, hkv, d, block = 4, 2, 32, 4
    q = randn(sum(query_lens), hq, d)
    key_cache, value_cache = randn(12, block, hkv, d, seed=1), randn(12, block, hkv, d, seed=2)
    scales = ()
    if fp8_cache:
        key_cache, value_cache = (c.to(FP8_DTYPE).view(torch.uint8) for c in (key_cache, value_cache))
        scales = (torch.tensor(0.5), torch.tensor(0.25))
    tables = torch.arange(12, dtype=torch.int32).view(len(query_lens), -1)[:, :4].contiguous()
    starts = torch.tensor([0, *torch.tensor(query_lens).cumsum(0).tolist()], dtype=torch.int64)
    lens = torch.tensor(context_lens, dtype=torch.int64)
    out = torch.empty_like(q)
    opcheck(
        custom_ops.paged_prefill_attention, out, q, key_cache, value_cache, tables, starts,
        lens, 0.125, *scales, device=device,
    )  # fmt: skip


@pytest.mark.parametrize("granularity,dynamic", [(0, True), (1, True), (2, True), (0, False)])
def test_fp8_quantize_op(granularity, dynamic, device):
    x = randn(6, 40, dtype=torch.float16)
    shape = {0: (), 1: (6, 1), 2: (40,)}[granularity]
    scale = torch.full(shape, 0.01)
    out = torch.empty(6, 40, dtype=torch.uint8)
    opcheck(custom_ops.fp8_quantize, out, x, scale, granularity, dynamic, device=device)


@pytest.mark.parametrize("m,n,k", [(1, 16, 16), (7, 65, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fp8_gemm_op(m, n, k, with_bias, device):
    a = randn(m, k).to(FP8_DTYPE).view(torch.uint8)
    b = randn(n, k, seed=1).to(FP8_DTYPE).view(torch.uint8)
    bias = randn(n, dtype=torch.bfloat16, seed=2) if with_bias else None
    out = torch.empty(m, n, dtype=torch.bfloat16)
    opcheck(
        custom_ops.fp8_gemm, out, a, b, torch.rand(m) + 0.5, torch.tensor(0.5), bias, device=device
    )


def test_fp8_kv_cache_ops_trace_with_torch_compile():
    """rope_and_cache into an E4M3 cache, then attention over it, inside
    torch.compile(fullgraph=True): the same codes and output as eager."""
    hq, hkv, d, block, tokens = 4, 2, 16, 4, 6
    cos_sin = kernels.compute_cos_sin_cache(d, 16, 10000.0)
    positions, slots = torch.arange(tokens), torch.arange(tokens)
    tables, k_scale, v_scale = torch.arange(2, dtype=torch.int32)[None], 0.05, 0.04

    def f(qkv, kc, vc):
        q = qkv[:, : hq * d].view(tokens, hq, d)
        k = qkv[:, hq * d : (hq + hkv) * d].view(tokens, hkv, d)
        v = qkv[:, (hq + hkv) * d :].view(tokens, hkv, d)
        kernels.rope_and_cache(q, k, v, positions, cos_sin, kc, vc, slots, k_scale=k_scale,
                               v_scale=v_scale, backend="cpu")  # fmt: skip
        return kernels.paged_prefill_attention(q, kc, vc, tables, [0, tokens], [tokens], 0.25,
                                               k_scale=k_scale, v_scale=v_scale, backend="cpu")

    def run(fn):
        qkv = randn(tokens, (hq + 2 * hkv) * d)
        kc = torch.zeros(2, block, hkv, d, dtype=torch.uint8).view(FP8_DTYPE)
        vc = torch.zeros_like(kc)
        return fn(qkv, kc, vc), kc.view(torch.uint8), vc.view(torch.uint8)

    try:
        got = run(torch.compile(f, fullgraph=True, backend="aot_eager"))
    except Exception as exc:  # no working compiler stack on this build
        pytest.skip(f"torch.compile is not usable here: {type(exc).__name__}: {exc}")
    want = run(f)
    assert want[1].any() and want[2].any()
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("m,n,k", [(1, 3, 5), (7, 65, 48)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_batch_invariant_linear_op(m, n, k, with_bias):
    x, w = randn(m, k, dtype=torch.bfloat16), randn(n, k, dtype=torch.bfloat16, seed=1)
    bias = randn(n, dtype=torch.bfloat16, seed=2) if with_bias else None
    out = torch.empty(m, n, dtype=torch.bfloat16)
    opcheck(custom_ops.batch_invariant_linear, out, x, w, bias)


def test_public_ops_trace_with_torch_compile():
    """rms_norm (cpu backend) inside torch.compile(fullgraph=True): no graph break at
    the compiled kernel, and the same result as eager."""
    x, w = randn(5, 64), randn(64, seed=1)

    def f(x, w):
        return kernels.rms_norm(x * 2.0, w, 1e-5, backend="cpu") + 1.0

    try:
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        got = compiled(x, w)
    except Exception as exc:  # no working compiler stack on this build
        pytest.skip(f"torch.compile is not usable here: {type(exc).__name__}: {exc}")
    torch.testing.assert_close(got, f(x, w), rtol=0, atol=0)


@pytest.mark.parametrize("qtype,dynamic", [(0, False), (0, True), (1, False), (1, True)])
def test_quantized_output_ops(qtype, dynamic):
    """CPU only: the quantized-output kernels exist in kernels._C (GPUs take the FP8-output
    ops above, or the op followed by a quantize op)."""
    rows, hidden = 7, 40
    x, r, w = randn(rows, hidden), randn(rows, hidden, seed=1), randn(hidden, seed=2)
    out = torch.empty(rows, hidden, dtype=torch.uint8 if qtype == 0 else torch.int8)
    scale = torch.empty(rows) if dynamic else torch.tensor(0.02)
    opcheck(custom_ops.rms_norm_quant, out, x, w, 1e-5, scale, qtype, dynamic)
    opcheck(custom_ops.fused_add_rms_norm_quant, out, x, r, w, 1e-5, scale, qtype, dynamic)
    gate_up = randn(rows, 2 * hidden, seed=3)
    opcheck(custom_ops.silu_mul_quant, out, gate_up, scale, qtype, dynamic)


@pytest.mark.parametrize("granularity,dynamic", [(0, True), (1, True), (0, False)])
def test_int8_ops(granularity, dynamic):
    x = randn(6, 40, dtype=torch.bfloat16)
    scale = torch.full({0: (), 1: (6, 1)}[granularity], 0.01)
    opcheck(custom_ops.int8_quantize, torch.empty(6, 40, dtype=torch.int8), x, scale,
            granularity, dynamic)  # fmt: skip
    m, n, k = 5, 20, 70
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w = kernels.prepack_int8_weight(torch.randint(-127, 128, (n, k), dtype=torch.int8))
    out = torch.empty(m, n, dtype=torch.bfloat16)
    bias = randn(n, dtype=torch.bfloat16)
    opcheck(custom_ops.int8_gemm, out, a, w.packed, w.colsum, torch.rand(m), torch.rand(n),
            bias, n, k)  # fmt: skip
