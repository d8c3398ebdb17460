"""bench/synthetic.py (the GPU run's end-to-end step) at a tiny shape on the CPU:
weights drawn in place in every format score through the real engine, and the report
carries the figures the GPU run needs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_synthetic", ROOT / "bench" / "synthetic.py")
synthetic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(synthetic)


@pytest.mark.parametrize("quantization", ["none", "fp8", "int8"])
def test_tiny_synthetic_engine_scores_every_workload(quantization):
    rows = synthetic.run("tiny", quantization, "cpu", ["rlhf-group", "mixed"], fraction=0.05)
    assert [r["workload"] for r in rows] == ["rlhf-group", "mixed"]
    for r in rows:
        assert r["rewards_finite"] and r["tok_s"] > 0 and r["linear_tflop_s"] > 0
        assert 0 < r["tokens_computed"] <= r["tokens"]
        assert r["pct_peak"] is None  # no peak is claimed for a CPU
        assert r["quantization"] == quantization
    prefix_shared = rows[0]
    assert prefix_shared["tokens_computed"] < prefix_shared["tokens"]  # the group's prompt once


def test_weights_take_the_layout_of_a_built_engine():
    cfg = synthetic.model_config("tiny")
    w = synthetic.synthetic_weights(cfg, "fp8", torch.bfloat16, "cpu")
    layer = w.layers[0]
    assert layer.qkv.weight.dtype == torch.float8_e4m3fn and layer.qkv.is_static
    assert layer.qkv.weight.shape == (cfg.q_size + 2 * cfg.kv_size, cfg.hidden_size)
    assert layer.gate_up.weight_scale.shape == (2 * cfg.intermediate_size,)
    assert w.head.shape == (1, cfg.hidden_size) and w.head.dtype == torch.bfloat16
    again = synthetic.synthetic_weights(cfg, "fp8", torch.bfloat16, "cpu")
    assert torch.equal(again.layers[1].down.weight.view(torch.uint8),
                       w.layers[1].down.weight.view(torch.uint8))  # fixed seed  # fmt: skip


def test_flops_and_peaks():
    cfg = synthetic.model_config("70b")
    assert synthetic.linear_flops_per_token(cfg) == pytest.approx(137e9, rel=0.01)
    assert synthetic.peak_tflops("NVIDIA H100 80GB HBM3", "fp8") == 1979.0
    assert synthetic.peak_tflops("NVIDIA H200", "none") == 989.0
    assert synthetic.peak_tflops("NVIDIA A100-SXM4-80GB", "fp8") is None


def test_render_gives_the_fp8_to_bf16_ratio():
    base = dict(shape="8b", device="GPU", dtype="bfloat16", linear_tflop_s=1.0, pct_peak=None,
                weights_gib=1.0, kv_cache_gib=1.0, peak_device_gib=None)  # fmt: skip
    rows = [dict(base, quantization="none", workload="mixed", tok_s=100.0),
            dict(base, quantization="fp8", workload="mixed", tok_s=180.0)]  # fmt: skip
    assert "8b mixed: FP8 1.80x bf16" in synthetic.render(rows)
