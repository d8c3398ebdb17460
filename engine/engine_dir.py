"""Engine directories: what `reward-engine build` writes and the engine loads as is.

    ENGINE_DIR/
      engine.json           manifest: format version, model shape, build settings,
                            package versions, build date, sha256 and size of every file
      config.json           the source checkpoint's HF config, unchanged
      weights.safetensors   fused (and quantized) tensors, names below
      tokenizer.json ...    the source checkpoint's tokenizer files, unchanged
      accuracy.json/.md     quantized builds: the accuracy report

Tensor names (one table, `weight_plan`): ``embed.weight``, ``final_norm.weight``,
``head.weight`` (only the reward rows), and per layer i ``layers.{i}.input_norm.weight``,
``layers.{i}.post_norm.weight``, ``layers.{i}.{qkv,o_proj,gate_up,down}.weight`` with
``.bias`` where the model has biases; W8A8 layers add ``.weight_scale`` (fp32, one per
output channel) and, with static activation scales, ``.input_scale`` (fp32 scalar); an
FP8 KV cache adds ``layers.{i}.attn.k_scale`` / ``.v_scale``. q|k|v rows are q then k
then v; gate|up rows are gate then up.

Tensor-parallel engines (`reward-engine build --tp N`) hold one weights file per rank,
``weights.rank{r}.safetensors``, with the same names over rank r's shapes
(engine/sharding.py: its heads and intermediate slice; the row-parallel o_proj and
down biases only in rank 0's file), and the manifest's weights.tensor_parallel_size
says N. Such an engine loads with tensor_parallel_size=N only; a single-file engine
loads with any tensor_parallel_size (sharded at load).

The manifest is written last, first as engine.json.partial, which becomes engine.json
only after the directory has its final name (engine/build/writer.py): a directory
without engine.json is never loaded as an engine.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import LayerWeights, ModelWeights
from .config import ModelConfig
from .linear import QUANTIZED_DTYPES, DenseLinear, QuantizedLinear
from .safetensors_io import SafetensorsReader, sha256_file
from .sharding import rank_config

logger = logging.getLogger(__name__)

FORMAT = "reward-engine"
FORMAT_VERSION = 1
MANIFEST = "engine.json"
PARTIAL_MANIFEST = "engine.json.partial"
WEIGHTS = "weights.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
LINEARS = ("qkv", "o_proj", "gate_up", "down")
FP32 = torch.float32


class EngineDirError(ValueError):
    """An engine directory that cannot be loaded; the message says what to do."""


@dataclass(frozen=True, slots=True)
class WeightFormat:
    """How an engine stores its weights."""

    dtype: torch.dtype  # the dense tensors (norms, embeddings, head, unquantized linears)
    quantization: str = "none"  # "none" | "fp8" | "int8"
    static_input_scales: bool = False
    kv_cache_scales: bool = False

    def __post_init__(self):
        if self.quantization not in ("none", *QUANTIZED_DTYPES):
            raise ValueError(f"quantization must be none, fp8 or int8, got {self.quantization!r}")


def linear_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """[out, in] of each fused linear layer."""
    return {
        "qkv": (cfg.q_size + 2 * cfg.kv_size, cfg.hidden_size),
        "o_proj": (cfg.hidden_size, cfg.q_size),
        "gate_up": (2 * cfg.intermediate_size, cfg.hidden_size),
        "down": (cfg.hidden_size, cfg.intermediate_size),
    }


def has_bias(cfg: ModelConfig, linear: str) -> bool:
    return cfg.attention_bias if linear in ("qkv", "o_proj") else cfg.mlp_bias


ROW_PARALLEL = ("o_proj", "down")


def stored_bias(cfg: ModelConfig, linear: str, rank: int = 0) -> bool:
    """Whether rank ``rank``'s weights file holds the layer's bias: a row-parallel bias
    is added once, by rank 0."""
    return has_bias(cfg, linear) and (rank == 0 or linear not in ROW_PARALLEL)


def weights_file(rank: int = 0, tensor_parallel_size: int = 1) -> str:
    return WEIGHTS if tensor_parallel_size == 1 else f"weights.rank{rank}.safetensors"


def weight_plan(cfg: ModelConfig, fmt: WeightFormat, head_rows: int, rank: int = 0) -> list[tuple]:
    """Every tensor of a weights file as (name, dtype, shape), in file order: the
    embedding, then each layer, then the final norm and the head. For rank ``rank`` of a
    tensor-parallel engine, ``cfg`` is the rank's shape (sharding.rank_config)."""
    h, dt = cfg.hidden_size, fmt.dtype
    plan = [("embed.weight", dt, (cfg.vocab_size, h))]
    shapes = linear_shapes(cfg)
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        plan.append((p + "input_norm.weight", dt, (h,)))
        for name in LINEARS:
            n, k = shapes[name]
            if fmt.quantization == "none":
                plan.append((p + f"{name}.weight", dt, (n, k)))
            else:
                plan.append((p + f"{name}.weight", QUANTIZED_DTYPES[fmt.quantization], (n, k)))
                plan.append((p + f"{name}.weight_scale", FP32, (n,)))
                if fmt.static_input_scales:
                    plan.append((p + f"{name}.input_scale", FP32, ()))
            if stored_bias(cfg, name, rank):
                plan.append((p + f"{name}.bias", dt, (n,)))
            if name == "o_proj":
                plan.append((p + "post_norm.weight", dt, (h,)))
        if fmt.kv_cache_scales:
            plan += [(p + "attn.k_scale", FP32, ()), (p + "attn.v_scale", FP32, ())]
    plan += [("final_norm.weight", dt, (h,)), ("head.weight", dt, (head_rows, h))]
    return plan


# ----------------------------------------------------------------------------- reading


def is_engine_dir(path: str | Path) -> bool:
    path = Path(path)
    return (path / MANIFEST).is_file() or (path / PARTIAL_MANIFEST).is_file()


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        if (path / PARTIAL_MANIFEST).is_file():
            raise EngineDirError(
                f"{path} is an engine build that did not finish (no {MANIFEST}): "
                "run `reward-engine build ... --force` again"
            )
        raise EngineDirError(f"{path} is not an engine directory (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineDirError(f"{path / MANIFEST} is unreadable ({exc}): rebuild the engine") from None
    if manifest.get("format") != FORMAT:
        raise EngineDirError(f"{path / MANIFEST} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise EngineDirError(
            f"{path} is engine format version {version}; this reward-engine reads version "
            f"{FORMAT_VERSION}: rebuild the engine with this version"
        )
    return manifest


def built_tensor_parallel_size(manifest: dict) -> int:
    """How many ranks the engine was built for (1: a single weights file)."""
    return int(manifest["weights"].get("tensor_parallel_size", 1))


def check_tensor_parallel_size(path: str | Path, manifest: dict, requested: int) -> None:
    """EngineDirError unless an engine built for N ranks is loaded with N ranks."""
    built = built_tensor_parallel_size(manifest)
    if built > 1 and built != requested:
        raise EngineDirError(
            f"{path} was built for tensor_parallel_size={built} (one weights file per rank); "
            f"load it with tensor_parallel_size={built} (--tensor-parallel-size {built}), or "
            f"rebuild it with --tp {requested}"
            + (" (or without --tp)" if requested == 1 else "")
        )


def verify_files(path: str | Path, manifest: dict, only: set[str] | None = None) -> None:
    """Every file the manifest lists (or those of them in ``only``) exists with its
    recorded size and sha256."""
    path = Path(path)
    for name, entry in manifest["files"].items():
        if only is not None and name not in only:
            continue
        file = path / name
        if not file.is_file():
            raise EngineDirError(f"{path}: {name} is missing (listed in {MANIFEST}); rebuild")
        size = file.stat().st_size
        if size != entry["bytes"]:
            raise EngineDirError(
                f"{path}: {name} has {size} bytes, the manifest says {entry['bytes']}: the "
                "engine is damaged or was modified; rebuild it"
            )
        if sha256_file(file) != entry["sha256"]:
            raise EngineDirError(
                f"{path}: {name} does not match its sha256 in {MANIFEST}: the engine is "
                "damaged or was modified; rebuild it (or load with verify=False / --no-verify)"
            )


def weight_format(manifest: dict) -> WeightFormat:
    w = manifest["weights"]
    return WeightFormat(
        dtype=getattr(torch, w["dtype"]),
        quantization=w["quantization"],
        static_input_scales=w["activation_scales"] == "static",
        kv_cache_scales=w["kv_cache_dtype"] == "fp8",
    )


def summary(manifest: dict) -> str:
    """One line: architecture, shape, quantization, KV dtype, build date."""
    m, w = manifest["model"], manifest["weights"]
    quant = w["quantization"]
    if quant != "none":
        quant += f" W8A8 ({w['activation_scales']} activation scales)"
    tp = built_tensor_parallel_size(manifest)
    return (
        f"{m['architecture']} {m['num_layers']} layers, hidden {m['hidden_size']}, "
        f"{m['num_heads']}/{m['num_kv_heads']} heads, {m['num_labels']} reward output(s); "
        f"weights {w['dtype']}, quantization {quant}, KV cache {w['kv_cache_dtype']}; "
        + (f"{tp} tensor-parallel ranks; " if tp > 1 else "") +
        f"built {manifest['built']} by reward-engine {manifest['versions']['reward_engine']}"
    )


def load_engine_weights(
    path: str | Path, manifest: dict, cfg: ModelConfig, dtype: torch.dtype, rank: int = 0
) -> ModelWeights:
    """The engine's tensors as model weights; dense ones cast to ``dtype`` (the compute
    dtype), quantized ones as stored. Nothing is fused or quantized here. ``cfg`` is the
    whole model's shape; a tensor-parallel engine gives rank ``rank``'s shard."""
    fmt = weight_format(manifest)
    tp = built_tensor_parallel_size(manifest)
    rank = rank if tp > 1 else 0  # a single-file engine: the whole model, sharded later
    file = weights_file(rank, tp)
    cfg = rank_config(cfg, tp)
    reader = SafetensorsReader(Path(path) / file)
    plan = weight_plan(cfg, fmt, manifest["model"]["num_labels"], rank)
    for name, want_dtype, shape in plan:
        if name not in reader or reader.dtype(name) != want_dtype or reader.shape(name) != shape:
            found = (reader.dtype(name), reader.shape(name)) if name in reader else "missing"
            raise EngineDirError(
                f"{path}/{file}: tensor {name} should be {want_dtype} {list(shape)}, "
                f"found {found}: rebuild the engine"
            )

    def dense(name):
        return reader.read(name).to(dtype)

    def linear(prefix, bias):
        b = dense(prefix + "bias") if bias else None
        if fmt.quantization == "none":
            return DenseLinear(dense(prefix + "weight"), b)
        scale = reader.read(prefix + "input_scale") if fmt.static_input_scales else None
        return QuantizedLinear(
            fmt.quantization, reader.read(prefix + "weight"), reader.read(prefix + "weight_scale"),
            scale, dtype, b,
        )  # fmt: skip

    layers = []
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        parts = {n: linear(p + f"{n}.", stored_bias(cfg, n, rank)) for n in LINEARS}
        layer = LayerWeights(
            input_norm=dense(p + "input_norm.weight"),
            post_norm=dense(p + "post_norm.weight"),
            **parts,
        )
        if fmt.kv_cache_scales:
            layer.k_scale = reader.read(p + "attn.k_scale")
            layer.v_scale = reader.read(p + "attn.v_scale")
        layers.append(layer)
    return ModelWeights(
        embed=dense("embed.weight"),
        layers=layers,
        final_norm=dense("final_norm.weight"),
        head=dense("head.weight"),
    )
