"""Where the engine's weights come from: an engine directory, or an HF checkpoint.

``load_model(path, dtype, ...)`` tells them apart and returns the model config, the
weights ready to run, and what the directory says about itself:

- an engine directory (engine/engine_dir.py; made by `reward-engine build`): read as
  stored, nothing fused or quantized, its files checked against the manifest's
  sha256 unless ``verify=False``;
- a pre-quantized FP8 HF checkpoint (ModelOpt, compressed-tensors, "fp8";
  engine/prequantized.py): its E4M3 codes and scales as stored;
- a TensorRT-LLM checkpoint (engine/trtllm_checkpoint.py; `reward-engine build
  --format trtllm`): its ranks merged, FP8 codes and scales as stored;
- an HF checkpoint (engine/checkpoint.py): fused while it streams in.

With ``tensor_parallel_size`` N > 1 it returns rank ``rank``'s shard
(engine/sharding.py): an engine built with ``--tp N`` reads the rank's own weights file
(and checks only that file's sha256, plus the shared files on rank 0); an HF
checkpoint is sharded layer by layer as it streams in (a rank holds its shard plus one
layer); a single-file engine or a pre-quantized checkpoint is read whole, then sharded.
``LoadedModel.cfg`` stays the whole model's shape.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import ModelWeights, load_weights
from .config import CAUSAL_LM, ModelConfig
from .engine_dir import (
    EngineDirError,
    built_tensor_parallel_size,
    check_tensor_parallel_size,
    is_engine_dir,
    load_engine_weights,
    read_manifest,
    summary,
    verify_files,
    weights_file,
)
from .prequantized import detect, load_prequantized
from .sharding import check_tensor_parallel, shard_layer, shard_weights
from .trtllm_checkpoint import is_trtllm_checkpoint, load_trtllm

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class LoadedModel:
    cfg: ModelConfig
    weights: ModelWeights
    kind: str  # "engine" | "hf" | "modelopt" | "compressed-tensors" | "fp8" | "trtllm"
    max_model_len: int | None = None  # the engine's own limit, when it has one
    kv_cache_dtype: str = "auto"  # what the weights were calibrated for
    manifest: dict = field(default_factory=dict)


def load_model(
    path: str | Path,
    dtype: torch.dtype,
    reward_token_ids: tuple[int, ...] | None = None,
    verify: bool = True,
    rank: int = 0,
    tensor_parallel_size: int = 1,
) -> LoadedModel:
    path = Path(path)
    if is_trtllm_checkpoint(path):
        return _load_trtllm(path, dtype, reward_token_ids, rank, tensor_parallel_size)
    cfg = ModelConfig.from_pretrained(path)
    tp = tensor_parallel_size
    check_tensor_parallel(cfg, tp)
    if is_engine_dir(path):
        manifest = read_manifest(path)
        check_tensor_parallel_size(path, manifest, tp)
        built_tp = built_tensor_parallel_size(manifest)
        built_ids = manifest["model"].get("reward_token_ids")
        if reward_token_ids is not None and cfg.head_kind == CAUSAL_LM and (
            list(reward_token_ids) != built_ids
        ):
            raise EngineDirError(
                f"{path} was built for reward token ids {built_ids}; rebuild it with "
                f"--reward-token-ids {' '.join(map(str, reward_token_ids))} to use those"
            )
        if verify:
            verify_files(path, manifest, _files_to_verify(manifest, rank, built_tp))
        if rank == 0:
            logger.info("engine %s: %s", path, summary(manifest))
        weights = load_engine_weights(path, manifest, cfg, dtype, rank)
        if built_tp != tp:  # a single-file engine, sharded at load
            weights = shard_weights(weights, cfg, rank, tp)
        return LoadedModel(
            cfg, weights, "engine", manifest["model"].get("max_model_len"),
            manifest["weights"]["kv_cache_dtype"], manifest,
        )  # fmt: skip
    if cfg.head_kind != CAUSAL_LM and reward_token_ids is not None:
        logger.warning("reward_token_ids ignored: %s has a score head", cfg.architecture)
    token_ids = tuple(reward_token_ids) if reward_token_ids is not None else (0,)
    raw = json.loads((path / "config.json").read_text())
    source = detect(path, raw)
    if source is not None:
        logger.info("%s: pre-quantized %s checkpoint (%s%s)", path, source.kind, source.algo,
                    ", FP8 KV cache" if source.kv_cache_fp8 else "")  # fmt: skip
        weights = load_prequantized(path, cfg, source, dtype, token_ids)
        kv = "fp8" if source.kv_cache_fp8 else "auto"
        return LoadedModel(cfg, shard_weights(weights, cfg, rank, tp), source.kind,
                           kv_cache_dtype=kv)  # fmt: skip
    hook = None if tp == 1 else (lambda layer: shard_layer(layer, cfg, rank, tp))
    return LoadedModel(cfg, load_weights(path, cfg, dtype, token_ids, layer_hook=hook), "hf")


def _files_to_verify(manifest: dict, rank: int, built_tp: int) -> set[str] | None:
    """All files for a single-file engine; for rank r of a tensor-parallel one its own
    weights file, and on rank 0 the shared files too (each rank reads its own)."""
    if built_tp == 1:
        return None
    own = weights_file(rank, built_tp)
    if rank != 0:
        return {own}
    others = {weights_file(r, built_tp) for r in range(1, built_tp)}
    return set(manifest["files"]) - others


def _load_trtllm(path: Path, dtype: torch.dtype, reward_token_ids, rank: int,
                 tp: int) -> LoadedModel:  # fmt: skip
    """Every rank of the checkpoint merged, then (tensor_parallel_size > 1) this rank's
    shard of the engine's own tensor parallelism."""
    ckpt, weights = load_trtllm(path, dtype)
    check_tensor_parallel(ckpt.cfg, tp)
    weights = shard_weights(weights, ckpt.cfg, rank, tp)
    if reward_token_ids is not None:
        logger.warning("reward_token_ids ignored: %s holds its reward rows (reward_head.json)", path)
    logger.info("%s: TensorRT-LLM checkpoint, tp_size %d, quantization %s", path, ckpt.tp,
                ckpt.raw.get("quantization"))  # fmt: skip
    kv = "fp8" if ckpt.quant.kv_fp8 else "auto"
    return LoadedModel(ckpt.cfg, weights, "trtllm", ckpt.cfg.max_position_embeddings, kv)
