"""Backend dispatch shared by every op.

Rules (also in kernels/README.md):
1. A backend named by the `backend=` argument wins, then the environment variable
   REWARD_ENGINE_KERNEL_BACKEND; a forced backend that cannot run the op on the
   given device raises BackendUnavailableError saying what to do.
2. Otherwise CPU tensors use `cpu` (kernels._C) and CUDA tensors use the op's GPU
   order: `cuda` (kernels._C_cuda, when built and holding the op), then `triton`
   (kernels/triton, when triton is installed), unless the op names another order
   (`gpu_order`, with its reason in kernels/README.md); anything else uses
   `reference`, and the fallback is logged at DEBUG with its reason. `triton` on CPU
   tensors runs Triton's interpreter and is only ever chosen by forcing it with
   TRITON_INTERPRET=1 set (tests).
3. The first time an (op, device type) pair picks a backend, an INFO line says which.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable

import torch

from . import _native

logger = logging.getLogger("kernels")

ENV_VAR = "REWARD_ENGINE_KERNEL_BACKEND"
BACKENDS = ("reference", "cpu", "cuda", "triton")
GPU_ORDER = ("cuda", "triton")  # the default order on CUDA tensors
_BUILD_HINT = (
    "build the extension with `pip install --no-build-isolation -e .` "
    "(or `python setup.py build_ext --inplace`) from the repository root"
)


# Every Op by name, in definition order (for `reward-engine env` and tests).
OPS: dict[str, Op] = {}


class BackendUnavailableError(RuntimeError):
    """A forced backend cannot run this op on this device."""


class Op:
    """One op's implementations, keyed by backend name.

    `native` is the symbol the compiled modules export for this op; the `cpu` and
    `cuda` implementations count as available only when that symbol exists.
    `gpu_order` is the order in which CUDA tensors try the GPU backends.
    """

    def __init__(
        self,
        name: str,
        impls: dict[str, Callable],
        native: str | None = None,
        gpu_order: tuple[str, ...] = GPU_ORDER,
    ):
        unknown = set(impls) - set(BACKENDS)
        if unknown or "reference" not in impls:
            raise ValueError(f"{name}: impls must include 'reference' and only {BACKENDS}")
        if sorted(gpu_order) != sorted(GPU_ORDER):
            raise ValueError(f"{name}: gpu_order must order {GPU_ORDER}, got {gpu_order}")
        self.name = name
        self.impls = impls
        self.native = native or name
        self.gpu_order = tuple(gpu_order)
        self._announced: set[tuple[str, str]] = set()
        OPS.setdefault(name, self)  # the first definition is the public op

    def unavailable_reason(self, backend: str, device: torch.device) -> str | None:
        """None when `backend` can run this op on `device`, else why not."""
        if backend not in BACKENDS:
            return f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
        if backend == "reference":
            return None
        if backend not in self.impls:
            return f"the {backend} backend has no {self.name} kernel"
        if backend == "triton":
            return _triton_unavailable_reason(device)
        if device.type != backend:
            return f"the {backend} backend runs on {backend} tensors, got {device.type} tensors"
        module_name = "_C" if backend == "cpu" else "_C_cuda"
        module = _native.cpu_module() if backend == "cpu" else _native.cuda_module()
        if module is None:
            return (
                f"kernels.{module_name} is not importable "
                f"({_native.import_error(module_name)}); {_BUILD_HINT}"
            )
        if not hasattr(module, self.native):
            return f"kernels.{module_name} has no {self.native!r}; rebuild it ({_BUILD_HINT})"
        return None

    def choose(self, device: torch.device, backend: str | None = None) -> tuple[str, str]:
        """(backend, why) under the rules in the module docstring; runs nothing, logs
        nothing. A forced backend that cannot run raises BackendUnavailableError."""
        forced, source = backend, "backend= argument"
        if forced is None and os.environ.get(ENV_VAR):
            forced, source = os.environ[ENV_VAR], ENV_VAR
        if forced is not None:
            reason = self.unavailable_reason(forced, device)
            if reason is not None:
                raise BackendUnavailableError(
                    f"{self.name}: backend {forced!r} was forced by {source} but cannot run: "
                    f"{reason}. Use another backend or unset {ENV_VAR}."
                )
            return forced, f"forced by {source}"
        candidates = {"cpu": ("cpu",), "cuda": self.gpu_order}.get(device.type, ())
        skipped = []
        for candidate in candidates:
            reason = self.unavailable_reason(candidate, device)
            if reason is None:
                return candidate, "first available" + (f" ({'; '.join(skipped)})" if skipped else "")
            skipped.append(f"{candidate}: {reason}")
        why = "; ".join(skipped) or f"no native backend for {device.type} tensors"
        return "reference", why

    def select(self, device: torch.device, backend: str | None = None) -> Callable:
        """The implementation to run on `device` (see choose()); the first choice per
        device type is logged at INFO, a fallback at DEBUG with its reason."""
        chosen, why = self.choose(device, backend)
        key = (device.type, chosen)
        # torch.compile traces through select(); logging there would break the graph
        if torch.compiler.is_compiling():
            return self.impls[chosen]
        if chosen == "reference" and device.type in ("cpu", "cuda") and not why.startswith("forced"):
            logger.debug("%s on %s falls back to reference: %s", self.name, device, why)
        if key not in self._announced:
            self._announced.add(key)
            logger.info("%s on %s tensors uses the %s backend", self.name, device.type, chosen)
        return self.impls[chosen]


def available_backends(op: Op | None = None, device: torch.device | str | None = None) -> list[str]:
    """Backends usable here: for one op and device when given, else any backend that loads."""
    if op is not None and device is not None:
        device = torch.device(device)
        return [b for b in BACKENDS if op.unavailable_reason(b, device) is None]
    names = ["reference"]
    if _native.cpu_module() is not None:
        names.append("cpu")
    if _native.cuda_module() is not None and torch.cuda.is_available():
        names.append("cuda")
    if _triton_unavailable_reason(torch.device("cuda")) is None:
        names.append("triton")
    return names


def _triton_unavailable_reason(device: torch.device) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install triton; GPU machines with PyTorch have it)"
    from .triton import _launch

    return _launch.unavailable_reason(device)


def triton_impl(module: str, name: str) -> Callable:
    """The triton backend's function `name` of kernels/triton/<module>.py, imported on
    first call so that `kernels` imports without triton installed."""

    def run(*args, **kwargs):
        fn = getattr(importlib.import_module(f"kernels.triton.{module}"), name)
        return fn(*args, **kwargs)

    run.__name__ = run.__qualname__ = f"{name}"
    return run
