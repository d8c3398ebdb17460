"""batch_invariant_linear in Triton (CUDA tensors; the interpreter for tests).

y = x @ weight^T + bias with one fixed tile configuration for every problem: no
autotuning, no split-K, no M-dependent choice of any kind (M is not even specialized
on: do_not_specialize), so the only thing M changes is how many row tiles run:
1. each program owns a BLOCK_M x BLOCK_N tile of y and walks K in BLOCK_K steps in
   ascending order, accumulating tl.dot products into one fp32 tile;
2. rows past M and columns past K load as zeros (they add nothing to a real row);
3. y = acc + bias[n] in fp32, rounded once to the activation dtype.
A tensor-core dot computes each output element from its own row of x and column of
weight, so a row's result does not depend on the rows that share its tile: the
result is batch-invariant. fp32 inputs use IEEE fp32 dot products (not TF32), bf16 and
fp16 the tensor cores with fp32 accumulation. The order inside one BLOCK_K step is the
hardware's, so results differ from the CPU backends' within the fp32 accumulation
bound. Not yet run on a GPU: tests/kernels/test_triton_gemm.py checks it in the
interpreter and compiles it for sm_80/sm_90 (the GPU-marked tests check the invariance
on hardware).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import interpreting, launch

# One configuration for every shape (batch invariance forbids choosing by M).
GPU_TILE = dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, num_warps=4, num_stages=3)
INTERPRETER_TILE = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=16)


@triton.jit(do_not_specialize=["M"])
def _batch_invariant_linear_kernel(
    out_ptr, x_ptr, w_ptr, bias_ptr, M, N, K, out_stride, x_stride, w_stride,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_n = tl.program_id(0)  # column tiles vary fastest: row tiles share each weight tile
    pid_m = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * x_stride + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * w_stride + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k[None, :] < K - k * BLOCK_K
        x = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & k_ok, other=0.0)
        w = tl.load(w_ptrs, mask=(offs_n[:, None] < N) & k_ok, other=0.0)
        if IEEE:
            acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
        else:
            acc = tl.dot(x, tl.trans(w), acc)
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    n_ok = offs_n < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * out_stride + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & n_ok[None, :])


def batch_invariant_linear_triton(x, weight, bias, out=None):
    """kernels.batch_invariant_linear's triton backend: x [M, K] and weight [N, K] with unit
    last strides, bias [N] or None, out [M, N] with a unit last stride or None."""
    m, k = x.shape
    n = weight.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    tile = INTERPRETER_TILE if interpreting() else GPU_TILE

    def grid(meta):
        return (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(m, meta["BLOCK_M"]))

    launch(
        _batch_invariant_linear_kernel, grid, x.device,
        out, x, weight, bias if bias is not None else x, m, n, k,
        out.stride(0), x.stride(0), weight.stride(0),
        HAS_BIAS=bias is not None, IEEE=x.dtype == torch.float32, **tile,
    )  # fmt: skip
    return out
