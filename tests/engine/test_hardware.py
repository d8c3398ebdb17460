"""The compute dtype "auto" follows the hardware: bf16 only where bf16 dot products exist."""

from __future__ import annotations

import logging

import pytest
import torch

from engine import RewardEngine, hardware
from engine.hardware import CpuInfo, cpu_bf16_support, parse_cpuinfo, resolve_dtype

AVX2_EPYC = frozenset("fpu sse2 avx avx2 fma f16c".split())
AVX512_ONLY = AVX2_EPYC | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
AVX512_BF16 = AVX512_ONLY | {"avx512_bf16"}
AMX = AVX512_ONLY | {"amx_tile", "amx_bf16", "amx_int8"}


@pytest.fixture
def cpu_flags(monkeypatch):
    """cpu_flags(flags): make engine.hardware see a CPU with these flags."""

    def use(flags):
        info = CpuInfo("test CPU", "x86_64", frozenset(flags))
        monkeypatch.setattr(hardware, "cpu_info", lambda: info)

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    return use


@pytest.mark.parametrize(
    "flags, expected",
    [
        (AVX2_EPYC, torch.float32),
        (AVX512_ONLY, torch.float32),
        (AVX512_BF16, torch.bfloat16),
        (AMX, torch.bfloat16),
        (frozenset(), torch.float32),
    ],
    ids=["avx2", "avx512", "avx512_bf16", "amx", "unknown"],
)
def test_auto_picks_bf16_only_with_bf16_dot_products(cpu_flags, flags, expected):
    cpu_flags(flags)
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype is expected
    assert ("natively" in why) == (expected is torch.bfloat16)


def test_a_onednn_isa_cap_below_bf16_counts_as_no_bf16(cpu_flags, monkeypatch):
    cpu_flags(AMX)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    native, why = cpu_bf16_support()
    assert not native and "ONEDNN_MAX_CPU_ISA=AVX2" in why
    assert resolve_dtype("AUTO")[0] is torch.float32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert resolve_dtype("auto")[0] is torch.bfloat16


def test_explicit_dtypes_are_kept_whatever_the_cpu(cpu_flags):
    cpu_flags(AVX2_EPYC)
    assert resolve_dtype("bfloat16") == (torch.bfloat16, "requested")
    assert resolve_dtype(torch.float16)[0] is torch.float16
    with pytest.raises(ValueError, match="or 'auto'"):
        resolve_dtype("int4")


def test_parse_cpuinfo_reads_the_first_processor():
    text = (
        "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx2 fma\n\n"
        "processor\t: 1\nmodel name\t: other\nflags\t\t: fpu\n"
    )
    info = parse_cpuinfo(text)
    assert info.model == "AMD EPYC 9B14"
    assert info.flags == {"fpu", "avx2", "fma"} and info.has("avx2", "fma")
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert "bf16" in arm.flags and not cpu_bf16_support(arm)[0]


def test_the_engine_default_follows_the_cpu_and_logs_why(cpu_flags, tiny_checkpoint, caplog):
    cpu_flags(AVX2_EPYC)
    with caplog.at_level(logging.INFO, logger="engine"):
        eng = RewardEngine.from_pretrained(tiny_checkpoint, num_kv_blocks=64)
    assert eng.model.dtype is torch.float32
    assert any("compute dtype float32" in r.message and "bf16 dot-product" in r.message
               for r in caplog.records)  # fmt: skip
    cpu_flags(AVX512_BF16)
    assert RewardEngine.from_pretrained(tiny_checkpoint, num_kv_blocks=64).model.dtype is (
        torch.bfloat16
    )
