"""RMSNorm and fused residual-add RMSNorm (Llama's input/post-attention norms).

Each op has a `reference` (plain PyTorch: the specification), a `cpu` wrapper around
kernels._C, and a `cuda` wrapper around kernels._C_cuda; `rms_norm` and
`fused_add_rms_norm` dispatch between them (see kernels/backend.py).
"""

from __future__ import annotations

import torch

from . import _native
from ._checks import check_dtype, check_same, rows_view
from .backend import Op

# ----------------------------------------------------------------------------- reference


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
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
    return weight * normed


def fused_add_rms_norm_reference(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """The residual add of a Llama decoder layer followed by the next RMSNorm:

    1. s = x + residual in the activation dtype (rounded, as HF adds the residual);
    2. residual <- s, in place;
    3. y = rms_norm_reference(s, weight, eps) (variance of the rounded s in fp32).
    """
    residual.copy_(x + residual)
    return rms_norm_reference(residual, weight, eps)


# ----------------------------------------------------------------------------- cpu / cuda


def _rms_norm_native(module, x, weight, eps, **stream):
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x2 = rows_view("rms_norm", "x", x, weight.shape[0], writable=False)
    out2 = out.view(-1, weight.shape[0])
    if x2.shape[0]:
        module.rms_norm(
            out2.data_ptr(), x2.data_ptr(), weight.data_ptr(), x2.shape[0], x2.shape[1],
            out2.stride(0), x2.stride(0), float(eps), _native.dtype_code(x), **stream,
        )  # fmt: skip
    return out


def _fused_add_rms_norm_native(module, x, residual, weight, eps, **stream):
    hidden = weight.shape[0]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    x2 = rows_view("fused_add_rms_norm", "x", x, hidden, writable=False)
    r2 = rows_view("fused_add_rms_norm", "residual", residual, hidden, writable=True)
    out2 = out.view(-1, hidden)
    if x2.shape[0]:
        module.fused_add_rms_norm(
            out2.data_ptr(), x2.data_ptr(), r2.data_ptr(), weight.data_ptr(), x2.shape[0],
            hidden, out2.stride(0), x2.stride(0), r2.stride(0), float(eps),
            _native.dtype_code(x), **stream,
        )  # fmt: skip
    return out


def rms_norm_cpu(x, weight, eps):
    return _rms_norm_native(_native.cpu_module(), x, weight, eps, num_threads=_native.num_threads())


def fused_add_rms_norm_cpu(x, residual, weight, eps):
    return _fused_add_rms_norm_native(
        _native.cpu_module(), x, residual, weight, eps, num_threads=_native.num_threads()
    )


def rms_norm_cuda(x, weight, eps):
    with torch.cuda.device(x.device):
        return _rms_norm_native(
            _native.cuda_module(), x, weight, eps, stream=_native.cuda_stream(x)
        )


def fused_add_rms_norm_cuda(x, residual, weight, eps):
    with torch.cuda.device(x.device):
        return _fused_add_rms_norm_native(
            _native.cuda_module(), x, residual, weight, eps, stream=_native.cuda_stream(x)
        )


# ----------------------------------------------------------------------------- public ops

RMS_NORM = Op(
    "rms_norm", {"reference": rms_norm_reference, "cpu": rms_norm_cpu, "cuda": rms_norm_cuda}
)
FUSED_ADD_RMS_NORM = Op(
    "fused_add_rms_norm",
    {
        "reference": fused_add_rms_norm_reference,
        "cpu": fused_add_rms_norm_cpu,
        "cuda": fused_add_rms_norm_cuda,
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


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, *, backend: str | None = None
) -> torch.Tensor:
    """y = RMSNorm(x) * weight over the last dim (HF LlamaRMSNorm numerics).

    x [..., H] and weight [H] share a dtype (float32, bfloat16, float16) and device.
    Returns a new tensor shaped like x.
    """
    weight = _check_weight("rms_norm", x, weight)
    return RMS_NORM.select(x.device, backend)(x, weight, eps)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    backend: str | None = None,
) -> torch.Tensor:
    """residual <- x + residual (in place); returns RMSNorm(residual) * weight.

    x and residual have the same shape [..., H]; residual must be viewable as
    [rows, H] with a contiguous last dim (it is written in place).
    """
    weight = _check_weight("fused_add_rms_norm", x, weight)
    check_same("fused_add_rms_norm", "x", x, residual=residual)
    if residual.shape != x.shape:
        raise ValueError(
            f"fused_add_rms_norm: residual {tuple(residual.shape)} must match x {tuple(x.shape)}"
        )
    return FUSED_ADD_RMS_NORM.select(x.device, backend)(x, residual, weight, eps)
