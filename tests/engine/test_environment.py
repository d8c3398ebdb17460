"""`reward-engine env`: the hardware found and every choice made on it, as text or JSON."""

from __future__ import annotations

import json

import pytest
import torch

from engine.cli import main
from engine.environment import collect, format_report
from engine.hardware import dtype_name, resolve_dtype
from kernels.backend import OPS


def test_the_report_names_the_isa_dtype_and_every_ops_backend():
    report = collect()
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["threads"] == torch.get_num_threads()
    auto, _ = resolve_dtype("auto", "cpu")
    assert report["dtype_auto"]["cpu"]["dtype"] == dtype_name(auto)
    assert set(report["kernel_backends"]) == set(OPS)
    for row in report["kernel_backends"].values():
        assert row["cpu"]["backend"] in ("cpu", "reference")
    ck = report["cpu_kernels"]
    if ck["built"]:
        import kernels._C as C

        assert ck["isa_level_chosen"] == C.active_isa()
        assert ck["isa_levels_found"] == list(C.supported_isas())
        assert ck["int8_gemm"] == C.int8_gemm_isa()
        assert ck["bf16_attention"] == "C++ kernel"


def test_the_report_follows_the_attention_and_int8_overrides(monkeypatch):
    if not collect()["cpu_kernels"]["built"]:
        pytest.skip("kernels._C is not built")
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "kernel")
    monkeypatch.setenv("REWARD_ENGINE_INT8_GEMM", "scalar")
    ck = collect()["cpu_kernels"]
    assert (ck["bf16_attention"], ck["int8_gemm"]) == ("C++ kernel", "scalar")
    monkeypatch.setenv("REWARD_ENGINE_CPU_ATTENTION", "sdpa")
    assert collect()["cpu_kernels"]["bf16_attention"] == "torch SDPA"
    assert "INT8 GEMM: scalar" in format_report(collect())


def test_forcing_a_lower_isa_and_a_backend_shows_in_the_report(monkeypatch):
    monkeypatch.setenv("REWARD_ENGINE_CPU_ISA", "avx2")
    monkeypatch.setenv("REWARD_ENGINE_KERNEL_BACKEND", "reference")
    report = collect()
    if report["cpu_kernels"]["built"] and "avx2" in report["cpu_kernels"]["isa_levels_found"]:
        assert report["cpu_kernels"]["isa_level_chosen"] == "avx2"
        assert report["cpu_kernels"]["forced_by"] == "avx2"
    row = report["kernel_backends"]["rms_norm"]["cpu"]
    assert row == {"backend": "reference", "why": "forced by REWARD_ENGINE_KERNEL_BACKEND"}
    assert "(REWARD_ENGINE_CPU_ISA=avx2)" in format_report(report) or not report[
        "cpu_kernels"]["built"]  # fmt: skip


def test_env_command_prints_text_and_json(capsys):
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    for heading in (
        "CPU ",
        "ISA flags",
        "C++ kernels",
        "torch ",
        "dtype auto   cpu:",
        "kernel backends per op:",
        "paged_prefill_attention",
        "CPU KV pool",
    ):
        assert heading in text, heading
    assert main(["env", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dtype_auto"]["cpu"]["dtype"] in ("bfloat16", "float32")
