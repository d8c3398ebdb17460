"""HF safetensors checkpoints -> the engine's fused weight layout.

Tensors are read one at a time from memory-mapped safetensors files (single file or
sharded with model.safetensors.index.json), converted to the compute dtype and fused
per layer (q|k|v -> qkv, gate|up -> gate_up), so peak memory is the engine weights
plus one layer, never two copies of the checkpoint.

Reward heads:
  - LlamaForSequenceClassification: `score.weight` [num_labels, hidden]; the reward
    is read at the last token of the sequence.
  - LlamaForCausalLM (Nemotron-70B-Reward-HF convention): the reward is the logit of
    given token ids (default [0]) at the last position. Only those rows of lm_head
    (or of the tied embedding) are read; the vocab-sized head is never materialized.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import CAUSAL_LM, ModelConfig
from .linear import DenseLinear, Linear
from .safetensors_io import SafetensorsError, SafetensorsReader

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


@dataclass(slots=True)
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [q_size + 2 * kv_size, hidden]
    o_proj: Linear  # [hidden, q_size]
    post_norm: torch.Tensor
    gate_up: Linear  # [2 * intermediate, hidden]: gate rows then up rows
    down: Linear  # [hidden, intermediate]
    # Per-tensor scales of the layer's keys and values in an FP8 (E4M3) KV cache: 0-dim
    # fp32, cache = e4m3(k / k_scale); None: uncalibrated (the model uses 1.0).
    k_scale: torch.Tensor | None = None
    v_scale: torch.Tensor | None = None

    def linears(self) -> dict[str, Linear]:
        return {"qkv": self.qkv, "o_proj": self.o_proj, "gate_up": self.gate_up, "down": self.down}


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    head: torch.Tensor  # [num_labels, hidden]: only the rows the reward needs


class CheckpointError(ValueError):
    """A checkpoint that cannot be read as the model its config.json describes."""


def hf_tensor_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF Llama checkpoint of this config must hold, with its shape
    (transformers' modeling_llama.py names; biases only where the config has them).
    The reward head is checked apart (_head_name)."""
    h, q, kv, inter = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    shapes = {"model.embed_tokens.weight": (cfg.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        attn = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q)}
        mlp = {"gate_proj": (inter, h), "up_proj": (inter, h), "down_proj": (h, inter)}
        for group, parts, bias in (("self_attn.", attn, cfg.attention_bias),
                                   ("mlp.", mlp, cfg.mlp_bias)):  # fmt: skip
            for name, shape in parts.items():
                shapes[p + group + name + ".weight"] = shape
                if bias:
                    shapes[p + group + name + ".bias"] = shape[:1]
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
    return shapes


class CheckpointReader:
    """Name -> tensor access over the safetensors files of one checkpoint directory.

    Tensors are read with plain file reads, one at a time (engine/safetensors_io.py):
    nothing is memory-mapped, so the process holds only what it keeps."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index} is not a valid safetensors index ({exc})") from None
        elif (self.model_dir / SINGLE_FILE).is_file():
            weight_map = None
        else:
            found = sorted(p.name for p in self.model_dir.glob("*"))[:10]
            raise FileNotFoundError(
                f"no {SINGLE_FILE} or {INDEX_FILE} in {self.model_dir} (found: {found}); "
                "reward-engine loads safetensors checkpoints: convert .bin weights with "
                "transformers' save_pretrained(..., safe_serialization=True)"
            )
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        readers = {}
        for f in files:
            if not (self.model_dir / f).is_file():
                raise CheckpointError(
                    f"shard {f} named by {INDEX_FILE} is missing from {self.model_dir}: "
                    "copy every shard of the checkpoint"
                )
            try:
                readers[f] = SafetensorsReader(self.model_dir / f)
            except SafetensorsError as exc:
                raise CheckpointError(str(exc)) from None
        if weight_map is None:
            weight_map = {k: SINGLE_FILE for k in readers[SINGLE_FILE].keys()}
        for name, f in weight_map.items():
            if name not in readers[f]:
                raise CheckpointError(
                    f"{INDEX_FILE} says tensor {name!r} is in {f}, but {f} does not hold it: "
                    "the index and the shards are from different checkpoints"
                )
        self._where = {name: readers[f] for name, f in weight_map.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def keys(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._where[name].shape(name)

    def dtype(self, name: str) -> torch.dtype:
        return self._where[name].dtype(name)

    def get(self, name: str, dtype: torch.dtype | None) -> torch.Tensor:
        """The tensor, converted to ``dtype`` (None: as stored)."""
        if name not in self._where:
            raise KeyError(f"tensor {name!r} missing from checkpoint {self.model_dir}")
        t = self._where[name].read(name)
        return t if dtype is None else t.to(dtype)

    def get_optional(self, name: str, dtype: torch.dtype | None) -> torch.Tensor | None:
        return self.get(name, dtype) if name in self else None

    def get_rows(self, name: str, rows: list[int], dtype: torch.dtype) -> torch.Tensor:
        """Only the given rows of a 2-D tensor, read without loading the rest."""
        num_rows = self.shape(name)[0]
        bad = [r for r in rows if not 0 <= r < num_rows]
        if bad:
            raise ValueError(f"reward token ids {bad} out of range for {name} ({num_rows} rows)")
        return self._where[name].read_rows(name, rows).to(dtype)

    def validate(self, cfg: ModelConfig, reward_token_ids: tuple[int, ...] = (0,)) -> None:
        """Every tensor the config implies is present with its shape and a float dtype,
        and the reward head exists: raises CheckpointError naming the first problem."""
        floats = (torch.float32, torch.bfloat16, torch.float16)
        for name, shape in hf_tensor_shapes(cfg).items():
            if name not in self:
                raise CheckpointError(
                    f"tensor {name!r} is missing from {self.model_dir}: the checkpoint does "
                    "not match its config.json (num_hidden_layers, biases?)"
                )
            if self.shape(name) != shape:
                raise CheckpointError(
                    f"tensor {name!r} in {self.model_dir} has shape {list(self.shape(name))}, "
                    f"config.json implies {list(shape)}"
                )
            if self.dtype(name) not in floats:
                raise CheckpointError(
                    f"tensor {name!r} has dtype {self.dtype(name)}; expected bf16, fp16 or fp32 "
                    "(pre-quantized checkpoints need their quantization config)"
                )
        head = _head_name(self, cfg)
        rows = self.shape(head)
        want_cols = cfg.hidden_size
        if len(rows) != 2 or rows[1] != want_cols:
            raise CheckpointError(f"reward head {head!r} has shape {list(rows)}; expected [*, {want_cols}]")
        if cfg.head_kind == CAUSAL_LM:
            bad = [r for r in reward_token_ids if not 0 <= r < rows[0]]
            if bad:
                raise CheckpointError(f"reward token ids {bad} out of range for {head} ({rows[0]} rows)")
        elif rows[0] != cfg.num_labels:
            raise CheckpointError(
                f"score.weight has {rows[0]} rows but config.json says num_labels={cfg.num_labels}"
            )


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(p is None for p in parts):
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def load_layer(reader: CheckpointReader, i: int, dtype: torch.dtype) -> LayerWeights:
    """Layer i as engine weights: q|k|v and gate|up fused, every tensor in ``dtype``."""
    p = f"model.layers.{i}."
    attn, mlp = p + "self_attn.", p + "mlp."
    def fused(prefix: str, names) -> DenseLinear:
        weight = _cat([reader.get(prefix + f"{n}_proj.weight", dtype) for n in names])
        bias = _cat([reader.get_optional(prefix + f"{n}_proj.bias", dtype) for n in names])
        return DenseLinear(weight, bias)

    return LayerWeights(
        input_norm=reader.get(p + "input_layernorm.weight", dtype),
        qkv=fused(attn, "qkv"),
        o_proj=fused(attn, ["o"]),
        post_norm=reader.get(p + "post_attention_layernorm.weight", dtype),
        gate_up=fused(mlp, ("gate", "up")),
        down=fused(mlp, ["down"]),
    )


def _head_name(reader: CheckpointReader, cfg: ModelConfig) -> str:
    if cfg.head_kind != CAUSAL_LM:
        if "score.weight" not in reader:
            raise KeyError(
                f"{cfg.architecture} checkpoint has no 'score.weight' reward head in "
                f"{reader.model_dir}"
            )
        return "score.weight"
    if "lm_head.weight" not in reader or cfg.tie_word_embeddings:
        return "model.embed_tokens.weight"
    return "lm_head.weight"


def load_head(reader: CheckpointReader, cfg: ModelConfig, dtype, reward_token_ids):
    """The reward head [num_outputs, hidden]: the score head, or only the reward token
    rows of a CausalLM head (the vocab-sized head is never read whole)."""
    name = _head_name(reader, cfg)
    if cfg.head_kind != CAUSAL_LM:
        return reader.get(name, dtype)
    return reader.get_rows(name, list(reward_token_ids), dtype)


def load_weights(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    reward_token_ids: tuple[int, ...] = (0,),
    progress=None,
    layer_hook=None,
) -> ModelWeights:
    """Stream a checkpoint into fused engine weights of the given dtype.

    `progress`, if given, is called with the number of layers loaded so far;
    `layer_hook`, if given, maps each fused layer before the next is read (a
    tensor-parallel rank keeps its shard of it: engine/sharding.py).
    """
    with CheckpointReader(model_dir) as reader:
        reader.validate(cfg, reward_token_ids)
        embed = reader.get("model.embed_tokens.weight", dtype)
        layers = []
        for i in range(cfg.num_layers):
            layer = load_layer(reader, i, dtype)
            layers.append(layer if layer_hook is None else layer_hook(layer))
            if progress is not None:
                progress(i + 1)
        return ModelWeights(
            embed=embed,
            layers=layers,
            final_norm=reader.get("model.norm.weight", dtype),
            head=load_head(reader, cfg, dtype, reward_token_ids),
        )


def move_weights(obj, device: torch.device):
    """A copy of a weights record (ModelWeights, LayerWeights, a linear layer, or a
    list of them) with every tensor on ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, list):
        return [move_weights(o, device) for o in obj]
    if dataclasses.is_dataclass(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, torch.Tensor | list) or dataclasses.is_dataclass(value):
                changes[f.name] = move_weights(value, device)
        return dataclasses.replace(obj, **changes)
    return obj
