"""Batch-invariant dense linear: y = x @ weight^T + bias, the same bits per row whatever
the batch.

A library GEMM (oneDNN, MKL, cuBLAS) picks its kernel, blocking and K split from the
problem shape, so row i of `x @ w.T` can change in its last bits when other rows are
added: measured here with torch 2.13 on CPU, a bf16 row differs between M = 1 and
M = 64..128, and an fp32 row between M = 1 and almost any M > 1. For a reward model
that means a conversation's reward moves with the batch around it. This op fixes the
summation order of every output element:

1. x [M, K], weight [N, K] and bias [N] share the activation dtype;
2. acc[m, n] = sum over k = 0, 1, .., K-1 (ascending) of x[m, k] * weight[n, k], one
   fp32 accumulator per element: products and sums in fp32;
3. y[m, n] = acc[m, n] + bias[n] in fp32, rounded once to the activation dtype.

Every backend keeps that chain per element independent of M, of the row's position
and of which rows share a tile or a thread (the guarantee: row i of the output is a
function of row i of x, weight and bias only). Backends differ in how a step of the
chain rounds:
- reference: multiply, then add (two roundings per k);
- cpu, scalar path: the same, so it is bit-equal to the reference for every dtype;
- cpu, avx2/avx512: a fused multiply-add per k; bf16/fp16 products are exact in fp32,
  so for those dtypes this is bit-equal to the reference too (fp32 differs by the
  accumulation rounding);
- cpu, avx512_bf16 (bf16): VDPBF16PS, k in pairs (2j, 2j+1) per step;
- cpu, amx_bf16 (bf16): the AMX tile unit, k in blocks of 32 per TDPBF16PS step;
- triton (CUDA tensors): one fixed tile configuration, k in blocks of 64 per tensor-core
  dot (kernels/triton/gemm.py; not yet run on a GPU).
The two bf16 dot-product paths round differently from the one-k-at-a-time chain (and
treat subnormals as zero), so across ISAs results agree within the fp32 accumulation
bound, not bit for bit; within one machine and ISA they are bit-exact for any batch.
"""

from __future__ import annotations

import torch

from . import custom_ops
from ._checks import check_dtype, check_same
from .backend import Op, triton_impl


def batch_invariant_linear_reference(x, weight, bias, out=None):
    """Steps 1-3 of the module docstring, one k at a time (slow: K tensor ops)."""
    acc = torch.zeros((x.shape[0], weight.shape[0]), dtype=torch.float32, device=x.device)
    xf, wf = x.float(), weight.float()
    for k in range(x.shape[1]):
        acc += xf[:, k : k + 1] * wf[:, k]
    if bias is not None:
        acc += bias.float()
    if out is None:
        return acc.to(x.dtype)
    return out.copy_(acc)


def batch_invariant_linear_cpu(x, weight, bias, out=None):
    """csrc/cpu/gemm.cpp through torch.ops.reward_engine.batch_invariant_linear."""
    if out is None:
        out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    if out.numel():
        custom_ops.batch_invariant_linear(out, x, weight, bias)
    return out


BATCH_INVARIANT_LINEAR = Op(
    "batch_invariant_linear",
    {
        "reference": batch_invariant_linear_reference,
        "cpu": batch_invariant_linear_cpu,
        "triton": triton_impl("gemm", "batch_invariant_linear_triton"),
    },
    gpu_order=("triton", "cuda"),  # no CUDA C++ kernel: Triton's fixed-tile GEMM
)


def batch_invariant_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y [M, N] = x [M, K] @ weight [N, K]^T (+ bias [N]) with a fixed summation order
    per element (module docstring): each row of y is the same bits in any batch.

    x may have any row stride (its last dim contiguous); weight is used as stored
    when its last dim is contiguous. out: a preallocated [M, N] tensor with a
    contiguous last dim (a step buffer), returned.
    """
    op = "batch_invariant_linear"
    check_dtype(op, "x", x)
    check_same(op, "x", x, weight=weight, **({} if bias is None else {"bias": bias}))
    if x.dim() != 2 or weight.dim() != 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{op}: expected x [M, K] and weight [N, K]; got {tuple(x.shape)}, "
            f"{tuple(weight.shape)}"
        )
    m, n = x.shape[0], weight.shape[0]
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"{op}: bias must be [{n}], got {tuple(bias.shape)}")
    if out is not None and (
        out.shape != (m, n) or out.dtype != x.dtype or (out.numel() and out.stride(1) != 1)
    ):
        raise ValueError(
            f"{op}: out must be a [{m}, {n}] {x.dtype} tensor with a contiguous last dim, "
            f"got {out.dtype} {tuple(out.shape)} strides {out.stride()}"
        )
    if x.shape[1] == 0:  # no products: the bias (or zeros), as torch does
        y = torch.zeros((m, n), dtype=x.dtype, device=x.device) if out is None else out.zero_()
        return y if bias is None else y.add_(bias)
    x = x if x.stride(1) == 1 or x.numel() == 0 else x.contiguous()
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    return BATCH_INVARIANT_LINEAR.select(x.device, backend)(x, weight, bias, out)
