"""Where the Triton kernels can run in this process, and the launch helper.

Triton fixes its mode once per process, when `triton` is first imported: with
TRITON_INTERPRET=1 every `@triton.jit` function, triton.language's own (tl.sum,
tl.max, ...) included, becomes an interpreted function that runs on CPU tensors with
numpy; without it they compile for the GPU. The two never mix in one process, so:
- CPU tensors need the interpreter mode (TRITON_INTERPRET=1 set before triton is
  first imported; the test suite's conftest does that on machines without a GPU);
- CUDA tensors need the compiled mode.
"""

from __future__ import annotations

import os
import sys

import torch

INTERPRET_ENV = "TRITON_INTERPRET"


def _env_interpret() -> bool:
    return os.environ.get(INTERPRET_ENV, "0").lower() in ("1", "true", "on", "yes")


def interpreting() -> bool:
    """Whether Triton runs (or, when not imported yet, will run) in interpreter mode."""
    if "triton.language" not in sys.modules:
        return _env_interpret()
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(sys.modules["triton.language"].sum, InterpretedFunction)


def unavailable_reason(device: torch.device) -> str | None:
    """None when the Triton kernels can run on `device` in this process, else why not."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available"
        if interpreting():
            return (
                f"triton was imported with {INTERPRET_ENV}=1 (interpreter mode) in this process; "
                "compiled kernels for CUDA tensors need it unset before triton is first imported"
            )
        return None
    if device.type == "cpu":
        if interpreting():
            return None
        how = "was imported without it" if "triton.language" in sys.modules else "is not set"
        return (
            f"Triton kernels run on CPU tensors only in Triton's interpreter (slow, for tests): "
            f"set {INTERPRET_ENV}=1 before triton is first imported ({INTERPRET_ENV} {how})"
        )
    return f"Triton kernels do not run on {device.type} tensors"


def launch(kernel, grid, device: torch.device, *args, **meta) -> None:
    """kernel[grid](*args, **meta) on `device`, or RuntimeError saying why it cannot run."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(reason)
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](*args, **meta)
    else:
        kernel[grid](*args, **meta)


def next_power_of_2(n: int) -> int:
    n = max(int(n), 1)
    return 1 << (n - 1).bit_length()
