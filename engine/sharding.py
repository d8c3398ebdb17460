"""Tensor-parallel sharding of the engine's weights: rank r's slice of each layer, of N.

Megatron-LM's split (Shoeybi et al. 2019, "Megatron-LM", section 3; the same in
megatron/core/tensor_parallel/layers.py ColumnParallelLinear / RowParallelLinear):

- q|k|v and gate|up are **column-parallel**: rank r keeps the output rows of its
  attention heads (its q heads and the KV heads those q heads read) and of its slice
  of the intermediate size (its gate rows then the same up rows, so SiLU-mul stays
  local). Rank r's fused q|k|v is again [q_r; k_r; v_r], the layout the model reads.
- o_proj and down are **row-parallel**: rank r keeps the input columns that match its
  heads / intermediate slice, and its output is a partial sum over them: one
  all-reduce after attention and one after the MLP give every rank the full result.

KV heads: with num_kv_heads >= N each rank holds num_kv_heads / N of them; with
num_kv_heads < N (N a multiple of it) each KV head is replicated on the
N / num_kv_heads ranks whose q heads read it (one KV head per rank). Either way rank
r's first KV head is r * num_kv_heads // N.

Quantization scales follow the rows they scale: per-output-channel weight scales are
sliced with column-parallel weights and kept whole by row-parallel ones; per-tensor
static activation scales (input_scale) and the KV cache's k_scale / v_scale apply to
every element and stay as they are. A dynamic (per token) activation scale of a
row-parallel layer is computed by each rank over its own slice of the row, which is a
finer scale than the unsharded layer's, not a bit-equal one. Biases of column-parallel
layers are sliced; a row-parallel bias is kept on rank 0 only (the all-reduce adds it
once).

Replicated on every rank: the norms, the embedding and the reward head (a few rows;
only rank 0 runs it). ``rank_config`` is the per-rank model shape, so the model code
runs a shard unchanged; ``merge_layer`` is the inverse of ``shard_layer``.

Pure functions on tensors: no torch.distributed here.
"""

from __future__ import annotations

import dataclasses

import torch

from .checkpoint import LayerWeights, ModelWeights
from .config import ModelConfig
from .linear import Linear, QuantizedLinear


class ShardingError(ValueError):
    """A model shape that cannot be split over the requested number of ranks."""


def check_tensor_parallel(cfg: ModelConfig, tp_size: int) -> None:
    """ShardingError unless ``cfg`` splits evenly over ``tp_size`` ranks."""
    if type(tp_size) is not int or tp_size < 1:
        raise ShardingError(f"tensor_parallel_size must be a positive int, got {tp_size!r}")
    problems = []
    if cfg.num_heads % tp_size:
        problems.append(f"num_attention_heads ({cfg.num_heads})")
    if cfg.intermediate_size % tp_size:
        problems.append(f"intermediate_size ({cfg.intermediate_size})")
    kv = cfg.num_kv_heads
    if kv % tp_size and tp_size % kv:
        problems.append(
            f"num_key_value_heads ({kv}; it must divide by N, or N by it, to be replicated)"
        )
    if problems:
        raise ShardingError(
            f"tensor_parallel_size={tp_size} does not divide {', '.join(problems)}: "
            f"choose a tensor_parallel_size that divides them"
        )


def q_heads(cfg: ModelConfig, rank: int, tp_size: int) -> range:
    """The query heads rank ``rank`` computes."""
    per_rank = cfg.num_heads // tp_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def kv_heads(cfg: ModelConfig, rank: int, tp_size: int) -> range:
    """The KV heads rank ``rank`` holds: exactly those its q heads read (a KV head
    serves num_heads // num_kv_heads consecutive q heads, as in HF's repeat_kv)."""
    per_rank = max(1, cfg.num_kv_heads // tp_size)
    first = rank * cfg.num_kv_heads // tp_size
    return range(first, first + per_rank)


def intermediate_slice(cfg: ModelConfig, rank: int, tp_size: int) -> range:
    per_rank = cfg.intermediate_size // tp_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def rank_config(cfg: ModelConfig, tp_size: int) -> ModelConfig:
    """The model shape one rank runs: its heads and intermediate slice, the full hidden
    size (so LlamaRewardModel runs a shard as it runs a whole model)."""
    check_tensor_parallel(cfg, tp_size)
    if tp_size == 1:
        return cfg
    return dataclasses.replace(
        cfg,
        num_heads=cfg.num_heads // tp_size,
        num_kv_heads=max(1, cfg.num_kv_heads // tp_size),
        intermediate_size=cfg.intermediate_size // tp_size,
    )


def _head_rows(heads: range, head_dim: int, offset: int = 0) -> torch.Tensor:
    return torch.arange(heads.start * head_dim, heads.stop * head_dim) + offset


def qkv_rows(cfg: ModelConfig, rank: int, tp_size: int) -> torch.Tensor:
    """Rows of the fused q|k|v weight rank ``rank`` keeps, in its own q|k|v order."""
    d = cfg.head_dim
    kv = kv_heads(cfg, rank, tp_size)
    return torch.cat([
        _head_rows(q_heads(cfg, rank, tp_size), d),
        _head_rows(kv, d, cfg.q_size),
        _head_rows(kv, d, cfg.q_size + cfg.kv_size),
    ])  # fmt: skip


def gate_up_rows(cfg: ModelConfig, rank: int, tp_size: int) -> torch.Tensor:
    """Rows of the fused gate|up weight rank ``rank`` keeps: its gate rows, then the
    same rows of up."""
    inter = intermediate_slice(cfg, rank, tp_size)
    rows = torch.arange(inter.start, inter.stop)
    return torch.cat([rows, rows + cfg.intermediate_size])


def _replace(linear: Linear, **changes) -> Linear:
    if isinstance(linear, QuantizedLinear):
        changes["packed"] = None  # a prepacked weight is of the old shape
    return dataclasses.replace(linear, **changes)


def column_parallel(linear: Linear, rows: torch.Tensor) -> Linear:
    """The layer restricted to output rows ``rows``: weight rows, bias and
    per-output-channel weight scales sliced; a static input scale unchanged."""
    changes = {"weight": linear.weight.index_select(0, rows)}
    if linear.bias is not None:
        changes["bias"] = linear.bias.index_select(0, rows)
    if isinstance(linear, QuantizedLinear):
        changes["weight_scale"] = linear.weight_scale.index_select(0, rows)
    return _replace(linear, **changes)


def row_parallel(linear: Linear, cols: range, keep_bias: bool) -> Linear:
    """The layer restricted to input columns ``cols``: its output is a partial sum.
    Weight scales (per output row) stay whole; the bias only where ``keep_bias``."""
    changes = {"weight": linear.weight[:, cols.start : cols.stop].contiguous()}
    if not keep_bias:
        changes["bias"] = None
    return _replace(linear, **changes)


def shard_layer(layer: LayerWeights, cfg: ModelConfig, rank: int, tp_size: int) -> LayerWeights:
    """Rank ``rank``'s slice of one decoder layer (``cfg``: the whole model's shape)."""
    check_tensor_parallel(cfg, tp_size)
    if not 0 <= rank < tp_size:
        raise ShardingError(f"rank {rank} out of range for tensor_parallel_size={tp_size}")
    if tp_size == 1:
        return layer
    heads = q_heads(cfg, rank, tp_size)
    attn_cols = range(heads.start * cfg.head_dim, heads.stop * cfg.head_dim)
    return dataclasses.replace(
        layer,
        qkv=column_parallel(layer.qkv, qkv_rows(cfg, rank, tp_size)),
        o_proj=row_parallel(layer.o_proj, attn_cols, keep_bias=rank == 0),
        gate_up=column_parallel(layer.gate_up, gate_up_rows(cfg, rank, tp_size)),
        down=row_parallel(layer.down, intermediate_slice(cfg, rank, tp_size), rank == 0),
    )


def shard_weights(weights: ModelWeights, cfg: ModelConfig, rank: int, tp_size: int) -> ModelWeights:
    """Rank ``rank``'s weights: every layer sharded, the rest shared (not copied)."""
    layers = [shard_layer(layer, cfg, rank, tp_size) for layer in weights.layers]
    return dataclasses.replace(weights, layers=layers)


# ----------------------------------------------------------------------------- merging


def _merge_column_parallel(shards: list[Linear], pieces: list[list[torch.Tensor]]) -> Linear:
    """The unsharded layer from its column-parallel shards; pieces[r] are the row ranges
    (index tensors into shard r) to take from each shard, in output order."""
    def gather(name):
        tensors = [getattr(s, name) for s in shards]
        if tensors[0] is None:
            return None
        return torch.cat([t.index_select(0, rows) for rows, t in _flatten(pieces, tensors)])

    changes = {"weight": gather("weight"), "bias": gather("bias")}
    if isinstance(shards[0], QuantizedLinear):
        changes["weight_scale"] = gather("weight_scale")
    return _replace(shards[0], **changes)


def _flatten(pieces, tensors):
    """(rows, tensor) in output order: every shard's first piece, then every second..."""
    return [(pieces[r][i], tensors[r]) for i in range(len(pieces[0])) for r in range(len(pieces))
            if pieces[r][i].numel()]  # fmt: skip


def merge_layer(shards: list[LayerWeights], cfg: ModelConfig) -> LayerWeights:
    """The unsharded layer from all ranks' shards, in rank order (a replicated KV head
    is read from the first rank that holds it)."""
    tp_size = len(shards)
    if tp_size == 1:
        return shards[0]
    rcfg = rank_config(cfg, tp_size)
    q_r, kv_r = rcfg.q_size, rcfg.kv_size
    seen_kv: set[int] = set()
    qkv_pieces = []
    for rank in range(tp_size):
        first_kv = kv_heads(cfg, rank, tp_size).start
        new_kv = first_kv not in seen_kv
        seen_kv.add(first_kv)
        kv_rows = torch.arange(kv_r) if new_kv else torch.arange(0)
        qkv_pieces.append([torch.arange(q_r), q_r + kv_rows, q_r + kv_r + kv_rows])
    inter = rcfg.intermediate_size
    gate_up_pieces = [[torch.arange(inter), inter + torch.arange(inter)]] * tp_size

    def merge_row_parallel(parts: list[Linear]) -> Linear:
        weight = torch.cat([p.weight for p in parts], dim=1)
        return _replace(parts[0], weight=weight)  # rank 0's bias and scales: the whole ones

    return dataclasses.replace(
        shards[0],
        qkv=_merge_column_parallel([s.qkv for s in shards], qkv_pieces),
        o_proj=merge_row_parallel([s.o_proj for s in shards]),
        gate_up=_merge_column_parallel([s.gate_up for s in shards], gate_up_pieces),
        down=merge_row_parallel([s.down for s in shards]),
    )
