"""Backend dispatch: defaults by device, forcing by argument or environment variable,
clear errors for unavailable backends, logged fallbacks, and the ISA override."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

import kernels
from kernels import _native
from kernels import backend as dispatch
from kernels.activation import SILU_MUL, silu_mul_cpu, silu_mul_reference
from kernels.backend import ENV_VAR, BackendUnavailableError, Op
from kernels.norm import RMS_NORM, rms_norm_cpu, rms_norm_reference
from kernels.paged_attention import PAGED_PREFILL_ATTENTION

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def no_forced_backend(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def without_extension(monkeypatch):
    """Pretend kernels._C failed to import."""
    monkeypatch.setitem(_native._modules, "_C", None)
    monkeypatch.setitem(_native._errors, "_C", "ImportError: simulated")


def test_cpu_tensors_use_the_cpu_backend_when_built(cpu_module):
    assert RMS_NORM.select(CPU) is rms_norm_cpu
    assert SILU_MUL.select(CPU) is silu_mul_cpu
    assert kernels.available_backends()[:2] == ["reference", "cpu"]


def test_backend_argument_forces_a_backend(cpu_module):
    assert RMS_NORM.select(CPU, "reference") is rms_norm_reference
    assert RMS_NORM.select(CPU, "cpu") is rms_norm_cpu


def test_environment_variable_forces_a_backend(cpu_module, monkeypatch):
    monkeypatch.setenv(ENV_VAR, "reference")
    assert SILU_MUL.select(CPU) is silu_mul_reference
    # the argument still wins over the environment
    assert SILU_MUL.select(CPU, "cpu") is silu_mul_cpu


def test_forced_backend_that_cannot_run_raises_a_clear_error(monkeypatch):
    with pytest.raises(BackendUnavailableError, match="runs on cuda tensors, got cpu"):
        kernels.rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, backend="cuda")
    reference_only = Op("reference_only", {"reference": rms_norm_reference})
    with pytest.raises(BackendUnavailableError, match="has no reference_only kernel"):
        reference_only.select(CPU, "cuda")
    monkeypatch.setenv(ENV_VAR, "cuda")
    with pytest.raises(BackendUnavailableError, match=f"forced by {ENV_VAR}"):
        kernels.silu_mul(torch.ones(2, 4))


def test_unknown_backend_name_lists_the_choices():
    with pytest.raises(BackendUnavailableError, match="reference, cpu, cuda"):
        kernels.silu_mul(torch.ones(2, 4), backend="tpu")


def test_missing_extension_falls_back_to_reference_with_a_debug_line(without_extension, caplog):
    with caplog.at_level(logging.DEBUG, logger="kernels"):
        assert RMS_NORM.select(CPU) is rms_norm_reference
    assert any("falls back to reference" in r.message and "simulated" in r.message
               for r in caplog.records)  # fmt: skip
    x = torch.randn(3, 8)
    torch.testing.assert_close(kernels.rms_norm(x, torch.ones(8), 1e-5),
                               rms_norm_reference(x, torch.ones(8), 1e-5))  # fmt: skip


def test_forcing_cpu_without_the_extension_says_how_to_build_it(without_extension):
    with pytest.raises(BackendUnavailableError, match="pip install --no-build-isolation -e ."):
        kernels.rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, backend="cpu")


def test_first_choice_is_logged_once(cpu_module, caplog):
    from kernels.backend import Op

    op = Op("silu_mul", {"reference": silu_mul_reference, "cpu": silu_mul_cpu})
    with caplog.at_level(logging.INFO, logger="kernels"):
        op.select(CPU)
        op.select(CPU)
    lines = [r.message for r in caplog.records if "uses the cpu backend" in r.message]
    assert lines == ["silu_mul on cpu tensors uses the cpu backend"]


def test_isa_environment_variable(cpu_module, monkeypatch):
    best = cpu_module.best_isa()
    assert best in cpu_module.supported_isas() and "scalar" in cpu_module.supported_isas()
    monkeypatch.setenv("REWARD_ENGINE_CPU_ISA", "scalar")
    assert cpu_module.active_isa() == "scalar"
    monkeypatch.setenv("REWARD_ENGINE_CPU_ISA", "amx_bf16")  # never above what the CPU has
    assert cpu_module.active_isa() == best
    monkeypatch.setenv("REWARD_ENGINE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="REWARD_ENGINE_CPU_ISA='sse9'"):
        kernels.silu_mul(torch.ones(2, 4), backend="cpu")


@pytest.fixture
def both_gpu_backends_usable(monkeypatch):
    """Pretend kernels._C_cuda holds every op and compiled Triton can run."""
    monkeypatch.setattr(_native, "cuda_module", lambda: SimpleNamespace(op=None))
    monkeypatch.setattr(dispatch, "_triton_unavailable_reason", lambda device: None)


def test_cuda_tensors_try_the_ops_gpu_order(both_gpu_backends_usable, monkeypatch):
    cuda = torch.device("cuda")
    impls = {b: (lambda b=b: b) for b in dispatch.BACKENDS}
    assert Op("op", impls).select(cuda)() == "cuda"  # the default order: cuda, triton
    flipped = Op("op", impls, gpu_order=("triton", "cuda"))
    assert flipped.select(cuda)() == "triton"
    monkeypatch.setattr(dispatch, "_triton_unavailable_reason", lambda device: "not here")
    assert flipped.select(cuda)() == "cuda"  # the next one when the first cannot run
    monkeypatch.setattr(dispatch, "_triton_unavailable_reason", lambda device: None)
    assert Op("op", impls).select(cuda, "triton")() == "triton"  # forcing wins over the order


def test_attention_prefers_the_tensor_core_triton_kernel_on_gpus():
    assert PAGED_PREFILL_ATTENTION.gpu_order == ("triton", "cuda")
    assert RMS_NORM.gpu_order == ("cuda", "triton")


def test_a_gpu_order_must_name_both_gpu_backends():
    with pytest.raises(ValueError, match="gpu_order must order"):
        Op("op", {"reference": silu_mul_reference}, gpu_order=("cuda",))
