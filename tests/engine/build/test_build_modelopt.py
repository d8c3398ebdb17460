"""ModelOpt FP8 checkpoints out (--format modelopt) and in (with compressed-tensors and
vLLM "fp8" checkpoints): the export holds exactly the documented names, shapes and
dtypes, reloads to the rewards it was built to give, and hand-written checkpoints of
each documented format load and score."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from build_testing import CALIBRATION
from safetensors.torch import load_file, save_file

from engine import RewardEngine
from engine.build import BuildSettings, build_engine
from engine.build.modelopt import export_modelopt
from engine.checkpoint import CheckpointError
from engine.safetensors_io import SafetensorsReader

FP8 = torch.float8_e4m3fn
FP8_RTOL = 0.15  # as for native FP8 engines (test_build_native.py)
CONVERSATIONS = [
    [{"role": "user", "content": "Is the sky blue?"},
     {"role": "assistant", "content": "Yes, because of Rayleigh scattering. " * k}]
    for k in (1, 4)
]  # fmt: skip


def engine(path, **kw):
    return RewardEngine.from_pretrained(path, dtype="float32", num_kv_blocks=256, **kw)


def expected_tensors(cfg: dict, static: bool) -> dict[str, tuple[torch.dtype, tuple]]:
    """The documented ModelOpt layout (engine/build/modelopt.py, engine/prequantized.py)
    for a LlamaForSequenceClassification config, built independently of the exporter."""
    h, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    kv = cfg["num_key_value_heads"] * d
    bf = torch.bfloat16 if (cfg.get("dtype") or cfg.get("torch_dtype")) == "bfloat16" else torch.float32
    out = {"model.embed_tokens.weight": (bf, (cfg["vocab_size"], h)), "model.norm.weight": (bf, (h,)),
           "score.weight": (bf, (cfg.get("num_labels", 1), h))}  # fmt: skip
    shapes = {"self_attn.q_proj": (heads * d, h), "self_attn.k_proj": (kv, h),
              "self_attn.v_proj": (kv, h), "self_attn.o_proj": (h, heads * d),
              "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h), "mlp.down_proj": (h, inter)}  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (bf, (h,))
        out[p + "post_attention_layernorm.weight"] = (bf, (h,))
        for proj, shape in shapes.items():
            out[p + proj + ".weight"] = (FP8, shape)
            out[p + proj + ".weight_scale"] = (torch.float32, () if static else shape[:1])
            if static:
                out[p + proj + ".input_scale"] = (torch.float32, ())
    return out


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, calibration_file, tmp_path_factory):
    cache = {}

    def make(scales):
        if scales not in cache:
            out = tmp_path_factory.mktemp("modelopt") / "export"
            settings = BuildSettings(quantization="fp8", activation_scales=scales, format="modelopt",
                                     calibration=str(calibration_file), dtype="float32")  # fmt: skip
            cache[scales] = export_modelopt(tiny_checkpoint, out, settings, progress=False)
        return cache[scales]

    return make


@pytest.mark.parametrize("scales", ["static", "dynamic"])
def test_export_holds_exactly_the_documented_tensors_and_configs(exports, tiny_checkpoint, scales):
    path = exports(scales).path
    source_cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    reader = SafetensorsReader(path / "model.safetensors")
    want = expected_tensors(source_cfg, scales == "static")
    assert set(reader.keys()) == set(want)
    for name, (dtype, shape) in want.items():
        assert (reader.dtype(name), reader.shape(name)) == (dtype, shape), name
    algo = "FP8" if scales == "static" else "FP8_PER_CHANNEL_PER_TOKEN"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "modelopt"
    assert cfg["quantization_config"]["quant_algo"] == algo
    assert cfg["quantization_config"]["ignore"] == ["score"]
    assert {k: v for k, v in cfg.items() if k != "quantization_config"} == source_cfg
    hf = json.loads((path / "hf_quant_config.json").read_text())
    assert hf["quantization"] == {"quant_algo": algo, "kv_cache_quant_algo": None,
                                  "exclude_modules": ["score"]}  # fmt: skip
    assert (path / "tokenizer.json").is_file() and (path / "accuracy.json").is_file()
    assert not (path / "engine.json").exists()  # an HF checkpoint, not an engine directory


def test_static_export_has_one_scale_per_projection(exports):
    reader = SafetensorsReader(exports("static").path / "model.safetensors")
    p = "model.layers.0.self_attn."
    w = reader.read(p + "q_proj.weight").float() * reader.read(p + "q_proj.weight_scale")
    assert w.abs().max() > 0
    # the projection's largest |w| maps to E4M3's largest value
    assert reader.read(p + "q_proj.weight").float().abs().max() == 448.0
    assert torch.equal(reader.read(p + "q_proj.input_scale"), reader.read(p + "k_proj.input_scale"))


def test_dynamic_export_reloads_bit_equal_to_the_native_fp8_engine(exports, built):
    native = built(quantization="fp8", activation_scales="dynamic")
    assert engine(exports("dynamic").path).score(CONVERSATIONS) == engine(native.path).score(
        CONVERSATIONS)  # fmt: skip


def test_static_export_reloads_to_the_rewards_its_report_was_computed_on(exports, tiny_checkpoint):
    """The export's accuracy report scored the calibration set with the model the export
    holds; reloading it and scoring the same conversations gives the same figures."""
    result = exports("static")
    chat = engine(tiny_checkpoint).chat
    flat = []
    for r in CALIBRATION:
        flat += [r["messages"]] if "messages" in r else [
            chat.conversation(r["prompt"], x) for x in r["responses"]]  # fmt: skip
    ref = torch.tensor(engine(tiny_checkpoint).score(flat))
    got = torch.tensor(engine(result.path).score(flat))
    diff = ((ref - got).abs() / ref.double().std()).max()
    assert float(diff) == pytest.approx(result.report.max_abs_diff, rel=1e-3, abs=1e-5)
    assert (got - ref).abs().max() <= FP8_RTOL * ref.abs().max()


# ----------------------------------------------------------------------------- hand-written


def per_tensor_fp8(w: torch.Tensor):
    scale = w.float().abs().max() / 448.0
    return (w.float() / scale).clamp(-448, 448).to(FP8), scale


def hand_quantized(tiny_checkpoint, tmp_path, style: str):
    """The tiny checkpoint quantized by hand, projection by projection, in one of the
    documented formats (without this project's builder)."""
    path = tmp_path / style
    shutil.copytree(tiny_checkpoint, path)
    tensors = load_file(path / "model.safetensors")
    out = {}
    for name, t in tensors.items():
        is_linear = name.endswith("_proj.weight")
        if not is_linear:
            out[name] = t
            continue
        prefix = name.removesuffix(".weight")
        if style == "compressed-tensors":  # strategy channel: [out, 1] scales
            scale = t.float().abs().amax(dim=1, keepdim=True) / 448.0
            out[name] = (t.float() / scale).clamp(-448, 448).to(FP8)
            out[prefix + ".weight_scale"] = scale
        else:
            out[name], scale = per_tensor_fp8(t)
            out[prefix + ".weight_scale"] = scale.reshape(1 if style == "fp8" else ())
            out[prefix + ".input_scale"] = torch.tensor(0.05).reshape(1 if style == "fp8" else ())
    for i in range(2):
        attn = f"model.layers.{i}.self_attn"
        if style == "modelopt":
            out[f"{attn}.k_proj.k_scale"] = torch.tensor(0.01)
            out[f"{attn}.v_proj.v_scale"] = torch.tensor(0.01)
    save_file(out, path / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    if style == "modelopt":
        (path / "hf_quant_config.json").write_text(json.dumps({
            "producer": {"name": "modelopt", "version": "0.0"},
            "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                             "exclude_modules": ["score"]}}))  # fmt: skip
    elif style == "compressed-tensors":
        cfg["quantization_config"] = {"quant_method": "compressed-tensors", "config_groups": {
            "group_0": {"targets": ["Linear"],
                        "weights": {"num_bits": 8, "type": "float", "strategy": "channel"},
                        "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                              "dynamic": True}}}, "ignore": ["score"]}  # fmt: skip
    else:
        cfg["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "static"}
    (path / "config.json").write_text(json.dumps(cfg))
    return path, out


@pytest.mark.parametrize("style", ["modelopt", "compressed-tensors", "fp8"])
def test_hand_written_checkpoints_load_as_stored_and_score(tiny_checkpoint, tmp_path, style):
    path, tensors = hand_quantized(tiny_checkpoint, tmp_path, style)
    eng = engine(path)
    layer = eng.model.w.layers[1]
    q = tensors["model.layers.1.self_attn.q_proj.weight"]
    k = tensors["model.layers.1.self_attn.k_proj.weight"]
    assert layer.qkv.quantization == "fp8"
    assert torch.equal(layer.qkv.weight[:64].view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(layer.qkv.weight[64:96].view(torch.uint8), k.view(torch.uint8))
    k_scale = tensors["model.layers.1.self_attn.k_proj.weight_scale"].reshape(-1)
    assert torch.equal(layer.qkv.weight_scale[64:96], k_scale.expand(32))  # per channel, exact
    assert layer.qkv.is_static == (style != "compressed-tensors")
    if style == "modelopt":
        assert float(layer.k_scale) == pytest.approx(0.01)
    ref = torch.tensor(engine(tiny_checkpoint).score(CONVERSATIONS))
    got = torch.tensor(eng.score(CONVERSATIONS))
    assert (got - ref).abs().max() <= FP8_RTOL * ref.abs().max() + 1e-3


def test_a_pre_quantized_checkpoint_builds_nothing_and_says_why(tiny_checkpoint, tmp_path):
    path, _ = hand_quantized(tiny_checkpoint, tmp_path, "fp8")
    with pytest.raises(ValueError, match="already quantized"):
        build_engine(path, tmp_path / "e", BuildSettings(), progress=False)


@pytest.mark.parametrize("config, message", [
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "quant_algo 'NVFP4'.*not supported"),
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "block-wise FP8"),
    ({"quant_method": "awq"}, "quant_method 'awq' is not supported"),
    ({"quant_method": "compressed-tensors", "config_groups": {"g": {"weights": {
        "num_bits": 4, "type": "int", "strategy": "group"}}}}, "not FP8 per tensor or per channel"),
])  # fmt: skip
def test_unsupported_quantization_configs_are_named(tiny_checkpoint, tmp_path, config, message):
    path = tmp_path / "q"
    shutil.copytree(tiny_checkpoint, path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["quantization_config"] = config
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        engine(path)


def test_fp8_kv_export_names_its_scales_and_reloads_with_an_fp8_cache(tiny_checkpoint,
                                                                      calibration_file, tmp_path):  # fmt: skip
    settings = BuildSettings(quantization="fp8", kv_cache_dtype="fp8", format="modelopt",
                             calibration=str(calibration_file), dtype="float32")  # fmt: skip
    path = export_modelopt(tiny_checkpoint, tmp_path / "e", settings, progress=False).path
    reader = SafetensorsReader(path / "model.safetensors")
    for i in range(2):
        for name in (f"model.layers.{i}.self_attn.k_proj.k_scale",
                     f"model.layers.{i}.self_attn.v_proj.v_scale"):  # fmt: skip
            assert reader.shape(name) == () and reader.dtype(name) == torch.float32
    hf = json.loads((path / "hf_quant_config.json").read_text())
    assert hf["quantization"]["kv_cache_quant_algo"] == "FP8"
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["quantization_config"]["kv_cache_scheme"]["num_bits"] == 8
    eng = engine(path)
    assert eng.kv_cache.storage.dtype == FP8
    assert float(eng.model.w.layers[1].k_scale) == float(
        reader.read("model.layers.1.self_attn.k_proj.k_scale"))  # fmt: skip
