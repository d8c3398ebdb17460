"""RMSNorm and fused residual-add RMSNorm (Llama's input/post-attention norms).

Each op has a `reference` (plain PyTorch: the specification), a `cpu` wrapper around
kernels._C, and a `cuda` wrapper around kernels._C_cuda; `rms_norm` and
`fused_add_rms_norm` dispatch between them (see kernels/backend.py).
"""

from __future__ import annotations

import torch

from . import _native
from ._checks import check_dtype, check_same, rows_view
from .backend import Op, triton_impl

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


def _output(op, x, hidden, out):
    """out as [rows, hidden] (a new tensor when None), and the tensor to return."""
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return rows_view(op, "out", out, hidden, writable=True), out


def _rms_norm_native(module, x, weight, eps, out, **stream):
    x2 = rows_view("rms_norm", "x", x, weight.shape[0], writable=False)
    out2, out = _output("rms_norm", x, weight.shape[0], out)
    if x2.shape[0]:
        module.rms_norm(
            out2.data_ptr(), x2.data_ptr(), weight.data_ptr(), x2.shape[0], x2.shape[1],
            out2.stride(0), x2.stride(0), float(eps), _native.dtype_code(x), **stream,
        )  # fmt: skip
    return out


def _fused_add_rms_norm_native(module, x, residual, weight, eps, out, **stream):
    hidden = weight.shape[0]
    x2 = rows_view("fused_add_rms_norm", "x", x, hidden, writable=False)
    r2 = rows_view("fused_add_rms_norm", "residual", residual, hidden, writable=True)
    out2, out = _output("fused_add_rms_norm", x, hidden, out)
    if x2.shape[0]:
        module.fused_add_rms_norm(
            out2.data_ptr(), x2.data_ptr(), r2.data_ptr(), weight.data_ptr(), x2.shape[0],
            hidden, out2.stride(0), x2.stride(0), r2.stride(0), float(eps),
            _native.dtype_code(x), **stream,
        )  # fmt: skip
    return out


def rms_norm_cpu(x, weight, eps, out=None):
    module, threads = _native.cpu_module(), _native.num_threads()
    return _rms_norm_native(module, x, weight, eps, out, num_threads=threads)


def fused_add_rms_norm_cpu(x, residual, weight, eps, out=None):
    module, threads = _native.cpu_module(), _native.num_threads()
    return _fused_add_rms_norm_native(module, x, residual, weight, eps, out, num_threads=threads)


def rms_norm_cuda(x, weight, eps, out=None):
    with torch.cuda.device(x.device):
        stream = _native.cuda_stream(x)
        return _rms_norm_native(_native.cuda_module(), x, weight, eps, out, stream=stream)


def fused_add_rms_norm_cuda(x, residual, weight, eps, out=None):
    with torch.cuda.device(x.device):
        stream = _native.cuda_stream(x)
        return _fused_add_rms_norm_native(
            _native.cuda_module(), x, residual, weight, eps, out, stream=stream
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
    backend: str | None = None,
) -> torch.Tensor:
    """y = RMSNorm(x) * weight over the last dim (HF LlamaRMSNorm numerics).

    x [..., H] and weight [H] share a dtype (float32, bfloat16, float16) and device.
    Returns a new tensor shaped like x, or writes into `out` (which may be x itself)
    and returns it: reusing a buffer skips the page faults of a fresh allocation,
    which cost as much as the kernel at large sizes on CPU.
    """
    weight = _check_weight("rms_norm", x, weight)
    _check_out("rms_norm", x, out)
    return RMS_NORM.select(x.device, backend)(x, weight, eps, out)


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """residual <- x + residual (in place); returns RMSNorm(residual) * weight.

    x and residual have the same shape [..., H]; residual must be viewable as
    [rows, H] with a contiguous last dim (it is written in place). `out` works as in
    rms_norm; out=x gives the fully in-place form (x <- normed, residual <- sum).
    """
    weight = _check_weight("fused_add_rms_norm", x, weight)
    check_same("fused_add_rms_norm", "x", x, residual=residual)
    if residual.shape != x.shape:
        raise ValueError(
            f"fused_add_rms_norm: residual {tuple(residual.shape)} must match x {tuple(x.shape)}"
        )
    _check_out("fused_add_rms_norm", x, out)
    return FUSED_ADD_RMS_NORM.select(x.device, backend)(x, residual, weight, eps, out)
