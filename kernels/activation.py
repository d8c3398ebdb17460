"""SwiGLU activation of Llama's MLP: silu(gate) * up on the fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import custom_ops
from ._checks import check_dtype, check_same, rows_view
from ._quant import (
    QTYPE_CODES,
    as_static_scale,
    check_codes_out,
    check_qdtype,
    codes_into,
    native_outputs,
    quantize_reference,
    shaped_scale,
)
from .backend import Op, triton_impl
from .fp8 import FP8_DTYPE, fp8_quantize_reference, static_scale


def silu_mul_reference(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """HF LlamaMLP: act_fn(gate_proj(x)) * up_proj(x), with x = cat(gate, up) on the last dim.

    1. gate, up = x[..., :I], x[..., I:];
    2. a = silu(gate) = gate * sigmoid(gate), rounded to x's dtype (F.silu);
    3. y = a * up, rounded to x's dtype.
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up if out is None else torch.mul(F.silu(gate), up, out=out)


def silu_mul_native(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """cpu and cuda backends (torch.ops.reward_engine.silu_mul): silu(gate) * up in
    fp32, rounded once (at most one rounding away from the reference)."""
    inter = x.shape[-1] // 2
    if out is None:
        out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    x2 = rows_view("silu_mul", "x", x, 2 * inter, writable=False)
    out2 = rows_view("silu_mul", "out", out, inter, writable=True)
    if x2.shape[0]:
        custom_ops.silu_mul(out2, x2)
    return out


silu_mul_cpu = silu_mul_cuda = silu_mul_native


def silu_mul_fp8_reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp8_quantize(silu_mul_reference(x), scale)[0] with a static per-tensor scale."""
    return fp8_quantize_reference(silu_mul_reference(x), scale, "tensor")[0]


def silu_mul_fp8_native(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The fp32 product rounded to x's dtype, then to E4M3, in one pass over memory."""
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=FP8_DTYPE, device=x.device)
    x2 = rows_view("silu_mul", "x", x, 2 * inter, writable=False)
    if x2.shape[0]:
        custom_ops.silu_mul_fp8(out.view(-1, inter).view(torch.uint8), x2, scale)
    return out


SILU_MUL_FP8 = Op(
    "silu_mul_fp8",
    {
        "reference": silu_mul_fp8_reference,
        "cpu": silu_mul_fp8_native,
        "cuda": silu_mul_fp8_native,
        "triton": triton_impl("activation", "silu_mul_fp8_triton"),
    },
)


def silu_mul_quant_reference(x: torch.Tensor, qdtype, scale, out=None):
    """quantize(silu_mul_reference(x)) with the static per-tensor scale, else per row."""
    return codes_into(quantize_reference(silu_mul_reference(x), qdtype, scale), out)


def silu_mul_quant_native(x: torch.Tensor, qdtype, scale, out=None):
    inter = x.shape[-1] // 2
    shape = (*x.shape[:-1], inter)
    x2 = rows_view("silu_mul", "x", x, 2 * inter, writable=False)
    codes, raw, buf, dynamic = native_outputs(shape, qdtype, scale, x.device, out)
    if x2.shape[0]:
        custom_ops.silu_mul_quant(raw, x2, buf, QTYPE_CODES[qdtype], dynamic)
    return codes, shaped_scale(buf, dynamic, shape)


SILU_MUL_QUANT = Op(
    "silu_mul_quant", {"reference": silu_mul_quant_reference, "cpu": silu_mul_quant_native}
)


SILU_MUL = Op(
    "silu_mul",
    {
        "reference": silu_mul_reference,
        "cpu": silu_mul_cpu,
        "cuda": silu_mul_cuda,
        "triton": triton_impl("activation", "silu_mul_triton"),
    },
)


def silu_mul(
    x: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    fp8_scale: torch.Tensor | float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y = silu(x[..., :I]) * x[..., I:] for x [..., 2I]; returns [..., I] in x's dtype,
    written into `out` when given (must not overlap x). fp8_scale (per-tensor fp32)
    returns float8_e4m3fn: exactly fp8_quantize(y, fp8_scale)[0] (out= not allowed)."""
    check_dtype("silu_mul", "x", x)
    if x.dim() == 0 or x.shape[-1] == 0 or x.shape[-1] % 2:
        raise ValueError(f"silu_mul: last dim must be 2 * I > 0; got shape {tuple(x.shape)}")
    if out is not None:
        check_same("silu_mul", "x", x, out=out)
        if out.shape != (*x.shape[:-1], x.shape[-1] // 2):
            raise ValueError(
                f"silu_mul: out {tuple(out.shape)} must be x's shape with half the last dim"
            )
    if fp8_scale is not None:
        scale = static_scale("silu_mul", fp8_scale, x, out)
        return SILU_MUL_FP8.select(x.device, backend)(x, scale)
    return SILU_MUL.select(x.device, backend)(x, out)


def silu_mul_quant(
    x: torch.Tensor,
    qdtype: torch.dtype,
    scale: torch.Tensor | float | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """silu_mul(x) quantized for a W8A8 GEMM: (codes, scale), as kernels.rms_norm_quant
    (static per-tensor scale, or one per row when scale is None); the codes are written
    into `out` when given (contiguous, [..., I] of qdtype: a reused buffer)."""
    check_dtype("silu_mul", "x", x)
    if x.dim() == 0 or x.shape[-1] == 0 or x.shape[-1] % 2:
        raise ValueError(f"silu_mul: last dim must be 2 * I > 0; got shape {tuple(x.shape)}")
    check_qdtype("silu_mul_quant", qdtype)
    check_codes_out("silu_mul_quant", out, (*x.shape[:-1], x.shape[-1] // 2), qdtype, x.device)
    scale = as_static_scale("silu_mul_quant", scale, x.device)
    on_gpu_without_kernel = (
        backend is None and x.device.type != "cpu" and SILU_MUL_QUANT.choose(x.device)[0] == "reference"
    )
    if on_gpu_without_kernel:
        if qdtype == FP8_DTYPE and scale is not None:
            return codes_into((silu_mul(x, fp8_scale=scale), scale), out)
        from .norm import _quantize_apart

        return codes_into(_quantize_apart(silu_mul(x), qdtype, scale), out)
    return SILU_MUL_QUANT.select(x.device, backend)(x, qdtype, scale, out=out)
