"""Guarded import of the compiled modules and tensor -> raw-argument marshalling.

`kernels._C` (C++ CPU kernels) and `kernels._C_cuda` (CUDA kernels) are built by
setup.py. Either may be missing (not built yet, no CUDA toolkit): the package then
runs on the `reference` backend, and `import_error(...)` says why for error messages.
The modules take raw pointers, element strides, and a dtype code, never tensors.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

# Must match csrc/cpu/dtype.h DTypeCode.
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
SUPPORTED_DTYPES = tuple(DTYPE_CODES)

_modules: dict[str, ModuleType | None] = {}
_errors: dict[str, str] = {}


def _load(name: str) -> ModuleType | None:
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f"kernels.{name}")
        except ImportError as exc:
            _modules[name] = None
            _errors[name] = f"{type(exc).__name__}: {exc}"
    return _modules[name]


# "pool" keeps the C++ kernels on their own thread pool instead of torch's OpenMP team.
THREADING_ENV = "REWARD_ENGINE_CPU_THREADING"


def cpu_module() -> ModuleType | None:
    """kernels._C, or None when it is not built (see import_error("_C")).

    On first load its parallel loops move onto torch's OpenMP team (see
    csrc/cpu/thread_pool.h), unless REWARD_ENGINE_CPU_THREADING=pool.
    """
    if "_C" in _modules:
        return _modules["_C"]
    choice = os.environ.get(THREADING_ENV, "openmp")
    if choice not in ("openmp", "pool"):
        raise ValueError(f"{THREADING_ENV}={choice!r}: expected 'openmp' or 'pool'")
    module = _load("_C")
    if module is not None and choice == "openmp":
        module.use_process_openmp()
    return module


def cuda_module() -> ModuleType | None:
    """kernels._C_cuda, or None when it is not built (see import_error("_C_cuda"))."""
    return _load("_C_cuda")


def import_error(name: str) -> str:
    _load(name)
    return _errors.get(name, "")


def dtype_code(t: torch.Tensor) -> int:
    return DTYPE_CODES[t.dtype]


def num_threads() -> int:
    """Threads the C++ kernels may use: torch's setting, so the two never oversubscribe."""
    return torch.get_num_threads()


def cuda_stream(t: torch.Tensor) -> int:
    """The current CUDA stream of t's device, as the integer handle the kernels take."""
    return torch.cuda.current_stream(t.device).cuda_stream
