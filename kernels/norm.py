"""RMSNorm and fused residual-add RMSNorm (Llama's input/post-attention norms).

Each op has a `reference` (plain PyTorch: the specification), a `cpu` wrapper around
kernels._C, and a `cuda` wrapper around kernels._C_cuda; `rms_norm` and
`fused_add_rms_norm` dispatch between them (see kernels/backend.py).
"""

from __future__ import annotations

import torch

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

# ----------------------------------------------------------------------------- reference


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, out=None) -> torch.Tensor:
    """HF LlamaRMSNorm.forward (transformers/models/llama/modeling_llama.py), step by step:

    1. h = x in fp32;
    2. variance = mean(h^2) over the last dim, in fp32;
    3. normed = h * rsqrt(variance + eps), in fp32;
    4. normed is cast back to x's dtype (rounded) BEFORE the weight multiply;
    5. y = weight * normed in x's dtype (rounded once more).
    """
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    normed = (h * torch.rsqrt(variance + eps)).to(x.dtype)
    return weight * normed if out is None else out.copy_(weight * normed)


def fused_add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, out=None
) -> torch.Tensor:
    """The residual add of a Llama decoder layer followed by the next RMSNorm:

    1. s = x + residual in the activation dtype (rounded, as HF adds the residual);
    2. residual <- s, in place;
    3. y = rms_norm_reference(s, weight, eps) (variance of the rounded s in fp32).
    """
    residual.copy_(x + residual)
    return rms_norm_reference(residual, weight, eps, out)


# ----------------------------------------------------------------------------- cpu / cuda


def _output(op, x, hidden, out, dtype=None):
    """out as [rows, hidden] (a new tensor when None), and the tensor to return."""
    if out is None:
        out = torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    return rows_view(op, "out", out, hidden, writable=True), out


def rms_norm_native(x, weight, eps, out=None):
    """cpu and cuda backends: torch.ops.reward_engine.rms_norm on x's device."""
    x2 = rows_view("rms_norm", "x", x, weight.shape[0], writable=False)
    out2, out = _output("rms_norm", x, weight.shape[0], out)
    if x2.shape[0]:
        custom_ops.rms_norm(out2, x2, weight, float(eps))
    return out


def fused_add_rms_norm_native(x, residual, weight, eps, out=None):
    hidden = weight.shape[0]
    x2 = rows_view("fused_add_rms_norm", "x", x, hidden, writable=False)
    r2 = rows_view("fused_add_rms_norm", "residual", residual, hidden, writable=True)
    out2, out = _output("fused_add_rms_norm", x, hidden, out)
    if x2.shape[0]:
        custom_ops.fused_add_rms_norm(out2, x2, r2, weight, float(eps))
    return out


rms_norm_cpu = rms_norm_cuda = rms_norm_native
fused_add_rms_norm_cpu = fused_add_rms_norm_cuda = fused_add_rms_norm_native


# ----------------------------------------------------------------------------- FP8 output


def rms_norm_fp8_reference(x, weight, eps, scale):
    """fp8_quantize(rms_norm_reference(x, weight, eps), scale): quantize the
    activation-dtype result with a static per-tensor scale."""
    return fp8_quantize_reference(rms_norm_reference(x, weight, eps), scale, "tensor")[0]


def fused_add_rms_norm_fp8_reference(x, residual, weight, eps, scale):
    y = fused_add_rms_norm_reference(x, residual, weight, eps)
    return fp8_quantize_reference(y, scale, "tensor")[0]


def rms_norm_fp8_native(x, weight, eps, scale):
    """One pass: the row kernel into a small scratch buffer, then E4M3 codes."""
    x2 = rows_view("rms_norm", "x", x, weight.shape[0], writable=False)
    out2, out = _output("rms_norm", x, weight.shape[0], None, FP8_DTYPE)
    if x2.shape[0]:
        custom_ops.rms_norm_fp8(out2.view(torch.uint8), x2, weight, float(eps), scale)
    return out


def fused_add_rms_norm_fp8_native(x, residual, weight, eps, scale):
    hidden = weight.shape[0]
    x2 = rows_view("fused_add_rms_norm", "x", x, hidden, writable=False)
    r2 = rows_view("fused_add_rms_norm", "residual", residual, hidden, writable=True)
    out2, out = _output("fused_add_rms_norm", x, hidden, None, FP8_DTYPE)
    if x2.shape[0]:
        custom_ops.fused_add_rms_norm_fp8(out2.view(torch.uint8), x2, r2, weight, float(eps), scale)
    return out


def rms_norm_quant_reference(x, weight, eps, qdtype, scale, out=None):
    """quantize(rms_norm_reference(x, weight, eps)): with the static per-tensor scale,
    else per row (fp8_quantize / int8_quantize numerics)."""
    return codes_into(quantize_reference(rms_norm_reference(x, weight, eps), qdtype, scale), out)


def fused_add_rms_norm_quant_reference(x, residual, weight, eps, qdtype, scale, out=None):
    y = fused_add_rms_norm_reference(x, residual, weight, eps)
    return codes_into(quantize_reference(y, qdtype, scale), out)


def rms_norm_quant_native(x, weight, eps, qdtype, scale, out=None):
    """One pass: rows into a small scratch buffer, then their codes (and row scales)."""
    hidden = weight.shape[0]
    x2 = rows_view("rms_norm", "x", x, hidden, writable=False)
    codes, raw, buf, dynamic = native_outputs(tuple(x.shape), qdtype, scale, x.device, out)
    if x2.shape[0]:
        custom_ops.rms_norm_quant(raw, x2, weight, float(eps), buf, QTYPE_CODES[qdtype], dynamic)
    return codes, shaped_scale(buf, dynamic, tuple(x.shape))


def fused_add_rms_norm_quant_native(x, residual, weight, eps, qdtype, scale, out=None):
    hidden = weight.shape[0]
    x2 = rows_view("fused_add_rms_norm", "x", x, hidden, writable=False)
    r2 = rows_view("fused_add_rms_norm", "residual", residual, hidden, writable=True)
    codes, raw, buf, dynamic = native_outputs(tuple(x.shape), qdtype, scale, x.device, out)
    if x2.shape[0]:
        custom_ops.fused_add_rms_norm_quant(
            raw, x2, r2, weight, float(eps), buf, QTYPE_CODES[qdtype], dynamic
        )
    return codes, shaped_scale(buf, dynamic, tuple(x.shape))


# The quantized-output norms have a cpu kernel; on GPUs a static FP8 scale takes the
# FP8-output kernels above (cuda, triton) and everything else runs the norm kernel,
# then the quantize kernel (see _quantized_norm).
RMS_NORM_QUANT = Op(
    "rms_norm_quant", {"reference": rms_norm_quant_reference, "cpu": rms_norm_quant_native}
)
FUSED_ADD_RMS_NORM_QUANT = Op(
    "fused_add_rms_norm_quant",
    {"reference": fused_add_rms_norm_quant_reference, "cpu": fused_add_rms_norm_quant_native},
)


RMS_NORM_FP8 = Op(
    "rms_norm_fp8",
    {
        "reference": rms_norm_fp8_reference,
        "cpu": rms_norm_fp8_native,
        "cuda": rms_norm_fp8_native,
        "triton": triton_impl("norm", "rms_norm_fp8_triton"),
    },
)
FUSED_ADD_RMS_NORM_FP8 = Op(
    "fused_add_rms_norm_fp8",
    {
        "reference": fused_add_rms_norm_fp8_reference,
        "cpu": fused_add_rms_norm_fp8_native,
        "cuda": fused_add_rms_norm_fp8_native,
        "triton": triton_impl("norm", "fused_add_rms_norm_fp8_triton"),
    },
)


# ----------------------------------------------------------------------------- public ops

RMS_NORM = Op(
    "rms_norm",
    {
        "reference": rms_norm_reference,
        "cpu": rms_norm_cpu,
        "cuda": rms_norm_cuda,
        "triton": triton_impl("norm", "rms_norm_triton"),
    },
)
FUSED_ADD_RMS_NORM = Op(
    "fused_add_rms_norm",
    {
        "reference": fused_add_rms_norm_reference,
        "cpu": fused_add_rms_norm_cpu,
        "cuda": fused_add_rms_norm_cuda,
        "triton": triton_impl("norm", "fused_add_rms_norm_triton"),
    },
)


def _check_weight(op: str, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    check_dtype(op, "x", x)
    check_same(op, "x", x, weight=weight)
    if weight.dim() != 1 or x.dim() == 0 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"{op}: weight must be [hidden] with hidden = x.shape[-1]; "
            f"got x {tuple(x.shape)}, weight {tuple(weight.shape)}"
        )
    return weight.contiguous()


def _check_out(op: str, x: torch.Tensor, out: torch.Tensor | None) -> None:
    if out is not None:
        check_same(op, "x", x, out=out)
        if out.shape != x.shape:
            raise ValueError(f"{op}: out {tuple(out.shape)} must match x {tuple(x.shape)}")


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    fp8_scale: torch.Tensor | float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """y = RMSNorm(x) * weight over the last dim (HF LlamaRMSNorm numerics).

    x [..., H] and weight [H] share a dtype (float32, bfloat16, float16) and device.
    Returns a new tensor shaped like x, or writes into `out` (which may be x itself)
    and returns it: reusing a buffer skips the page faults of a fresh allocation,
    which cost as much as the kernel at large sizes on CPU.

    fp8_scale (a per-tensor fp32 scale) returns float8_e4m3fn instead: exactly
    fp8_quantize(y, fp8_scale)[0] of the activation-dtype y (out= not allowed).
    """
    weight = _check_weight("rms_norm", x, weight)
    _check_out("rms_norm", x, out)
    if fp8_scale is not None:
        scale = static_scale("rms_norm", fp8_scale, x, out)
        return RMS_NORM_FP8.select(x.device, backend)(x, weight, eps, scale)
    return RMS_NORM.select(x.device, backend)(x, weight, eps, out)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    fp8_scale: torch.Tensor | float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """residual <- x + residual (in place); returns RMSNorm(residual) * weight.

    x and residual have the same shape [..., H]; residual must be viewable as
    [rows, H] with a contiguous last dim (it is written in place). `out` works as in
    rms_norm; out=x gives the fully in-place form (x <- normed, residual <- sum).
    fp8_scale works as in rms_norm (the residual is still updated in its dtype).
    """
    weight = _check_weight("fused_add_rms_norm", x, weight)
    check_same("fused_add_rms_norm", "x", x, residual=residual)
    if residual.shape != x.shape:
        raise ValueError(
            f"fused_add_rms_norm: residual {tuple(residual.shape)} must match x {tuple(x.shape)}"
        )
    _check_out("fused_add_rms_norm", x, out)
    if fp8_scale is not None:
        scale = static_scale("fused_add_rms_norm", fp8_scale, x, out)
        impl = FUSED_ADD_RMS_NORM_FP8.select(x.device, backend)
        return impl(x, residual, weight, eps, scale)
    return FUSED_ADD_RMS_NORM.select(x.device, backend)(x, residual, weight, eps, out)


def rms_norm_quant(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    qdtype: torch.dtype,
    scale: torch.Tensor | float | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rms_norm(x, weight, eps) quantized for a W8A8 GEMM: (codes, scale).

    qdtype: torch.float8_e4m3fn or torch.int8. With a static per-tensor `scale` the
    codes are fp8_quantize / int8_quantize of the activation-dtype result with it
    (the scale is returned as given); without one, one scale per row is computed
    (returned [..., 1]). Computed in one pass where a fused kernel exists. The codes
    are written into `out` when given (contiguous, x's shape, qdtype: a reused buffer).
    """
    weight = _check_weight("rms_norm", x, weight)
    check_qdtype("rms_norm_quant", qdtype)
    check_codes_out("rms_norm_quant", out, x.shape, qdtype, x.device)
    scale = as_static_scale("rms_norm_quant", scale, x.device)
    fused = _fused_choice(RMS_NORM_QUANT, x, qdtype, scale, backend)
    if fused == "fp8_static":
        return codes_into((rms_norm(x, weight, eps, fp8_scale=scale), scale), out)
    if fused == "separate":
        return codes_into(_quantize_apart(rms_norm(x, weight, eps), qdtype, scale), out)
    return RMS_NORM_QUANT.select(x.device, backend)(x, weight, eps, qdtype, scale, out=out)


def fused_add_rms_norm_quant(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    qdtype: torch.dtype,
    scale: torch.Tensor | float | None = None,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """residual <- x + residual (in place); returns rms_norm(residual) quantized as in
    rms_norm_quant: (codes, scale), the codes written into `out` when given."""
    weight = _check_weight("fused_add_rms_norm", x, weight)
    check_same("fused_add_rms_norm", "x", x, residual=residual)
    if residual.shape != x.shape:
        raise ValueError(
            f"fused_add_rms_norm: residual {tuple(residual.shape)} must match x {tuple(x.shape)}"
        )
    check_qdtype("fused_add_rms_norm_quant", qdtype)
    check_codes_out("fused_add_rms_norm_quant", out, x.shape, qdtype, x.device)
    scale = as_static_scale("fused_add_rms_norm_quant", scale, x.device)
    fused = _fused_choice(FUSED_ADD_RMS_NORM_QUANT, x, qdtype, scale, backend)
    if fused == "fp8_static":
        return codes_into((fused_add_rms_norm(x, residual, weight, eps, fp8_scale=scale), scale), out)
    if fused == "separate":
        y = fused_add_rms_norm(x, residual, weight, eps)
        return codes_into(_quantize_apart(y, qdtype, scale), out)
    return FUSED_ADD_RMS_NORM_QUANT.select(x.device, backend)(
        x, residual, weight, eps, qdtype, scale, out=out
    )


def _fused_choice(op: Op, x, qdtype, scale, backend) -> str | None:
    """None to run `op` as dispatch picks; on devices where it has no fused kernel,
    "fp8_static" (the FP8-output kernels) or "separate" (norm, then quantize)."""
    if backend is not None or x.device.type == "cpu" or op.choose(x.device)[0] != "reference":
        return None
    return "fp8_static" if qdtype == FP8_DTYPE and scale is not None else "separate"


def _quantize_apart(y: torch.Tensor, qdtype, scale):
    from .fp8 import fp8_quantize
    from .int8 import int8_quantize

    if qdtype == FP8_DTYPE:
        return fp8_quantize(y, scale, "tensor" if scale is not None else "token")
    return int8_quantize(y, scale, "tensor" if scale is not None else "token")
