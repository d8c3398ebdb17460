"""SwiGLU activation of Llama's MLP: silu(gate) * up on the fused gate/up projection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _native
from ._checks import check_dtype, check_same, rows_view
from .backend import Op, triton_impl


def silu_mul_reference(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """HF LlamaMLP: act_fn(gate_proj(x)) * up_proj(x), with x = cat(gate, up) on the last dim.

    1. gate, up = x[..., :I], x[..., I:];
    2. a = silu(gate) = gate * sigmoid(gate), rounded to x's dtype (F.silu);
    3. y = a * up, rounded to x's dtype.
    """
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up if out is None else torch.mul(F.silu(gate), up, out=out)


def silu_mul_cpu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up in fp32, rounded once (at most one rounding away from the reference)."""
    inter = x.shape[-1] // 2
    if out is None:
        out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    x2 = rows_view("silu_mul", "x", x, 2 * inter, writable=False)
    out2 = rows_view("silu_mul", "out", out, inter, writable=True)
    if x2.shape[0]:
        _native.cpu_module().silu_mul(
            out2.data_ptr(), x2.data_ptr(), x2.shape[0], inter, out2.stride(0), x2.stride(0),
            _native.dtype_code(x), _native.num_threads(),
        )  # fmt: skip
    return out


SILU_MUL = Op(
    "silu_mul",
    {
        "reference": silu_mul_reference,
        "cpu": silu_mul_cpu,
        "triton": triton_impl("activation", "silu_mul_triton"),
    },
)


def silu_mul(
    x: torch.Tensor, *, out: torch.Tensor | None = None, backend: str | None = None
) -> torch.Tensor:
    """y = silu(x[..., :I]) * x[..., I:] for x [..., 2I]; returns [..., I] in x's dtype,
    written into `out` when given (must not overlap x)."""
    check_dtype("silu_mul", "x", x)
    if x.dim() == 0 or x.shape[-1] == 0 or x.shape[-1] % 2:
        raise ValueError(f"silu_mul: last dim must be 2 * I > 0; got shape {tuple(x.shape)}")
    if out is not None:
        check_same("silu_mul", "x", x, out=out)
        if out.shape != (*x.shape[:-1], x.shape[-1] // 2):
            raise ValueError(
                f"silu_mul: out {tuple(out.shape)} must be x's shape with half the last dim"
            )
    return SILU_MUL.select(x.device, backend)(x, out)
