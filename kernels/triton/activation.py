"""SwiGLU (silu(gate) * up) in Triton on the fused gate/up projection output.

Numerics follow HF LlamaMLP and the reference in kernels/activation.py:
1. gate, up = x[..., :I], x[..., I:];
2. a = gate * sigmoid(gate) in fp32, rounded to the activation dtype (F.silu);
3. y = a * up in fp32, rounded to the activation dtype;
4. (FP8 output) q = y / scale in fp32 (correctly rounded division), clamped to
   [-448, 448] and rounded to nearest even E4M3: fp8_quantize(y, scale) of kernels/fp8.py.
Grid: (rows, column blocks of BLOCK), so a long row is spread over many programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2

BLOCK = 1024


@triton.jit
def _silu_mul_kernel(out_ptr, x_ptr, scale_ptr, inter, out_stride, x_stride,
                     FP8_OUT: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    up = tl.load(x_ptr + row * x_stride + inter + cols, mask=mask, other=0.0)
    g = gate.to(tl.float32)
    a = (g / (1.0 + tl.exp(-g))).to(gate.dtype)  # step 2
    y = (a.to(tl.float32) * up.to(tl.float32)).to(gate.dtype)  # step 3
    if FP8_OUT:  # step 4
        q = tl.math.div_rn(y.to(tl.float32), tl.load(scale_ptr))
        q = tl.where(q > 448.0, 448.0, tl.where(q < -448.0, -448.0, q))
        tl.store(out_ptr + row * out_stride + cols, q.to(tl.float8e4nv), mask=mask)
    else:
        tl.store(out_ptr + row * out_stride + cols, y, mask=mask)


def silu_mul_triton(x: torch.Tensor, out: torch.Tensor | None = None, fp8_scale=None):
    """kernels.silu_mul's triton backend (arguments checked by kernels.activation)."""
    inter = x.shape[-1] // 2
    if fp8_scale is not None and x.device.type != "cuda":
        raise RuntimeError(
            "triton silu_mul: FP8 output runs on CUDA tensors only (Triton's interpreter "
            "rounds FP8 unreliably)"
        )
    if out is None:
        dtype = x.dtype if fp8_scale is None else torch.float8_e4m3fn
        out = torch.empty((*x.shape[:-1], inter), dtype=dtype, device=x.device)
    x2 = x.reshape(-1, 2 * inter)
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    try:
        out2 = out.view(-1, inter)
    except RuntimeError:
        out2 = None
    if out2 is None or (out2.stride(1) != 1 and out2.shape[0] > 0):
        raise ValueError("triton silu_mul: out must be viewable as [rows, I], last dim contiguous")
    if x2.shape[0] == 0:
        return out
    block = min(BLOCK, next_power_of_2(inter))
    grid = (x2.shape[0], -(-inter // block))
    launch(_silu_mul_kernel, grid, x.device, out2, x2, x2 if fp8_scale is None else fp8_scale,
           inter, out2.stride(0), x2.stride(0), FP8_OUT=fp8_scale is not None,
           BLOCK=block)  # fmt: skip
    return out


def silu_mul_fp8_triton(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """kernels.silu_mul(..., fp8_scale=)'s triton backend: E4M3 output, static scale."""
    return silu_mul_triton(x, None, scale)
