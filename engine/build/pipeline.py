"""The build pipeline shared by every output format: check, stream, quantize, calibrate.

The checkpoint is checked whole before anything is written (config, every tensor's
name, shape and dtype, the reward head, the calibration file). Then tensors stream
from the checkpoint to the output format's ``Sink`` in order: the embedding, each
layer (read, fused, quantized, handed over, freed), the final norm and the head.
Peak memory is about one layer of weights, or the largest single tensor, plus the
calibration activations.

Quantized builds (and FP8 KV caches) run the calibration set through the model as
they go (engine/build/layerwise.py): the unquantized layer first, recording the
largest |x| at every GEMM input and in the KV cache (the static scales), then the
quantized layer on its own activations, so that after the last layer both models'
rewards are known for the accuracy report.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from ..chat import ChatFormatter
from ..checkpoint import CheckpointReader, LayerWeights, load_head, load_layer
from ..config import CAUSAL_LM, ModelConfig
from ..engine_dir import LINEARS, WeightFormat, is_engine_dir, linear_shapes
from ..hardware import resolve_dtype
from ..sharding import ShardingError, check_tensor_parallel
from .calibration import CalibrationSet, load_calibration
from .layerwise import InputSpec, LayerObservations, NextLayer, Stream, make_batches, shell_model
from .quantize import quantize_linear, static_input_scale
from .report import AccuracyReport, accuracy_report, write_report
from .settings import BuildSettings
from .writer import DirectoryWriter

logger = logging.getLogger(__name__)

CALIBRATION_BATCH_TOKENS = 2048


class BuildError(ValueError):
    """A checkpoint or setting the builder cannot use; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class BuildResult:
    path: Path
    report: AccuracyReport | None
    seconds: float


@dataclass(slots=True)
class BuildPlan:
    """Everything checked and decided before the first byte is written."""

    source: Path
    settings: BuildSettings
    cfg: ModelConfig
    raw_config: dict
    reader: CheckpointReader
    dtype: torch.dtype
    dtype_reason: str
    reward_token_ids: tuple[int, ...]
    head_rows: int
    max_len: int
    fmt: WeightFormat
    chat: ChatFormatter | None
    calibration: CalibrationSet | None

    @property
    def describe(self) -> str:
        """What the build quantizes, in words: "fp8 W8A8 (static activation scales)"."""
        s, parts = self.settings, []
        if s.quantization != "none":
            parts.append(f"{s.quantization} W8A8 ({s.resolved_activation_scales} activation "
                         "scales)")  # fmt: skip
        if s.kv_cache_dtype == "fp8":
            parts.append("FP8 KV cache")
        return " + ".join(parts) or "unquantized"


class Sink:
    """An output format: receives the tensors in order and writes them.

    ``projection_scales``: the format stores one weight scale per HF projection (q, k,
    v, gate, up, down) instead of per output channel; the pipeline then quantizes
    each projection with one scale (expanded to its rows in the fused layer)."""

    projection_scales = False

    def scale_rows(self, cfg: ModelConfig) -> dict[str, list[int]]:
        """Per fused layer, the row counts that share one weight scale (a layer not
        named: one scale per output channel)."""
        return projection_rows(cfg) if self.projection_scales else {}

    def stored(self, layer: LayerWeights) -> LayerWeights:
        """The quantized layer as the format can store it; the calibration runs the
        built model with this, so the accuracy report is the format's."""
        return layer

    def open(self, plan: BuildPlan, writer: DirectoryWriter) -> None: ...
    def embedding(self, embed: torch.Tensor) -> None: ...
    def layer(self, i: int, layer: LayerWeights) -> None: ...
    def tail(self, final_norm: torch.Tensor, head_rows: torch.Tensor) -> None: ...
    def close(self, report: AccuracyReport | None) -> dict | None:
        """Finishes the files; returns the manifest (None: the format has none)."""
    def discard(self) -> None: ...


def prepare(source: Path, settings: BuildSettings) -> BuildPlan:
    """Every check that can fail, before anything is written."""
    if not source.is_dir():
        raise BuildError(f"checkpoint directory not found: {source}")
    if is_engine_dir(source):
        raise BuildError(f"{source} is already an engine directory: build from the HF checkpoint")
    try:
        cfg = ModelConfig.from_pretrained(source)
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(f"cannot read {source}/config.json: {exc}") from None
    raw = json.loads((source / "config.json").read_text())
    if "quantization_config" in raw or (source / "hf_quant_config.json").exists():
        raise BuildError(
            f"{source} is already quantized: load it directly (RewardEngine.from_pretrained "
            "reads ModelOpt and compressed-tensors FP8 checkpoints) or build from the "
            "unquantized checkpoint"
        )
    dtype, why = resolve_dtype(settings.dtype, "cpu")
    if cfg.head_kind == CAUSAL_LM:
        token_ids = tuple(settings.reward_token_ids or (0,))
    elif settings.reward_token_ids is not None:
        raise BuildError(f"--reward-token-ids applies to LlamaForCausalLM; {cfg.architecture} "
                         "has a score head")  # fmt: skip
    else:
        token_ids = ()
    try:
        check_tensor_parallel(cfg, settings.tensor_parallel_size)
    except ShardingError as exc:
        raise BuildError(f"--tp {settings.tensor_parallel_size}: {exc}") from None
    try:
        reader = CheckpointReader(source)
        reader.validate(cfg, token_ids or (0,))
    except (OSError, ValueError, KeyError) as exc:
        raise BuildError(str(exc)) from None
    max_len = min(settings.max_model_len or cfg.max_position_embeddings,
                  cfg.max_position_embeddings)  # fmt: skip
    chat = ChatFormatter.from_pretrained(source) if (source / "tokenizer.json").is_file() else None
    calibration = None
    if settings.needs_calibration:
        calibration = load_calibration(settings.calibration, chat, settings.calibration_size,
                                       max_len)  # fmt: skip
    fmt = WeightFormat(
        dtype=dtype,
        quantization=settings.quantization,
        static_input_scales=settings.resolved_activation_scales == "static",
        kv_cache_scales=settings.kv_cache_dtype == "fp8",
    )
    head_rows = len(token_ids) if cfg.head_kind == CAUSAL_LM else cfg.num_labels
    return BuildPlan(source, settings, cfg, raw, reader, dtype, why, token_ids, head_rows,
                     max_len, fmt, chat, calibration)  # fmt: skip


def run(plan: BuildPlan, sink: Sink, output, force: bool, progress: bool) -> BuildResult:
    """Streams the checkpoint through ``sink`` into ``output`` (atomically)."""
    start = time.perf_counter()
    writer = DirectoryWriter(output, force=force)
    try:
        sink.open(plan, writer)
        try:
            report = _stream(plan, sink, progress)
        except BaseException:
            sink.discard()
            raise
        manifest = sink.close(report)
        if report is not None:
            for name in write_report(report, writer.tmp):
                writer.record(name)
        path = writer.commit(manifest)
    except BaseException:
        writer.abort()
        raise
    if report is not None:
        level = logging.WARNING if report.agreement_is_low else logging.INFO
        logger.log(level, "accuracy: %s", report.summary())
    return BuildResult(path, report, time.perf_counter() - start)


@dataclass(slots=True)
class _Streams:
    dense: Stream
    built: Stream
    next_qkv_amax: float  # the coming layer's q|k|v input range, seen in the dense stream


def _stream(plan: BuildPlan, sink: Sink, progress: bool) -> AccuracyReport | None:
    cfg, reader, dtype = plan.cfg, plan.reader, plan.dtype
    embed = reader.get("model.embed_tokens.weight", dtype)
    sink.embedding(embed)
    streams = _start_streams(plan, embed, sink) if plan.calibration else None
    del embed
    bar = tqdm(total=cfg.num_layers, desc="building", unit="layer", disable=not progress)
    for i in range(cfg.num_layers):
        dense = load_layer(reader, i, dtype)
        sink.layer(i, _build_layer(plan, sink, i, dense, streams))
        del dense
        bar.update(1)
    bar.close()
    final_norm = reader.get("model.norm.weight", dtype)
    head = load_head(reader, cfg, dtype, plan.reward_token_ids or (0,))
    sink.tail(final_norm, head)
    if streams is None:
        return None
    groups = [len(g) for g in plan.calibration.groups]
    return accuracy_report(streams.dense.rewards(head), streams.built.rewards(head), groups,
                           plan.describe, plan.calibration.source)  # fmt: skip


def _start_streams(plan: BuildPlan, embed: torch.Tensor, sink: Sink) -> _Streams:
    cfg, dtype = plan.cfg, plan.dtype
    model = shell_model(cfg, dtype, plan.max_len)
    model.w.embed = embed
    batches = make_batches(plan.calibration.sequences, CALIBRATION_BATCH_TOKENS)
    kv_dtype = torch.float8_e4m3fn if plan.fmt.kv_cache_scales else dtype
    dense = Stream(model, batches, dtype)
    built = Stream(model, batches, kv_dtype)
    norm0 = plan.reader.get("model.layers.0.input_layernorm.weight", dtype)
    amax = dense.start(NextLayer(norm0, InputSpec()))
    built.start(NextLayer(norm0, _input_spec(plan, amax)))
    model.w.embed = torch.empty(0, cfg.hidden_size, dtype=dtype)  # no longer needed
    return _Streams(dense, built, amax)


def _input_spec(plan: BuildPlan, amax: float) -> InputSpec:
    q = plan.fmt.quantization
    if q == "none":
        return InputSpec()
    return InputSpec(q, static_input_scale(amax, q) if plan.fmt.static_input_scales else None)


def _build_layer(plan: BuildPlan, sink: Sink, i: int, dense: LayerWeights, streams):
    """Layer i as the output stores it; with calibration, both models run through it."""
    if streams is None:
        return _quantize_layer(plan, sink, dense, None, None)
    last = i == plan.cfg.num_layers - 1
    if last:
        streams.dense.model.w.final_norm = plan.reader.get("model.norm.weight", plan.dtype)
        next_norm = None
    else:
        next_norm = plan.reader.get(f"model.layers.{i + 1}.input_layernorm.weight", plan.dtype)
    observed = LayerObservations()
    qkv_amax = streams.next_qkv_amax
    streams.dense.run_layer(dense, None if last else NextLayer(next_norm, InputSpec()), observed)
    streams.next_qkv_amax = observed.next_qkv
    built = _quantize_layer(plan, sink, dense, observed, qkv_amax)
    next_layer = None if last else NextLayer(next_norm, _input_spec(plan, observed.next_qkv))
    streams.built.run_layer(built, next_layer, None)
    return built


def _quantize_layer(plan: BuildPlan, sink: Sink, dense: LayerWeights, observed, qkv_amax):
    fmt = plan.fmt
    layer = dense
    if fmt.quantization != "none":
        split = sink.scale_rows(plan.cfg)

        def amax(name):
            if not fmt.static_input_scales:
                return None
            return qkv_amax if name == "qkv" else getattr(observed, name)

        layer = replace(
            dense,
            **{n: quantize_linear(getattr(dense, n), fmt.quantization, amax(n), plan.dtype,
                                  split.get(n)) for n in LINEARS},
        )  # fmt: skip
    if fmt.kv_cache_scales:
        layer = replace(
            layer,
            k_scale=static_input_scale(observed.key, "fp8"),
            v_scale=static_input_scale(observed.value, "fp8"),
        )
    return sink.stored(layer)


def projection_rows(cfg: ModelConfig) -> dict[str, list[int]]:
    """Rows of each HF projection in the fused layers (q, k, v; gate, up; o; down)."""
    shapes = linear_shapes(cfg)
    return {
        "qkv": [cfg.q_size, cfg.kv_size, cfg.kv_size],
        "o_proj": [shapes["o_proj"][0]],
        "gate_up": [cfg.intermediate_size, cfg.intermediate_size],
        "down": [shapes["down"][0]],
    }
