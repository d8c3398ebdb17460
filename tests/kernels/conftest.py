"""Fixtures for the kernel tests: the CPU instruction-set paths and the native module."""

from __future__ import annotations

import pytest

from kernels import _native

ISAS = ["scalar", "avx2", "avx512", "avx512_bf16"]


@pytest.fixture
def cpu_module():
    """kernels._C, or skip (with the import error) when the extension is not built."""
    module = _native.cpu_module()
    if module is None:
        pytest.skip(f"kernels._C is not built: {_native.import_error('_C')}")
    return module


@pytest.fixture(params=ISAS)
def isa(request, cpu_module, monkeypatch):
    """Runs the test once per instruction-set path this CPU supports, forced by
    REWARD_ENGINE_CPU_ISA (read by the C++ module on every call)."""
    if request.param not in cpu_module.supported_isas():
        pytest.skip(f"this CPU does not support {request.param}")
    monkeypatch.setenv("REWARD_ENGINE_CPU_ISA", request.param)
    assert cpu_module.active_isa() == request.param
    return request.param
