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
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from .config import CAUSAL_LM, ModelConfig
from .linear import DenseLinear, Linear

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

    def linears(self) -> dict[str, Linear]:
        return {"qkv": self.qkv, "o_proj": self.o_proj, "gate_up": self.gate_up, "down": self.down}


@dataclass(slots=True)
class ModelWeights:
    embed: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    head: torch.Tensor  # [num_labels, hidden]: only the rows the reward needs


class CheckpointReader:
    """Name -> tensor access over the safetensors files of one checkpoint directory."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
        elif (self.model_dir / SINGLE_FILE).is_file():
            weight_map = None
        else:
            found = sorted(p.name for p in self.model_dir.glob("*"))[:10]
            raise FileNotFoundError(
                f"no {SINGLE_FILE} or {INDEX_FILE} in {self.model_dir} (found: {found}); "
                "reward-engine loads safetensors checkpoints: convert .bin weights with "
                "transformers' save_pretrained(..., safe_serialization=True)"
            )
        self._stack = ExitStack()
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        handles = {
            f: self._stack.enter_context(safe_open(str(self.model_dir / f), framework="pt"))
            for f in files
        }
        if weight_map is None:
            weight_map = {k: SINGLE_FILE for k in handles[SINGLE_FILE].keys()}
        self._where = {name: handles[f] for name, f in weight_map.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stack.close()

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        if name not in self._where:
            raise KeyError(f"tensor {name!r} missing from checkpoint {self.model_dir}")
        return self._where[name].get_tensor(name).to(dtype)

    def get_optional(self, name: str, dtype: torch.dtype) -> torch.Tensor | None:
        return self.get(name, dtype) if name in self else None

    def get_rows(self, name: str, rows: list[int], dtype: torch.dtype) -> torch.Tensor:
        """Only the given rows of a 2-D tensor, read without loading the rest."""
        sl = self._where[name].get_slice(name)
        num_rows = sl.get_shape()[0]
        bad = [r for r in rows if not 0 <= r < num_rows]
        if bad:
            raise ValueError(f"reward token ids {bad} out of range for {name} ({num_rows} rows)")
        return torch.stack([sl[r : r + 1][0] for r in rows]).to(dtype)


def _cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
    if all(p is None for p in parts):
        return None
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def _load_layer(reader: CheckpointReader, i: int, dtype: torch.dtype) -> LayerWeights:
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


def _load_head(reader: CheckpointReader, cfg: ModelConfig, dtype, reward_token_ids):
    if cfg.head_kind != CAUSAL_LM:
        if "score.weight" not in reader:
            raise KeyError(
                f"{cfg.architecture} checkpoint has no 'score.weight' reward head in "
                f"{reader.model_dir}"
            )
        return reader.get("score.weight", dtype)
    name = "lm_head.weight"
    if name not in reader or cfg.tie_word_embeddings:
        name = "model.embed_tokens.weight"
    return reader.get_rows(name, list(reward_token_ids), dtype)


def load_weights(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    reward_token_ids: tuple[int, ...] = (0,),
    progress=None,
) -> ModelWeights:
    """Stream a checkpoint into fused engine weights of the given dtype.

    `progress`, if given, is called with the number of layers loaded so far.
    """
    with CheckpointReader(model_dir) as reader:
        embed = reader.get("model.embed_tokens.weight", dtype)
        layers = []
        for i in range(cfg.num_layers):
            layers.append(_load_layer(reader, i, dtype))
            if progress is not None:
                progress(i + 1)
        return ModelWeights(
            embed=embed,
            layers=layers,
            final_norm=reader.get("model.norm.weight", dtype),
            head=_load_head(reader, cfg, dtype, reward_token_ids),
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
