"""RMSNorm and fused residual-add RMSNorm in Triton: one program per row.

Numerics follow HF LlamaRMSNorm (transformers/models/llama/modeling_llama.py) and the
reference in kernels/norm.py, step by step:
1. (fused) s = x + residual, rounded to the activation dtype; residual <- s;
2. variance = mean(s^2) in fp32;
3. normed = s * rsqrt(variance + eps) in fp32, rounded to the activation dtype;
4. y = normed * weight, rounded to the activation dtype;
5. (FP8 output) q = y / scale in fp32 (correctly rounded division), clamped to
   [-448, 448] and rounded to nearest even E4M3: fp8_quantize(y, scale) of kernels/fp8.py.
The products and sums of two 16-bit values are formed in fp32 and rounded once, which
equals torch's 16-bit arithmetic (fp32 has enough bits that double rounding is exact).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import launch, next_power_of_2

# A row of up to this many elements is held in registers by one program.
MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_kernel(
    out_ptr, x_ptr, res_ptr, w_ptr, scale_ptr,
    hidden, out_stride, x_stride, res_stride, eps,
    FUSED_ADD: tl.constexpr, FP8_OUT: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if FUSED_ADD:
        r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # step 1: rounded sum
        tl.store(res_ptr + row * res_stride + cols, x, mask=mask)
    h = x.to(tl.float32)
    variance = tl.sum(h * h, axis=0) / hidden  # step 2
    normed = (h * (1.0 / tl.sqrt(variance + eps))).to(x.dtype)  # step 3
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    y = (normed.to(tl.float32) * w.to(tl.float32)).to(x.dtype)  # step 4
    if FP8_OUT:  # step 5
        q = tl.math.div_rn(y.to(tl.float32), tl.load(scale_ptr))
        q = tl.where(q > 448.0, 448.0, tl.where(q < -448.0, -448.0, q))
        tl.store(out_ptr + row * out_stride + cols, q.to(tl.float8e4nv), mask=mask)
    else:
        tl.store(out_ptr + row * out_stride + cols, y, mask=mask)


def _rows(name: str, t: torch.Tensor, hidden: int, *, writable: bool) -> torch.Tensor:
    """t as [rows, hidden] with a unit stride along hidden (copied when read-only)."""
    try:
        rows = t.view(-1, hidden)
    except RuntimeError:
        rows = None
    if rows is None or (rows.stride(1) != 1 and rows.shape[0] > 0):
        if writable:
            raise ValueError(
                f"triton rms_norm: {name} is written in place and must be viewable as "
                f"[rows, {hidden}] with a contiguous last dim; got strides {t.stride()}"
            )
        rows = t.reshape(-1, hidden).contiguous()
    return rows


def _num_warps(block: int) -> int:
    return 4 if block <= 2048 else 8 if block <= 8192 else 16


def _run(x, residual, weight, eps, out, fp8_scale=None):
    hidden = weight.shape[0]
    if hidden > MAX_HIDDEN:
        raise ValueError(f"triton rms_norm: hidden {hidden} > {MAX_HIDDEN} is not supported")
    if fp8_scale is not None and x.device.type != "cuda":
        raise RuntimeError(
            "triton rms_norm: FP8 output runs on CUDA tensors only (Triton's interpreter "
            "rounds FP8 unreliably)"
        )
    if out is None:
        dtype = x.dtype if fp8_scale is None else torch.float8_e4m3fn
        out = torch.empty(x.shape, dtype=dtype, device=x.device)
    x2 = _rows("x", x, hidden, writable=False)
    out2 = _rows("out", out, hidden, writable=True)
    r2 = x2 if residual is None else _rows("residual", residual, hidden, writable=True)
    if x2.shape[0] == 0:
        return out
    block = next_power_of_2(hidden)
    launch(
        _rms_norm_kernel, (x2.shape[0],), x.device,
        out2, x2, r2, weight, weight if fp8_scale is None else fp8_scale,
        hidden, out2.stride(0), x2.stride(0), r2.stride(0), float(eps),
        FUSED_ADD=residual is not None, FP8_OUT=fp8_scale is not None, BLOCK=block,
        num_warps=_num_warps(block),
    )  # fmt: skip
    return out


def rms_norm_triton(x, weight, eps, out=None):
    """kernels.rms_norm's triton backend (arguments checked by kernels.norm)."""
    return _run(x, None, weight, eps, out)


def fused_add_rms_norm_triton(x, residual, weight, eps, out=None):
    """kernels.fused_add_rms_norm's triton backend; out may alias x (one program reads
    its whole row before writing it)."""
    return _run(x, residual, weight, eps, out)


def rms_norm_fp8_triton(x, weight, eps, scale):
    """kernels.rms_norm(..., fp8_scale=)'s triton backend: E4M3 output, static scale."""
    return _run(x, None, weight, eps, None, scale)


def fused_add_rms_norm_fp8_triton(x, residual, weight, eps, scale):
    """kernels.fused_add_rms_norm(..., fp8_scale=)'s triton backend (residual in place)."""
    return _run(x, residual, weight, eps, None, scale)
