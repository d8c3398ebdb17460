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
    is_engine_dir,
    load_engine_weights,
    read_manifest,
    summary,
    verify_files,
)
from .prequantized import detect, load_prequantized
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
) -> LoadedModel:
    path = Path(path)
    if is_trtllm_checkpoint(path):
        return _load_trtllm(path, dtype, reward_token_ids)
    cfg = ModelConfig.from_pretrained(path)
    if is_engine_dir(path):
        manifest = read_manifest(path)
        built_ids = manifest["model"].get("reward_token_ids")
        if reward_token_ids is not None and cfg.head_kind == CAUSAL_LM and (
            list(reward_token_ids) != built_ids
        ):
            raise EngineDirError(
                f"{path} was built for reward token ids {built_ids}; rebuild it with "
                f"--reward-token-ids {' '.join(map(str, reward_token_ids))} to use those"
            )
        if verify:
            verify_files(path, manifest)
        logger.info("engine %s: %s", path, summary(manifest))
        weights = load_engine_weights(path, manifest, cfg, dtype)
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
        return LoadedModel(cfg, weights, source.kind, kv_cache_dtype=kv)
    return LoadedModel(cfg, load_weights(path, cfg, dtype, token_ids), "hf")


def _load_trtllm(path: Path, dtype: torch.dtype, reward_token_ids) -> LoadedModel:
    ckpt, weights = load_trtllm(path, dtype)
    if reward_token_ids is not None:
        logger.warning("reward_token_ids ignored: %s holds its reward rows (reward_head.json)", path)
    logger.info("%s: TensorRT-LLM checkpoint, tp_size %d, quantization %s", path, ckpt.tp,
                ckpt.raw.get("quantization"))  # fmt: skip
    kv = "fp8" if ckpt.quant.kv_fp8 else "auto"
    return LoadedModel(ckpt.cfg, weights, "trtllm", ckpt.cfg.max_position_embeddings, kv)
