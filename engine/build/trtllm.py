"""Output format "trtllm": a TensorRT-LLM checkpoint (engine/trtllm_checkpoint.py).

The directory `trtllm-build --checkpoint_dir` reads: config.json and one
rank{r}.safetensors per tensor-parallel rank, named and shaped as the format's table
(``engine.trtllm_checkpoint.TENSORS``) says; plus reward_head.json, the tokenizer files
and, for quantized builds, the accuracy report.

Each rank's slice of a layer is engine/sharding.py's (Megatron-style: q|k|v and
gate|up by rows with KV heads repeated when fewer than the ranks, o_proj and down by
columns), which is also TensorRT-LLM's (models/llama/convert.py). --quantization fp8
quantizes as TensorRT-LLM's FP8Linear stores it: one weight scale and one static input
scale per linear (qkv, dense, fc, gate, proj), the same on every rank; an FP8 KV cache
has one scale per layer for keys and values (the larger of the two calibrated ones).
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__
from ..config import CAUSAL_LM
from ..engine_dir import TOKENIZER_FILES
from ..hardware import dtype_name
from ..linear import QuantizedLinear
from ..safetensors_io import SafetensorsWriter
from ..sharding import shard_layer
from ..trtllm_checkpoint import (
    CONFIG,
    REWARD_HEAD,
    Quantization,
    RankDims,
    rank_file,
    tensor_plan,
    trtllm_config,
)
from .pipeline import BuildError, BuildPlan, BuildResult, Sink, prepare, run
from .settings import BuildSettings

DEFAULT_MAX_NUM_TOKENS = 8192


def export_trtllm(
    checkpoint: str | Path,
    output: str | Path,
    settings: BuildSettings,
    *,
    force: bool = False,
    progress: bool = True,
) -> BuildResult:
    """Write a TensorRT-LLM checkpoint of an HF checkpoint (module docstring)."""
    if settings.format != "trtllm":
        raise ValueError(f"export_trtllm writes the trtllm format; got format={settings.format!r}")
    plan = prepare(Path(checkpoint), settings)
    cfg = plan.cfg
    if cfg.attention_bias or cfg.mlp_bias:
        raise BuildError("--format trtllm writes bias-free Llama checkpoints; this one has "
                         "attention_bias or mlp_bias")  # fmt: skip
    try:
        RankDims.of(cfg, settings.tensor_parallel_size)
    except ValueError as exc:
        raise BuildError(str(exc)) from None
    return run(plan, TrtllmSink(plan), output, force, progress)


def quantization(plan: BuildPlan) -> Quantization:
    return Quantization(fp8=plan.fmt.quantization == "fp8", kv_fp8=plan.fmt.kv_cache_scales)


class TrtllmSink(Sink):
    def __init__(self, plan: BuildPlan):
        self.tp = plan.settings.tensor_parallel_size
        self.quant = quantization(plan)

    def scale_rows(self, cfg):
        # one scale per TensorRT-LLM linear: q|k|v together, fc and gate apart
        h, inter = cfg.hidden_size, cfg.intermediate_size
        return {"qkv": [cfg.q_size + 2 * cfg.kv_size], "o_proj": [h], "gate_up": [inter, inter],
                "down": [h]}  # fmt: skip

    def stored(self, layer):
        if layer.k_scale is None:
            return layer
        scale = torch.maximum(layer.k_scale, layer.v_scale)
        return dataclasses.replace(layer, k_scale=scale, v_scale=scale.clone())

    def open(self, plan: BuildPlan, writer) -> None:
        self.plan, self.writer = plan, writer
        self.dims = RankDims.of(plan.cfg, self.tp)
        tensors = tensor_plan(plan.cfg, self.tp, plan.dtype, self.quant)
        self.files = [SafetensorsWriter(writer.path(rank_file(r)), tensors, {"format": "pt"})
                      for r in range(self.tp)]  # fmt: skip

    def embedding(self, embed):
        for f in self.files:
            f.write("transformer.vocab_embedding.weight", embed)

    def layer(self, i, layer):
        cfg, inter = self.plan.cfg, self.dims.inter
        p = f"transformer.layers.{i}."
        for r, f in enumerate(self.files):
            s = shard_layer(layer, cfg, r, self.tp)
            gate_up = s.gate_up
            f.write(p + "input_layernorm.weight", s.input_norm)
            self._linear(f, p + "attention.qkv", s.qkv, slice(None))
            if self.quant.kv_fp8:
                f.write(p + "attention.kv_cache_scaling_factor", s.k_scale.reshape(1))
            self._linear(f, p + "attention.dense", s.o_proj, slice(None))
            f.write(p + "post_layernorm.weight", s.post_norm)
            self._linear(f, p + "mlp.fc", gate_up, slice(0, inter))  # HF gate_proj rows
            self._linear(f, p + "mlp.gate", gate_up, slice(inter, 2 * inter))  # HF up_proj rows
            self._linear(f, p + "mlp.proj", s.down, slice(None))

    def _linear(self, f, name, lin, rows: slice):
        f.write(name + ".weight", lin.weight[rows].contiguous())
        if isinstance(lin, QuantizedLinear):
            scale = lin.weight_scale[rows]
            assert torch.equal(scale, scale[:1].expand_as(scale)), "per-tensor scale expected"
            f.write(name + ".weights_scaling_factor", scale[:1].clone())
            f.write(name + ".activation_scaling_factor", lin.input_scale.reshape(1).clone())

    def tail(self, final_norm, head_rows):
        rows_per_rank = self.dims.head_rows
        for r, f in enumerate(self.files):
            f.write("transformer.ln_f.weight", final_norm)
            # the reward rows first, then zeros (engine/trtllm_checkpoint.py docstring)
            part = torch.zeros(rows_per_rank, head_rows.shape[1], dtype=head_rows.dtype)
            mine = head_rows[r * rows_per_rank : (r + 1) * rows_per_rank]
            part[: mine.shape[0]] = mine
            f.write("lm_head.weight", part)

    def discard(self):
        for f in self.files:
            f.discard()

    def close(self, report):
        plan, writer = self.plan, self.writer
        for r, f in enumerate(self.files):
            writer.record(rank_file(r), f.close())
        cfg = plan.cfg
        writer.write_json(CONFIG, trtllm_config(cfg, self.tp, dtype_name(plan.dtype), self.quant,
                                                plan.max_len))  # fmt: skip
        writer.write_json(REWARD_HEAD, {
            "producer": {"name": "reward-engine", "version": __version__},
            "rows": plan.head_rows,
            "source_architecture": cfg.architecture,
            "reward_token_ids": list(plan.reward_token_ids) if cfg.head_kind == CAUSAL_LM else None,
            "labels": _labels(plan),
            "read": f"the reward is context_logits[last position, 0:{plan.head_rows}] of an "
                    "engine built with --gather_context_logits",
        })  # fmt: skip
        for name in TOKENIZER_FILES:
            if (plan.source / name).is_file():
                writer.copy(plan.source / name)
        return None


def _labels(plan: BuildPlan) -> list[str] | None:
    id2label = plan.raw_config.get("id2label")
    if plan.cfg.head_kind == CAUSAL_LM or not isinstance(id2label, dict):
        return None
    return [str(id2label.get(str(i), id2label.get(i, i))) for i in range(plan.head_rows)]


# ----------------------------------------------------------------------------- trtllm-build


def trtllm_build_command(checkpoint_dir: str | Path, engine_dir: str | Path, *, fp8: bool,
                         max_seq_len: int, max_num_tokens: int = DEFAULT_MAX_NUM_TOKENS,
                         max_batch_size: int = 64) -> list[str]:  # fmt: skip
    """The trtllm-build command for a reward engine (README "Running on TensorRT-LLM"):
    paged context FMHA (chunked prefill of long conversations), FP8 context FMHA for
    FP8 checkpoints, and the context logits gathered, where the reward is."""
    cmd = [
        "trtllm-build",
        "--checkpoint_dir", str(checkpoint_dir),
        "--output_dir", str(engine_dir),
        "--gemm_plugin", "auto",
        "--kv_cache_type", "paged",
        "--use_paged_context_fmha", "enable",
        "--gather_context_logits",
        "--max_batch_size", str(max_batch_size),
        "--max_seq_len", str(max_seq_len),
        "--max_num_tokens", str(min(max_num_tokens, max_batch_size * max_seq_len)),
    ]  # fmt: skip
    if fp8:
        cmd += ["--use_fp8_context_fmha", "enable"]
    return cmd


def run_trtllm_build(command: list[str], stream=None) -> int | None:
    """Runs trtllm-build when it is on PATH (returns its exit status); otherwise prints
    the command and returns None. Nothing here pretends to have run it."""
    stream = stream or sys.stderr
    if shutil.which(command[0]) is None:
        print(f"{command[0]} is not on PATH (TensorRT-LLM is not installed here); on a machine "
              f"with TensorRT-LLM run:\n  {shlex.join(command)}", file=stream)  # fmt: skip
        return None
    print(f"running: {shlex.join(command)}", file=stream)
    return subprocess.run(command, check=False).returncode
