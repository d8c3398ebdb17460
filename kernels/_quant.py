"""Shared by the ops whose output feeds a W8A8 GEMM (norms, silu_mul): the two code
types, their reference quantize, and the output/scale buffers of the native kernels.

A static scale is per tensor (0-dim fp32); without one, the scale is dynamic, one per
row ("token"), returned shaped [..., 1]. The codes are exactly fp8_quantize /
int8_quantize of the op's activation-dtype result with that scale.
"""

from __future__ import annotations

import torch

from .fp8 import FP8_DTYPE, fp8_quantize_reference
from .int8 import int8_quantize_reference

QUANT_DTYPES = (FP8_DTYPE, torch.int8)
QTYPE_CODES = {FP8_DTYPE: 0, torch.int8: 1}  # csrc/cpu/ops.h QuantType


def check_qdtype(op: str, qdtype: torch.dtype) -> None:
    if qdtype not in QUANT_DTYPES:
        raise ValueError(f"{op}: qdtype must be torch.float8_e4m3fn or torch.int8, got {qdtype}")


def as_static_scale(op: str, scale, device) -> torch.Tensor | None:
    if scale is None:
        return None
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
    if scale.numel() != 1:
        raise ValueError(
            f"{op}: a static scale is one value (per tensor), got {tuple(scale.shape)}"
        )
    return scale.reshape(()).contiguous()


def quantize_reference(y: torch.Tensor, qdtype: torch.dtype, scale: torch.Tensor | None):
    """(codes shaped like y, scale): per tensor with the given scale, else per row."""
    y2 = y.reshape(-1, y.shape[-1])
    granularity = "tensor" if scale is not None else "token"
    fn = fp8_quantize_reference if qdtype == FP8_DTYPE else int8_quantize_reference
    q, s = fn(y2, scale, granularity)
    return q.reshape(y.shape), s if scale is not None else s.reshape(*y.shape[:-1], 1)


def check_codes_out(op: str, out: torch.Tensor | None, shape, qdtype, device) -> None:
    """`out=` of a quantized-output op: the codes' shape and dtype, contiguous."""
    if out is None:
        return
    if (tuple(out.shape) != tuple(shape) or out.dtype != qdtype or out.device != device
            or not out.is_contiguous()):  # fmt: skip
        raise ValueError(
            f"{op}: out must be a contiguous {qdtype} tensor of shape {tuple(shape)} on "
            f"{device}; got {out.dtype} {tuple(out.shape)} on {out.device}"
        )


def codes_into(result: tuple[torch.Tensor, torch.Tensor], out: torch.Tensor | None):
    """(codes, scale) with the codes copied into `out` when given (implementations
    that cannot write there)."""
    if out is None or result[0] is out:
        return result
    out.copy_(result[0])
    return out, result[1]


def native_outputs(shape: tuple[int, ...], qdtype, scale, device, out=None):
    """(codes, codes as the kernels write them, scale buffer, dynamic) for a native call;
    the codes are `out` when given (checked by the caller)."""
    codes = torch.empty(shape, dtype=qdtype, device=device) if out is None else out
    raw = codes.view(torch.uint8) if qdtype == FP8_DTYPE else codes
    dynamic = scale is None
    if dynamic:
        rows = 1
        for d in shape[:-1]:
            rows *= d
        scale = torch.empty((rows,), dtype=torch.float32, device=device)
    return codes, raw.view(-1, shape[-1]), scale, dynamic


def shaped_scale(scale: torch.Tensor, dynamic: bool, shape: tuple[int, ...]) -> torch.Tensor:
    return scale.reshape(*shape[:-1], 1) if dynamic else scale
