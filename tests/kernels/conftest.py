"""Fixtures for the kernel tests: the CPU instruction-set paths and the native module."""

from __future__ import annotations

import pytest

from kernels import _native

ISAS = ["scalar", "avx2", "avx512", "avx512_bf16", "amx_bf16"]


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


INT8_ISAS = ["scalar", "avx2", "avx512_vnni", "amx"]


@pytest.fixture(params=INT8_ISAS)
def int8_isa(request, cpu_module, monkeypatch):
    """Runs the test once per int8_gemm kernel this CPU supports, forced by
    REWARD_ENGINE_INT8_GEMM (read by the C++ module on every call)."""
    monkeypatch.delenv("REWARD_ENGINE_CPU_ISA", raising=False)
    monkeypatch.delenv("REWARD_ENGINE_INT8_GEMM", raising=False)
    best = cpu_module.int8_gemm_isa()
    if INT8_ISAS.index(request.param) > INT8_ISAS.index(best):
        pytest.skip(f"this CPU does not support the {request.param} int8 kernel (best: {best})")
    monkeypatch.setenv("REWARD_ENGINE_INT8_GEMM", request.param)
    assert cpu_module.int8_gemm_isa() == request.param
    return request.param
