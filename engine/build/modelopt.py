"""Output format "modelopt": an HF checkpoint in NVIDIA ModelOpt's FP8 layout.

What vLLM, SGLang and TensorRT-LLM's PyTorch backend load as a ModelOpt FP8 model
(engine/prequantized.py names the upstream readers):

    config.json             the source config plus "quantization_config": {"quant_method":
                            "modelopt", "quant_algo", "ignore", "kv_cache_scheme"}
    hf_quant_config.json    {"producer", "quantization": {"quant_algo",
                            "kv_cache_quant_algo", "exclude_modules"}}
    model.safetensors       (or shards with model.safetensors.index.json) HF tensor names
    tokenizer files, accuracy.json / accuracy.md

quant_algo "FP8" (static activation scales): each projection (q, k, v, o, gate, up,
down) has E4M3 weights with one fp32 weight_scale and one input_scale; the build
quantizes each projection with its own scale. "FP8_PER_CHANNEL_PER_TOKEN" (dynamic):
one weight_scale per output channel, no input_scale, as the native engine stores
them. With an FP8 KV cache, self_attn.k_proj.k_scale / v_proj.v_scale. The reward
head (score, or the CausalLM lm_head) and the norms stay in the checkpoint's dtype.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import __version__
from ..config import CAUSAL_LM
from ..engine_dir import TOKENIZER_FILES
from ..safetensors_io import ShardedSafetensorsWriter
from .pipeline import BuildPlan, BuildResult, Sink, prepare, projection_rows, run
from .settings import BuildSettings

FP8 = torch.float8_e4m3fn
F32 = torch.float32
PRODUCER = {"name": "reward-engine", "version": __version__}
GROUPS = {"qkv": ("self_attn", ("q_proj", "k_proj", "v_proj")), "o_proj": ("self_attn", ("o_proj",)),
          "gate_up": ("mlp", ("gate_proj", "up_proj")), "down": ("mlp", ("down_proj",))}  # fmt: skip


def export_modelopt(
    checkpoint: str | Path,
    output: str | Path,
    settings: BuildSettings,
    *,
    force: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Build an FP8 HF checkpoint in ModelOpt's format (module docstring)."""
    if settings.quantization != "fp8":
        raise ValueError("the modelopt format holds FP8 models: use quantization='fp8'")
    plan = prepare(Path(checkpoint), settings)
    return run(plan, ModelOptSink(plan), output, force, progress)


def quant_algo(plan: BuildPlan) -> str:
    return "FP8" if plan.fmt.static_input_scales else "FP8_PER_CHANNEL_PER_TOKEN"


class ModelOptSink(Sink):
    def __init__(self, plan: BuildPlan):
        self.projection_scales = plan.fmt.static_input_scales  # "FP8": one scale per tensor
        self.storage = plan.cfg.checkpoint_dtype

    def open(self, plan: BuildPlan, writer) -> None:
        self.plan, self.writer = plan, writer
        self.file = ShardedSafetensorsWriter(writer.tmp, self._tensor_plan(), metadata={"format": "pt"})

    def _tensor_plan(self):
        cfg, fmt, dt = self.plan.cfg, self.plan.fmt, self.storage
        h = cfg.hidden_size
        rows = projection_rows(cfg)
        plan = [("model.embed_tokens.weight", dt, (cfg.vocab_size, h))]
        ins = {"qkv": h, "o_proj": cfg.q_size, "gate_up": h, "down": cfg.intermediate_size}
        for i in range(cfg.num_layers):
            p = f"model.layers.{i}."
            plan.append((p + "input_layernorm.weight", dt, (h,)))
            for fused, (group, projs) in GROUPS.items():
                for proj, n in zip(projs, rows[fused], strict=True):
                    name = f"{p}{group}.{proj}"
                    plan.append((name + ".weight", FP8, (n, ins[fused])))
                    plan.append((name + ".weight_scale", F32, () if self.projection_scales else (n,)))
                    if fmt.static_input_scales:
                        plan.append((name + ".input_scale", F32, ()))
                    bias = cfg.attention_bias if group == "self_attn" else cfg.mlp_bias
                    if bias:
                        plan.append((name + ".bias", dt, (n,)))
                if fused == "o_proj":
                    if fmt.kv_cache_scales:
                        plan += [(f"{p}self_attn.k_proj.k_scale", F32, ()),
                                 (f"{p}self_attn.v_proj.v_scale", F32, ())]  # fmt: skip
                    plan.append((p + "post_attention_layernorm.weight", dt, (h,)))
        plan.append(("model.norm.weight", dt, (h,)))
        if cfg.head_kind == CAUSAL_LM:
            if not cfg.tie_word_embeddings and "lm_head.weight" in self.plan.reader:
                plan.append(("lm_head.weight", dt, (cfg.vocab_size, h)))
        else:
            plan.append(("score.weight", dt, (cfg.num_labels, h)))
        return plan

    def embedding(self, embed):
        self.file.write("model.embed_tokens.weight", embed.to(self.storage))

    def layer(self, i, layer):
        cfg, fmt, w = self.plan.cfg, self.plan.fmt, self.file
        rows = projection_rows(cfg)
        p = f"model.layers.{i}."
        w.write(p + "input_layernorm.weight", layer.input_norm.to(self.storage))
        for fused, (group, projs) in GROUPS.items():
            lin = getattr(layer, fused)
            codes = lin.weight.split(rows[fused])
            scales = lin.weight_scale.split(rows[fused])
            biases = lin.bias.split(rows[fused]) if lin.bias is not None else [None] * len(projs)
            for proj, c, s, b in zip(projs, codes, scales, biases, strict=True):
                name = f"{p}{group}.{proj}"
                w.write(name + ".weight", c.contiguous())
                w.write(name + ".weight_scale", s[0].clone() if self.projection_scales else s.clone())
                if fmt.static_input_scales:
                    w.write(name + ".input_scale", lin.input_scale)
                if b is not None:
                    w.write(name + ".bias", b.to(self.storage).contiguous())
            if fused == "o_proj":
                if fmt.kv_cache_scales:
                    w.write(f"{p}self_attn.k_proj.k_scale", layer.k_scale)
                    w.write(f"{p}self_attn.v_proj.v_scale", layer.v_scale)
                w.write(p + "post_attention_layernorm.weight", layer.post_norm.to(self.storage))

    def tail(self, final_norm, head_rows):
        cfg, reader = self.plan.cfg, self.plan.reader
        self.file.write("model.norm.weight", final_norm.to(self.storage))
        if cfg.head_kind == CAUSAL_LM:
            if not cfg.tie_word_embeddings and "lm_head.weight" in reader:
                self.file.write("lm_head.weight", reader.get("lm_head.weight", self.storage))
        else:
            self.file.write("score.weight", head_rows.to(self.storage))

    def discard(self):
        self.file.discard()

    def close(self, report):
        plan, writer = self.plan, self.writer
        for name, digest in self.file.close().items():
            writer.record(name, digest)
        if len(self.file.names) > 1:
            writer.record("model.safetensors.index.json")
        head = "lm_head" if plan.cfg.head_kind == CAUSAL_LM else "score"
        algo = quant_algo(plan)
        kv = "FP8" if plan.fmt.kv_cache_scales else None
        config = dict(plan.raw_config)
        config["quantization_config"] = {
            "quant_method": "modelopt",
            "quant_algo": algo,
            "ignore": [head],
            "producer": PRODUCER,
            **({"kv_cache_scheme": {"type": "float", "num_bits": 8, "dynamic": False,
                                    "strategy": "tensor"}} if kv else {}),  # fmt: skip
        }
        writer.write_json("config.json", config)
        writer.write_json("hf_quant_config.json", {
            "producer": PRODUCER,
            "quantization": {"quant_algo": algo, "kv_cache_quant_algo": kv,
                             "exclude_modules": [head]},
        })  # fmt: skip
        for name in TOKENIZER_FILES:
            if (plan.source / name).is_file():
                writer.copy(plan.source / name)
        return None


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
