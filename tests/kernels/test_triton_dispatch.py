"""Dispatch of the triton backend: forcing it by argument or environment variable, the
interpreter switch on CPU tensors, clear errors when triton is missing, and that CPU
tensors never pick it by default. Runs without triton installed where it can."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from triton_testing import HAS_TRITON, requires_triton

import kernels
from kernels import _native, backend
from kernels.activation import SILU_MUL
from kernels.backend import ENV_VAR, BackendUnavailableError
from kernels.norm import FUSED_ADD_RMS_NORM, RMS_NORM
from kernels.paged_attention import PAGED_PREFILL_ATTENTION
from kernels.rope import ROPE, ROPE_AND_CACHE

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def without_triton(monkeypatch):
    """Pretend triton is not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a)
    )


@pytest.fixture
def interpreting(monkeypatch):
    """Skip unless this process runs Triton in interpreter mode (tests/conftest.py)."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from kernels.triton import _launch

    if not _launch.interpreting():
        pytest.skip("triton runs compiled in this process (TRITON_INTERPRET was not set)")


def test_every_op_has_a_triton_kernel():
    for op in (RMS_NORM, FUSED_ADD_RMS_NORM, ROPE, ROPE_AND_CACHE, SILU_MUL,
               PAGED_PREFILL_ATTENTION):  # fmt: skip
        assert "triton" in op.impls, op.name


@requires_triton
def test_cpu_tensors_need_the_interpreter(monkeypatch):
    from kernels.triton import _launch

    monkeypatch.setattr(_launch, "interpreting", lambda: False)
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET=1 before triton"):
        kernels.silu_mul(torch.ones(2, 4), backend="triton")
    monkeypatch.setattr(_launch, "interpreting", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert "need it unset" in _launch.unavailable_reason(torch.device("cuda"))


def test_backend_argument_and_environment_variable_force_triton(interpreting, monkeypatch):
    x = torch.randn(3, 8)
    expected = kernels.rms_norm(x, torch.ones(8), 1e-5, backend="reference")
    torch.testing.assert_close(kernels.rms_norm(x, torch.ones(8), 1e-5, backend="triton"),
                               expected)  # fmt: skip
    monkeypatch.setenv(ENV_VAR, "triton")
    assert RMS_NORM.select(CPU) is RMS_NORM.impls["triton"]
    torch.testing.assert_close(kernels.rms_norm(x, torch.ones(8), 1e-5), expected)


def test_cpu_tensors_never_default_to_triton(interpreting):
    assert RMS_NORM.select(CPU) is not RMS_NORM.impls["triton"]


def test_forcing_triton_without_triton_installed_says_so(without_triton):
    with pytest.raises(BackendUnavailableError, match="triton is not installed"):
        kernels.silu_mul(torch.ones(2, 4), backend="triton")
    assert "triton" not in kernels.available_backends()


@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_TRITON and torch.cuda.is_available()), reason="needs a GPU")
def test_cuda_tensors_follow_each_ops_gpu_order():
    cuda = torch.device("cuda")
    # attention: the tensor-core Triton kernel first (kernels/README.md, "Dispatch")
    assert PAGED_PREFILL_ATTENTION.select(cuda) is PAGED_PREFILL_ATTENTION.impls["triton"]
    # the other ops: cuda when kernels._C_cuda is built, else triton
    first = "cuda" if _native.cuda_module() is not None else "triton"
    assert RMS_NORM.select(cuda) is RMS_NORM.impls[first]
    assert backend.available_backends(RMS_NORM, cuda)[-1] == "triton"
