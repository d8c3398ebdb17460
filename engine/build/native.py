"""Output format "native": an engine directory (engine/engine_dir.py).

weights.safetensors is written as the tensors arrive, in the order of the format's
name table; config.json and the tokenizer files are copied unchanged; the manifest
records the build settings, package versions and every file's sha256. With
``--tp N`` each layer is sharded as it arrives (engine/sharding.py) and rank r's slice
goes to weights.rank{r}.safetensors; the embedding, norms and head are in every file.
"""

from __future__ import annotations

import datetime as dt
import platform
from pathlib import Path

import torch

from .. import __version__
from ..engine_dir import (
    FORMAT,
    FORMAT_VERSION,
    LINEARS,
    TOKENIZER_FILES,
    stored_bias,
    weight_plan,
    weights_file,
)
from ..hardware import dtype_name
from ..linear import DenseLinear
from ..safetensors_io import SafetensorsWriter
from ..sharding import rank_config, shard_layer
from .pipeline import BuildPlan, BuildResult, Sink, prepare, run
from .quantize import QMAX
from .settings import BuildSettings


def build_engine(
    checkpoint: str | Path,
    output: str | Path,
    settings: BuildSettings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Build an engine directory from an HF checkpoint directory (engine/build/pipeline.py)."""
    settings = settings or BuildSettings()
    if settings.format != "native":
        raise ValueError(f"build_engine writes the native format; got format={settings.format!r}")
    plan = prepare(Path(checkpoint), settings)
    return run(plan, NativeSink(), output, force, progress)


class NativeSink(Sink):
    def open(self, plan: BuildPlan, writer) -> None:
        self.plan, self.writer = plan, writer
        self.tp = tp = plan.settings.tensor_parallel_size
        cfg = rank_config(plan.cfg, tp)
        self.files = [
            SafetensorsWriter(writer.path(weights_file(r, tp)),
                              weight_plan(cfg, plan.fmt, plan.head_rows, r if tp > 1 else 0),
                              {"format": FORMAT})
            for r in range(tp)
        ]  # fmt: skip

    def embedding(self, embed):
        for f in self.files:
            f.write("embed.weight", embed)

    def layer(self, i, layer):
        for rank, file in enumerate(self.files):
            shard = shard_layer(layer, self.plan.cfg, rank, self.tp)
            self._write_layer(file, i, shard, rank if self.tp > 1 else 0)

    def _write_layer(self, w, i, layer, rank):
        p, cfg, fmt = f"layers.{i}.", self.plan.cfg, self.plan.fmt
        w.write(p + "input_norm.weight", layer.input_norm)
        for name in LINEARS:
            lin = getattr(layer, name)
            w.write(p + f"{name}.weight", lin.weight)
            if not isinstance(lin, DenseLinear):
                w.write(p + f"{name}.weight_scale", lin.weight_scale)
                if fmt.static_input_scales:
                    w.write(p + f"{name}.input_scale", lin.input_scale)
            if stored_bias(cfg, name, rank):
                w.write(p + f"{name}.bias", lin.bias)
            if name == "o_proj":
                w.write(p + "post_norm.weight", layer.post_norm)
        if fmt.kv_cache_scales:
            w.write(p + "attn.k_scale", layer.k_scale)
            w.write(p + "attn.v_scale", layer.v_scale)

    def tail(self, final_norm, head_rows):
        for f in self.files:
            f.write("final_norm.weight", final_norm)
            f.write("head.weight", head_rows)

    def discard(self):
        for f in self.files:
            f.discard()

    def close(self, report):
        for rank, f in enumerate(self.files):
            self.writer.record(weights_file(rank, self.tp), f.close())
        for name in ("config.json", *TOKENIZER_FILES):
            if (self.plan.source / name).is_file():
                self.writer.copy(self.plan.source / name)
        return manifest(self.plan, report)


def manifest(plan: BuildPlan, report) -> dict:
    import numpy
    import safetensors
    import tokenizers

    cfg, settings = plan.cfg, plan.settings
    calibration = plan.calibration
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "built": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": str(plan.source.absolute()),
        "model": {
            "architecture": cfg.architecture,
            "hidden_size": cfg.hidden_size,
            "num_layers": cfg.num_layers,
            "num_heads": cfg.num_heads,
            "num_kv_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "num_labels": plan.head_rows,
            "head_kind": cfg.head_kind,
            "reward_token_ids": list(plan.reward_token_ids) or None,
            "max_model_len": plan.max_len,
        },
        "weights": {
            "dtype": dtype_name(plan.dtype),
            "dtype_reason": plan.dtype_reason,
            "quantization": settings.quantization,
            "activation_scales": settings.resolved_activation_scales,
            "kv_cache_dtype": settings.kv_cache_dtype,
            "qmax": QMAX.get(settings.quantization),
            "tensor_parallel_size": settings.tensor_parallel_size,
        },
        "build": settings.to_json(),
        "calibration": None if calibration is None else {
            "source": calibration.source,
            "conversations": len(calibration.sequences),
            "tokens": calibration.num_tokens,
        },
        "accuracy": None if report is None else report.to_json(),
        "versions": {
            "reward_engine": __version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "safetensors": safetensors.__version__,
            "tokenizers": tokenizers.__version__,
            "python": platform.python_version(),
        },
    }
