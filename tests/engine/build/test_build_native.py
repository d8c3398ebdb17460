"""reward-engine build, native format: an engine directory that loads as stored and
scores what the checkpoint scores; quantized builds within stated bounds, with an
accuracy report whose figures the test recomputes."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from build_testing import CALIBRATION

from engine import RewardEngine
from engine.build import BuildSettings, build_engine
from engine.build.report import pairwise_agreement, pearson, spearman
from engine.engine_dir import MANIFEST, WEIGHTS, EngineDirError
from engine.safetensors_io import SafetensorsReader, sha256_file

# The largest |reward difference| of a W8A8 engine from the unquantized one, relative
# to the largest |reward| of the batch (random-init rewards cluster near zero).
W8A8_RTOL = {"int8": 0.05, "fp8": 0.15}

CONVERSATIONS = [
    [{"role": "user", "content": "Tell me a joke."},
     {"role": "assistant", "content": "Why did the chicken cross the road? " * k}]
    for k in (1, 3, 9)
] + [[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]]  # fmt: skip


def engine(path, dtype="float32", **kw):
    return RewardEngine.from_pretrained(path, dtype=dtype, num_kv_blocks=256, **kw)


def calibration_conversations(chat):
    out = []
    for record in CALIBRATION:
        if "messages" in record:
            out.append([record["messages"]])
        else:
            out.append([chat.conversation(record["prompt"], r) for r in record["responses"]])
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_unquantized_engine_scores_bit_for_bit_as_the_checkpoint(tiny_checkpoint, tmp_path, dtype):
    result = build_engine(tiny_checkpoint, tmp_path / "e", BuildSettings(dtype=dtype),
                          progress=False)  # fmt: skip
    assert result.report is None
    want = engine(tiny_checkpoint, dtype).score(CONVERSATIONS)
    assert engine(result.path, dtype).score(CONVERSATIONS) == want


def test_engine_directory_says_what_it_is(built, tiny_checkpoint, caplog):
    result = built()
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["format"] == "reward-engine" and manifest["format_version"] == 1
    assert manifest["model"]["num_layers"] == 2 and manifest["model"]["hidden_size"] == 64
    assert manifest["weights"] == {**manifest["weights"], "dtype": "float32",
                                   "quantization": "none", "kv_cache_dtype": "auto"}  # fmt: skip
    assert set(manifest["versions"]) >= {"reward_engine", "torch", "safetensors"}
    for name in ("config.json", "tokenizer.json", WEIGHTS):
        assert manifest["files"][name]["sha256"] == sha256_file(result.path / name)
    with caplog.at_level(logging.INFO, logger="engine"):
        engine(result.path)
    line = next(r.message for r in caplog.records if r.message.startswith("engine "))
    for part in ("LlamaForSequenceClassification", "2 layers", "hidden 64", "quantization none",
                 "KV cache auto", f"built {manifest['built']}"):  # fmt: skip
        assert part in line, (part, line)


def test_tensors_are_fused_in_the_table_order(built, tiny_checkpoint):
    reader = SafetensorsReader(built().path / WEIGHTS)
    names = reader.keys()
    assert names[0] == "embed.weight" and names[-2:] == ["final_norm.weight", "head.weight"]
    assert reader.shape("layers.0.qkv.weight") == (64 + 2 * 32, 64)
    assert reader.shape("layers.1.gate_up.weight") == (256, 64)
    hf = SafetensorsReader(tiny_checkpoint / "model.safetensors")
    q, k = hf.read("model.layers.1.self_attn.q_proj.weight"), hf.read(
        "model.layers.1.self_attn.k_proj.weight")  # fmt: skip
    assert torch.equal(reader.read("layers.1.qkv.weight")[:64], q.float())
    assert torch.equal(reader.read("layers.1.qkv.weight")[64:96], k.float())


@pytest.mark.parametrize("scales", ["static", "dynamic"])
@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_w8a8_engines_stay_within_bounds_and_report_what_they_are(built, tiny_checkpoint,
                                                                  quantization, scales):  # fmt: skip
    result = built(quantization=quantization, activation_scales=scales)
    reader = SafetensorsReader(result.path / WEIGHTS)
    assert reader.dtype("layers.0.qkv.weight") == {"fp8": torch.float8_e4m3fn,
                                                   "int8": torch.int8}[quantization]  # fmt: skip
    assert reader.shape("layers.0.down.weight_scale") == (64,)  # one per output channel
    assert ("layers.0.down.input_scale" in reader) == (scales == "static")
    assert reader.dtype("head.weight") == torch.float32  # the head stays in the compute dtype
    want = torch.tensor(engine(tiny_checkpoint).score(CONVERSATIONS))
    got = torch.tensor(engine(result.path).score(CONVERSATIONS))
    bound = W8A8_RTOL[quantization] * want.abs().max()
    assert (got - want).abs().max() <= bound, (got, want)
    layer = engine(result.path).model.w.layers[0]
    assert layer.qkv.quantization == quantization and layer.qkv.is_static == (scales == "static")


@pytest.mark.parametrize("quantization", ["fp8", "int8"])
def test_accuracy_report_figures_recomputed(built, tiny_checkpoint, quantization):
    """The report compares the built model with the unquantized one on the calibration
    set; scoring the same conversations with the two engines gives the same figures."""
    result = built(quantization=quantization)
    report = json.loads((result.path / "accuracy.json").read_text())
    assert (result.path / "accuracy.md").read_text().startswith("# Accuracy")
    groups = calibration_conversations(engine(tiny_checkpoint).chat)
    flat = [c for g in groups for c in g]
    ref = torch.tensor(engine(tiny_checkpoint).score(flat)).reshape(-1, 1)
    got = torch.tensor(engine(result.path).score(flat)).reshape(-1, 1)
    sizes = [len(g) for g in groups]
    assert report["conversations"] == len(flat) == 8 and report["prompts"] == 3
    agree, pairs = pairwise_agreement(ref, got, sizes)
    assert report["pairs"] == pairs == 6 + 3
    assert report["pairwise_agreement"] == pytest.approx(agree / pairs)
    assert report["pearson"] == pytest.approx(pearson(ref, got), abs=1e-4)
    assert report["spearman"] == pytest.approx(spearman(ref, got), abs=1e-4)
    scale = float(ref.double().std())
    assert report["reward_scale"] == pytest.approx(scale, rel=1e-4)
    diff = (ref - got).abs().double() / scale
    assert report["max_abs_diff"] == pytest.approx(float(diff.max()), rel=1e-3, abs=1e-5)
    assert report["mean_abs_diff"] == pytest.approx(float(diff.mean()), rel=1e-3, abs=1e-5)
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["accuracy"] == report and manifest["calibration"]["conversations"] == 8


def test_default_calibration_is_the_built_in_set(tiny_checkpoint, tmp_path):
    result = build_engine(tiny_checkpoint, tmp_path / "e", BuildSettings(quantization="int8",
                          dtype="float32"), progress=False)  # fmt: skip
    assert result.report.source == "builtin" and result.report.conversations >= 64
    assert result.report.prompts >= 16 and result.report.pairs >= 100


def test_causal_lm_engine_keeps_only_the_reward_rows(make_tiny_checkpoint, tmp_path):
    ckpt = make_tiny_checkpoint(architecture="LlamaForCausalLM")
    result = build_engine(ckpt, tmp_path / "e", BuildSettings(dtype="float32",
                          reward_token_ids=(5, 9)), progress=False)  # fmt: skip
    assert SafetensorsReader(result.path / WEIGHTS).shape("head.weight") == (2, 64)
    want = engine(ckpt, reward_token_ids=[5, 9]).score(CONVERSATIONS)
    assert engine(result.path).score(CONVERSATIONS) == want
    with pytest.raises(EngineDirError, match="built for reward token ids"):
        engine(result.path, reward_token_ids=[0])


def test_max_model_len_is_a_build_setting(tiny_checkpoint, tmp_path):
    result = build_engine(tiny_checkpoint, tmp_path / "e", BuildSettings(max_model_len=100),
                          progress=False)  # fmt: skip
    assert engine(result.path).max_model_len == 100


def test_a_modified_file_is_named_and_no_verify_skips_the_check(built, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(built().path, copy)
    with open(copy / WEIGHTS, "r+b") as f:
        f.seek(-3, 2)
        byte = f.read(1)
        f.seek(-3, 2)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(EngineDirError, match="weights.safetensors does not match its sha256"):
        engine(copy)
    engine(copy, verify=False).score(CONVERSATIONS[:1])
    (copy / "tokenizer.json").unlink()
    with pytest.raises(EngineDirError, match="tokenizer.json is missing"):
        engine(copy)


@pytest.mark.parametrize("quantization", ["none", "fp8"])
def test_fp8_kv_cache_engines_carry_calibrated_scales(built, tiny_checkpoint, quantization):
    result = built(quantization=quantization, kv_cache_dtype="fp8")
    manifest = json.loads((result.path / MANIFEST).read_text())
    assert manifest["weights"]["kv_cache_dtype"] == "fp8"
    assert "FP8 KV cache" in result.report.quantization
    eng = engine(result.path)
    assert eng.kv_cache.storage.dtype == torch.float8_e4m3fn  # the engine's setting by default
    # the calibrated scale is the largest |rotated key| the unquantized model writes for
    # the calibration set, over E4M3's largest value
    chat = eng.chat
    flat = [c for g in calibration_conversations(chat) for c in g]
    dense = RewardEngine.from_pretrained(tiny_checkpoint, dtype="float32", num_kv_blocks=256,
                                         kv_cache_pretouch=True, enable_prefix_caching=False)  # fmt: skip
    dense.score(flat)
    for i in range(2):
        k_amax = dense.kv_cache.key_caches[i].abs().max()
        v_amax = dense.kv_cache.value_caches[i].abs().max()
        layer = eng.model.w.layers[i]
        assert float(layer.k_scale) == pytest.approx(float(k_amax) / 448, rel=1e-5)
        assert float(layer.v_scale) == pytest.approx(float(v_amax) / 448, rel=1e-5)
    want = torch.tensor(engine(tiny_checkpoint).score(CONVERSATIONS))
    got = torch.tensor(eng.score(CONVERSATIONS))
    bound = (W8A8_RTOL["fp8"] if quantization == "fp8" else 0.05) * want.abs().max()
    assert (got - want).abs().max() <= bound
    assert engine(result.path, kv_cache_dtype="auto").kv_cache.storage.dtype == torch.float32
