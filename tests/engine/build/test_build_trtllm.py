"""TensorRT-LLM checkpoints (--format trtllm): every rank file holds exactly the tensors
of the format's table (engine/trtllm_checkpoint.py TENSORS) with the layout TensorRT-LLM
gives them, and this project reads the checkpoint back (ranks merged) to the rewards of
the source: the same weights bit for bit unquantized, the same FP8 model quantized.

Tolerance: the reloaded weights are the source's own tensors, so rewards agree to fp32
rounding of the same kernels (ATOL), in fp32 and bf16 alike."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import kernels
from engine import RewardEngine
from engine.build import BuildSettings
from engine.build.trtllm import export_trtllm, trtllm_build_command
from engine.checkpoint import LayerWeights, ModelWeights, load_weights
from engine.cli import main
from engine.config import ModelConfig
from engine.linear import QuantizedLinear
from engine.llm_engine import RewardEngine as Engine
from engine.model import LlamaRewardModel
from engine.safetensors_io import SafetensorsReader
from engine.trtllm_checkpoint import TENSORS, Quantization, load_trtllm, tensor_plan

ATOL = 1e-6
FP8 = torch.float8_e4m3fn
CONVERSATIONS = [
    [{"role": "user", "content": "Is the sky blue?"},
     {"role": "assistant", "content": "Yes, because of Rayleigh scattering. " * k}]
    for k in (1, 4)
]  # fmt: skip


def engine(path, dtype="float32", **kw):
    return RewardEngine.from_pretrained(path, dtype=dtype, num_kv_blocks=256, **kw)


@pytest.fixture(scope="module")
def export(tiny_checkpoint, calibration_file, tmp_path_factory):
    """export(tp, **settings) -> BuildResult of tiny_checkpoint (cached)."""
    cache = {}

    def make(tp, **settings):
        key = (tp, repr(sorted(settings.items())))
        if key not in cache:
            settings = {"calibration": str(calibration_file), "dtype": "float32", **settings}
            out = tmp_path_factory.mktemp("trtllm") / "ckpt"
            cache[key] = export_trtllm(tiny_checkpoint, out, BuildSettings(
                format="trtllm", tensor_parallel_size=tp, **settings), progress=False)  # fmt: skip
        return cache[key]

    return make


def hf_tensors(checkpoint) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint / "model.safetensors"))


# ----------------------------------------------------------------------------- the format


def test_every_row_of_the_table_names_its_tensorrt_llm_source():
    assert len({t.name for t in TENSORS}) == len(TENSORS)
    for t in TENSORS:
        assert "tensorrt_llm/" in t.source, t.name


@pytest.mark.parametrize("tp,settings", [
    (1, {}), (2, {}), (2, {"quantization": "fp8", "kv_cache_dtype": "fp8"}),
])  # fmt: skip
def test_rank_files_hold_exactly_the_tensors_of_the_table(export, tp, settings):
    path = export(tp, **settings).path
    cfg = json.loads((path / "config.json").read_text())
    quant = Quantization.from_json(cfg["quantization"])
    plan = tensor_plan(load_trtllm(path, torch.float32)[0].cfg, tp, torch.float32, quant)
    assert sorted(p.name for p in path.glob("rank*.safetensors")) == [
        f"rank{r}.safetensors" for r in range(tp)]  # fmt: skip
    for r in range(tp):
        reader = SafetensorsReader(path / f"rank{r}.safetensors")
        assert reader.keys() == [name for name, _, _ in plan]  # exactly these, in table order
        for name, dtype, shape in plan:
            assert (reader.dtype(name), reader.shape(name)) == (dtype, shape), name


def test_rank_shapes_are_tensorrt_llms_for_gqa_over_two_ranks(export):
    """tiny: hidden 64, 4 query heads and 2 KV heads of 16, intermediate 128, vocab
    128256; per rank of 2: 2 q heads + 1 KV head; FP8 linears with per-tensor scales."""
    reader = SafetensorsReader(export(2, quantization="fp8", kv_cache_dtype="fp8").path /
                               "rank1.safetensors")  # fmt: skip
    p = "transformer.layers.1."
    want = {
        "transformer.vocab_embedding.weight": (torch.float32, (128256, 64)),
        p + "attention.qkv.weight": (FP8, (32 + 16 + 16, 64)),
        p + "attention.qkv.weights_scaling_factor": (torch.float32, (1,)),
        p + "attention.qkv.activation_scaling_factor": (torch.float32, (1,)),
        p + "attention.kv_cache_scaling_factor": (torch.float32, (1,)),
        p + "attention.dense.weight": (FP8, (64, 32)),
        p + "mlp.fc.weight": (FP8, (64, 64)),
        p + "mlp.gate.weight": (FP8, (64, 64)),
        p + "mlp.proj.weight": (FP8, (64, 64)),
        p + "post_layernorm.weight": (torch.float32, (64,)),
        "transformer.ln_f.weight": (torch.float32, (64,)),
        "lm_head.weight": (torch.float32, (128256 // 2, 64)),
    }
    for name, (dtype, shape) in want.items():
        assert (reader.dtype(name), reader.shape(name)) == (dtype, shape), name


def test_config_json_is_a_tensorrt_llm_llama_config(export, tiny_checkpoint):
    hf = json.loads((tiny_checkpoint / "config.json").read_text())
    cfg = json.loads((export(2, quantization="fp8", kv_cache_dtype="fp8").path /
                      "config.json").read_text())  # fmt: skip
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["dtype"] == "float32"
    assert cfg["mapping"] == {"world_size": 2, "tp_size": 2, "pp_size": 1}
    assert cfg["quantization"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8",
                                   "exclude_modules": ["lm_head"]}  # fmt: skip
    source = ModelConfig.from_pretrained(tiny_checkpoint)  # rope_theta or rope_parameters
    assert cfg["rotary_base"] == source.rope_theta == 500000.0
    assert cfg["rotary_scaling"]["factor"] == source.rope_scaling["factor"] == 8.0
    assert cfg["rotary_scaling"]["type"] == "llama3"
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_size"]) == (4, 2, 16)
    assert (cfg["vocab_size"], cfg["norm_epsilon"]) == (hf["vocab_size"], hf["rms_norm_eps"])
    plain = json.loads((export(1).path / "config.json").read_text())
    assert plain["quantization"]["quant_algo"] is None
    assert plain["quantization"]["kv_cache_quant_algo"] is None


def test_layout_is_tensorrt_llms_fc_is_gate_proj_and_qkv_is_per_rank(export, tiny_checkpoint):
    hf = hf_tensors(tiny_checkpoint)
    path = export(2).path
    r0 = load_file(str(path / "rank0.safetensors"))
    r1 = load_file(str(path / "rank1.safetensors"))
    p, h = "model.layers.1.", "transformer.layers.1."
    gate, up = hf[p + "mlp.gate_proj.weight"].float(), hf[p + "mlp.up_proj.weight"].float()
    assert torch.equal(r0[h + "mlp.fc.weight"], gate[:64])
    assert torch.equal(r1[h + "mlp.gate.weight"], up[64:])
    q, k, v = (hf[p + f"self_attn.{n}_proj.weight"].float() for n in "qkv")
    assert torch.equal(r1[h + "attention.qkv.weight"], torch.cat([q[32:], k[16:], v[16:]]))
    assert torch.equal(r1[h + "attention.dense.weight"],
                       hf[p + "self_attn.o_proj.weight"].float()[:, 32:])  # fmt: skip
    assert torch.equal(r0[h + "mlp.proj.weight"], hf[p + "mlp.down_proj.weight"].float()[:, :64])
    # the reward head: score's row first, zeros after, on rank 0 only
    assert torch.equal(r0["lm_head.weight"][:1], hf["score.weight"].float())
    assert not r0["lm_head.weight"][1:].any() and not r1["lm_head.weight"].any()


def test_kv_heads_fewer_than_ranks_are_repeated_as_dup_kv_weight_does(export, tiny_checkpoint):
    """4 ranks, 2 KV heads: ranks 0, 1 hold KV head 0; ranks 2, 3 KV head 1."""
    hf = hf_tensors(tiny_checkpoint)
    path = export(4).path
    k = hf["model.layers.0.self_attn.k_proj.weight"].float()
    for r in range(4):
        qkv = load_file(str(path / f"rank{r}.safetensors"))["transformer.layers.0.attention.qkv.weight"]
        assert qkv.shape == (16 + 16 + 16, 64)
        head = r // 2
        assert torch.equal(qkv[16:32], k[16 * head : 16 * (head + 1)])


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_reading_back_gives_the_source_weights_and_rewards_fp32(export, tiny_checkpoint, tp):
    path = export(tp).path
    cfg = ModelConfig.from_pretrained(tiny_checkpoint)
    ref = load_weights(tiny_checkpoint, cfg, torch.float32)
    _, got = load_trtllm(path, torch.float32)
    for a, b in zip(ref.layers, got.layers, strict=True):
        for name in ("qkv", "o_proj", "gate_up", "down"):
            assert torch.equal(getattr(a, name).weight, getattr(b, name).weight), name
        assert torch.equal(a.input_norm, b.input_norm) and torch.equal(a.post_norm, b.post_norm)
    assert torch.equal(ref.head, got.head) and torch.equal(ref.embed, got.embed)
    want = engine(tiny_checkpoint).score(CONVERSATIONS)
    assert engine(path).score(CONVERSATIONS) == pytest.approx(want, abs=ATOL)


def test_reading_back_a_bf16_export_gives_the_source_rewards(export, tiny_checkpoint):
    path = export(2, dtype="bfloat16").path
    assert json.loads((path / "config.json").read_text())["dtype"] == "bfloat16"
    want = engine(tiny_checkpoint, "bfloat16").score(CONVERSATIONS)
    assert engine(path, "bfloat16").score(CONVERSATIONS) == pytest.approx(want, abs=ATOL)


def per_tensor_fp8(w: torch.Tensor) -> QuantizedLinear:
    codes, scale = kernels.fp8_quantize(w.float(), granularity="tensor")
    return codes, scale.reshape(1).expand(w.shape[0])


def fp8_oracle(checkpoint, path) -> Engine:
    """The FP8 model TensorRT-LLM would run, made here from the HF tensors: one E4M3
    scale per TensorRT-LLM linear (q|k|v together, gate_proj and up_proj apart), the
    export's calibrated activation and KV scales."""
    cfg = ModelConfig.from_pretrained(checkpoint)
    hf = load_weights(checkpoint, cfg, torch.float32)
    scales = load_file(str(path / "rank0.safetensors"))
    layers = []
    for i, dense in enumerate(hf.layers):
        t = f"transformer.layers.{i}."

        def fp8(weights, trt_name, t=t):
            parts = [per_tensor_fp8(w) for w in weights]
            return QuantizedLinear("fp8", torch.cat([c for c, _ in parts]),
                                   torch.cat([s for _, s in parts]).contiguous(),
                                   scales[t + trt_name + ".activation_scaling_factor"].reshape(()),
                                   torch.float32)  # fmt: skip

        inter = cfg.intermediate_size
        kv = scales[t + "attention.kv_cache_scaling_factor"].reshape(())
        layers.append(LayerWeights(
            input_norm=dense.input_norm, post_norm=dense.post_norm,
            qkv=fp8([dense.qkv.weight], "attention.qkv"),
            o_proj=fp8([dense.o_proj.weight], "attention.dense"),
            gate_up=fp8([dense.gate_up.weight[:inter], dense.gate_up.weight[inter:]], "mlp.fc"),
            down=fp8([dense.down.weight], "mlp.proj"), k_scale=kv, v_scale=kv.clone(),
        ))  # fmt: skip
    weights = ModelWeights(hf.embed, layers, hf.final_norm, hf.head)
    base = engine(checkpoint, kv_cache_dtype="fp8")
    return Engine(LlamaRewardModel(cfg, weights, max_position=cfg.max_position_embeddings),
                  base.chat, base.runtime)  # fmt: skip


@pytest.mark.parametrize("tp", [1, 2])
def test_reading_back_an_fp8_export_gives_the_fp8_models_rewards(export, tiny_checkpoint, tp):
    path = export(tp, quantization="fp8", kv_cache_dtype="fp8").path
    oracle = fp8_oracle(tiny_checkpoint, path).score(CONVERSATIONS)
    got = engine(path)
    assert got.runtime.kv_cache_dtype == "fp8"  # as the checkpoint says
    assert got.score(CONVERSATIONS) == pytest.approx(oracle, abs=ATOL)
    dense = engine(tiny_checkpoint).score(CONVERSATIONS)
    assert oracle != pytest.approx(dense, abs=ATOL)  # the FP8 model is another model
    assert oracle == pytest.approx(dense, abs=0.15 * max(abs(x) for x in dense))


def test_fp8_ranks_share_one_scale_per_linear_and_one_kv_scale(export):
    path = export(2, quantization="fp8", kv_cache_dtype="fp8").path
    ranks = [load_file(str(path / f"rank{r}.safetensors")) for r in range(2)]
    scales = [n for n in ranks[0] if n.endswith("scaling_factor")]
    assert len(scales) == 2 * (5 * 2 + 1)  # 2 layers x (5 linears x 2 scales + the KV scale)
    for n in scales:
        assert torch.equal(ranks[0][n], ranks[1][n]) and ranks[0][n].item() > 0


# ----------------------------------------------------------------------------- the CLI


def test_cli_builds_a_trtllm_checkpoint_and_prints_the_trtllm_build_command(
    tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtllm-build here, as on every CPU host
    out = tmp_path / "trt"
    argv = ["build", str(tiny_checkpoint), "-o", str(out), "--format", "trtllm", "--tp", "2",
            "--dtype", "float32", "--no-progress", "--trtllm-build"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "trtllm-build is not on PATH" in err
    cmd = trtllm_build_command(out, out / "engine", fp8=False, max_seq_len=16384)
    assert " ".join(cmd) in err
    assert "--gather_context_logits" in cmd and "--use_fp8_context_fmha" not in cmd
    fp8 = trtllm_build_command(out, out / "engine", fp8=True, max_seq_len=4096)
    assert fp8[fp8.index("--use_fp8_context_fmha") + 1] == "enable"
    assert fp8[fp8.index("--use_paged_context_fmha") + 1] == "enable"
    assert (out / "rank1.safetensors").is_file()


@pytest.mark.parametrize("args,message", [
    (["--format", "trtllm", "--quantization", "int8"], "unquantized or FP8"),
    (["--format", "trtllm", "--quantization", "fp8", "--activation-scales", "dynamic"],
     "static activation"),
    (["--format", "trtllm", "--tp", "3"], "tensor_parallel_size=3 does not divide"),
    (["--format", "modelopt", "--quantization", "fp8", "--tp", "2"], "--tp applies to"),
    (["--trtllm-build"], "--trtllm-build applies to --format trtllm"),
])  # fmt: skip
def test_cli_refuses_what_the_trtllm_format_cannot_hold(tiny_checkpoint, tmp_path, capsys, args,
                                                        message):  # fmt: skip
    assert main(["build", str(tiny_checkpoint), "-o", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_a_causal_lm_reward_keeps_its_token_rows_first(make_tiny_checkpoint, tmp_path):
    """LlamaForCausalLM rewards (Nemotron-Reward style): the logits of the reward token ids
    at the last position; the export's lm_head starts with those rows, in that order."""
    source = make_tiny_checkpoint(architecture="LlamaForCausalLM")
    out = export_trtllm(source, tmp_path / "trt", BuildSettings(
        format="trtllm", tensor_parallel_size=2, dtype="float32", reward_token_ids=(7, 0)),
        progress=False).path  # fmt: skip
    head = json.loads((out / "reward_head.json").read_text())
    assert (head["rows"], head["reward_token_ids"]) == (2, [7, 0])
    lm_head = hf_tensors(source)["lm_head.weight"].float()
    assert torch.equal(load_file(str(out / "rank0.safetensors"))["lm_head.weight"][:2],
                       lm_head[[7, 0]])  # fmt: skip
    want = torch.tensor(engine(source, reward_token_ids=[7, 0]).score(CONVERSATIONS))
    got = torch.tensor(engine(out).score(CONVERSATIONS))
    assert got.shape == (2, 2) and torch.allclose(got, want, rtol=0, atol=ATOL)
