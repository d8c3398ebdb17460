"""Argument checks shared by the op wrappers; each raises ValueError naming the op."""

from __future__ import annotations

import torch

from ._native import SUPPORTED_DTYPES


def check_dtype(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise ValueError(f"{op}: {name} has dtype {t.dtype}; supported: {names}")


def check_same(op: str, ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """Every tensor in `others` has ref's dtype and device."""
    for name, t in others.items():
        if t.dtype != ref.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def rows_view(op: str, name: str, t: torch.Tensor, width: int, *, writable: bool) -> torch.Tensor:
    """t as [rows, width] with unit stride along the last dim.

    A read-only input that cannot be viewed that way is copied; a tensor written in
    place must be viewable as-is.
    """
    if t.shape[-1] != width:
        raise ValueError(f"{op}: {name} has last dim {t.shape[-1]}, expected {width}")
    try:
        rows = t.view(-1, width)
    except RuntimeError:
        rows = None
    if rows is None or (rows.stride(-1) != 1 and rows.shape[0] > 0):
        if writable:
            raise ValueError(
                f"{op}: {name} (shape {tuple(t.shape)}, strides {t.stride()}) is updated in place "
                "and must be viewable as [rows, hidden] with a contiguous last dim"
            )
        rows = t.reshape(-1, width).contiguous()
    return rows
