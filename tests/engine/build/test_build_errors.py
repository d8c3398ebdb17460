"""Bad input stops a build with an error that says what to fix, and nothing is written:
no target directory, no leftover temporary directory."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.build import BuildError, BuildSettings, build_engine
from engine.build.calibration import CalibrationError
from engine.build.writer import BuildTargetError


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path):
    """A writable copy of the tiny checkpoint, to damage."""
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, path)
    return path


def build(ckpt, out, **settings):
    return build_engine(ckpt, out, BuildSettings(**settings), progress=False)


def assert_nothing_written(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def rewrite(ckpt, change):
    tensors = load_file(ckpt / "model.safetensors")
    change(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def shard(ckpt):
    """Split model.safetensors into two shards with an index."""
    tensors = load_file(ckpt / "model.safetensors")
    names = sorted(tensors)
    parts = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
             "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, ckpt / file, metadata={"format": "pt"})
    (ckpt / "model.safetensors").unlink()
    weight_map = {k: f for f, keys in parts.items() for k in keys}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return weight_map


CASES = {
    "missing shard": (lambda c: (shard(c), (c / "model-00002-of-00002.safetensors").unlink()),
                      "shard model-00002-of-00002.safetensors named by"),
    "index names an absent tensor": (
        lambda c: (lambda m: (c / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {**m, "model.layers.0.mlp.extra.weight": next(iter(m.values()))}})))(
            shard(c)),
        "does not hold it"),
    "shape mismatch": (lambda c: rewrite(c, lambda t: t.update(
        {"model.layers.1.mlp.down_proj.weight": torch.zeros(64, 100)})),
        r"model.layers.1.mlp.down_proj.weight.*shape \[64, 100\], config.json implies \[64, 128\]"),
    "dtype mismatch": (lambda c: rewrite(c, lambda t: t.update(
        {"model.layers.0.input_layernorm.weight": torch.zeros(64, dtype=torch.int32)})),
        "has dtype torch.int32; expected bf16, fp16 or fp32"),
    "missing tensor": (lambda c: rewrite(c, lambda t: t.pop("model.layers.1.self_attn.o_proj.weight")),
                       "model.layers.1.self_attn.o_proj.weight' is missing"),
    "missing reward head": (lambda c: rewrite(c, lambda t: t.pop("score.weight")),
                            "no 'score.weight' reward head"),
    "unknown architecture": (lambda c: _edit_config(c, architectures=["LlamaForTokenClassification"]),
                             "has no known reward head"),
    "not llama": (lambda c: _edit_config(c, model_type="mistral"), "model_type 'mistral' is not"),
    "pre-quantized": (lambda c: _edit_config(c, quantization_config={"quant_method": "awq"}),
                      "already quantized"),
    "no config": (lambda c: (c / "config.json").unlink(), "config.json"),
}  # fmt: skip


def _edit_config(ckpt, **changes):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoints_are_refused_before_writing(checkpoint, tmp_path, case):
    damage, message = CASES[case]
    damage(checkpoint)
    out = tmp_path / "out" / "engine"
    out.parent.mkdir()
    with pytest.raises(BuildError, match=message):
        build(checkpoint, out)
    assert_nothing_written(out)


def test_calibration_lines_are_reported_by_number(tiny_checkpoint, tmp_path):
    bad = tmp_path / "cal.jsonl"
    bad.write_text('{"prompt": "hi", "response": "ok"}\nnot json\n\n'
                   '{"messages": [{"role": "robot", "content": "x"}]}\n{"prompt": 3}\n')  # fmt: skip
    out = tmp_path / "engine"
    with pytest.raises(CalibrationError) as err:
        build(tiny_checkpoint, out, quantization="int8", calibration=str(bad))
    message = str(err.value)
    assert "line 2: invalid JSON" in message and "line 4:" in message and "robot" in message
    assert "line 5:" in message and "line 1" not in message
    assert_nothing_written(out)
    with pytest.raises(CalibrationError, match="cannot read calibration file"):
        build(tiny_checkpoint, out, quantization="int8", calibration=str(tmp_path / "none.jsonl"))
    too_long = tmp_path / "long.jsonl"
    too_long.write_text(json.dumps({"prompt": "word " * 300, "response": "x"}) + "\n")
    with pytest.raises(CalibrationError, match="more than the maximum length of 64"):
        build(tiny_checkpoint, out, quantization="int8", calibration=str(too_long),
              max_model_len=64)  # fmt: skip


def test_calibration_needs_a_tokenizer(checkpoint, tmp_path):
    (checkpoint / "tokenizer.json").unlink()
    with pytest.raises(CalibrationError, match="needs the checkpoint's tokenizer"):
        build(checkpoint, tmp_path / "e", quantization="fp8")
    build(checkpoint, tmp_path / "e")  # an unquantized build needs no tokenizer


def test_targets_that_cannot_be_written(tiny_checkpoint, tmp_path):
    out = tmp_path / "engine"
    build(tiny_checkpoint, out)
    with pytest.raises(BuildTargetError, match="already exists.*--force"):
        build(tiny_checkpoint, out)
    build_engine(tiny_checkpoint, out, BuildSettings(max_model_len=77), force=True,
                 progress=False)  # fmt: skip
    assert json.loads((out / "engine.json").read_text())["model"]["max_model_len"] == 77
    with pytest.raises(BuildTargetError, match="does not exist"):
        build(tiny_checkpoint, tmp_path / "no" / "such" / "dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(BuildTargetError, match="not a directory"):
        build_engine(tiny_checkpoint, tmp_path / "file", force=True, progress=False)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(BuildTargetError, match="not writable"):
            build(tiny_checkpoint, locked / "engine")


def test_settings_are_checked(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="quantization must be one of none, fp8, int8"):
        BuildSettings(quantization="int4")
    with pytest.raises(ValueError, match="--activation-scales applies to"):
        BuildSettings(activation_scales="static")
    with pytest.raises(ValueError, match="--quantization fp8"):
        BuildSettings(format="modelopt")
    with pytest.raises(BuildError, match="--reward-token-ids applies to LlamaForCausalLM"):
        build(tiny_checkpoint, tmp_path / "e", reward_token_ids=(1,))
