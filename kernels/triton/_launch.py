"""Kernels that compile for CUDA tensors and interpret for CPU tensors in one process.

`triton.jit` decides at decoration time, from TRITON_INTERPRET, whether a kernel is
compiled or interpreted, so a process that imported the kernels one way could never
run them the other way (GPU tests beside interpreter tests). `kernel` keeps the raw
function and builds both forms on first use; `launch` picks by the tensors' device.
"""

from __future__ import annotations

import os

import torch
import triton
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

INTERPRET_ENV = "TRITON_INTERPRET"


def interpreter_enabled() -> bool:
    """True when TRITON_INTERPRET asks for the interpreter (read on every call)."""
    return os.environ.get(INTERPRET_ENV, "0").lower() in ("1", "true", "on", "yes")


def unavailable_reason(device: torch.device) -> str | None:
    """None when Triton kernels can run on `device`, else why not."""
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        if interpreter_enabled():
            return None
        return (
            "Triton kernels run on CPU tensors only in Triton's interpreter; "
            f"set {INTERPRET_ENV}=1 (slow: meant for tests)"
        )
    return f"Triton kernels do not run on {device.type} tensors"


class Kernel:
    """A Triton kernel source with a compiled (CUDA) and an interpreted (CPU) form.

    `autotune` (optional) is a function applied to the compiled form only, e.g.
    `triton.autotune(configs=..., key=[...])`; the interpreter runs the first config.
    """

    def __init__(self, fn, autotune=None):
        self.fn = fn
        self.autotune = autotune
        self._compiled = None
        self._interpreted = None

    def on(self, device: torch.device):
        if device.type == "cpu":
            if self._interpreted is None:
                self._interpreted = InterpretedFunction(self.fn)
            return self._interpreted
        if self._compiled is None:
            compiled = JITFunction(self.fn)
            self._compiled = self.autotune(compiled) if self.autotune else compiled
        return self._compiled


def kernel(fn=None, *, autotune=None):
    """Decorator used in place of `@triton.jit` for the kernels of this package."""
    if fn is None:
        return lambda f: Kernel(f, autotune)
    return Kernel(fn, autotune)


def launch(k: Kernel, grid, device: torch.device, *args, **meta) -> None:
    """Run kernel `k` over `grid` for tensors on `device` (CPU needs TRITON_INTERPRET=1)."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise RuntimeError(reason)
    if device.type == "cuda":
        with torch.cuda.device(device):
            k.on(device)[grid](*args, **meta)
    else:
        k.on(device)[grid](*args, **meta)


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
