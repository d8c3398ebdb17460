"""Llama reward model over a packed varlen batch (flat tokens, no padding).

The forward pass matches HF transformers' LlamaForSequenceClassification /
LlamaForCausalLM (modeling_llama.py) layer by layer, with three differences that
do not change the result:
  - q|k|v and gate|up are fused matmuls (weights fused at load);
  - the residual add is fused into the next RMSNorm (`fused_add_rms_norm`);
  - the final layer computes attention output, o_proj and the MLP only for each
    sequence's last token: no other token's hidden state reaches the reward head.
Attention goes through the paged KV cache: every layer writes the keys and values
of all new tokens (`rope_and_cache`) and attends over the cache
(`paged_prefill_attention`), so a chunk can continue a sequence whose earlier
tokens came from an earlier step or from the prefix cache. A chunk that does not
end its sequence needs no output at all: in the final layer its tokens only write
their keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels

from .checkpoint import LayerWeights, ModelWeights
from .config import ModelConfig


@dataclass(slots=True)
class BatchMetadata:
    """Where each sequence's new tokens sit in the flat batch and in the KV cache.

    Sequence s owns rows query_start_loc[s]:query_start_loc[s+1] of the batch (its
    new tokens); context_lens[s] counts its cached and new tokens, so its new tokens
    sit at positions context_len - query_len .. context_len - 1. Every new token's
    key and value go to slot_mapping[t] of each layer's cache. The final layer only
    computes the rows in last_token_indices (the last token of each sequence that
    finishes in this step); the last_* fields describe those rows as sequences of
    one query token each. engine/runner.py builds this record.
    """

    positions: torch.Tensor  # [T] int64 absolute position of each token
    slot_mapping: torch.Tensor  # [T] int64 cache slot of each token
    query_start_loc: torch.Tensor  # [S+1] int64
    context_lens: torch.Tensor  # [S] int64
    block_tables: torch.Tensor  # [S, max_blocks] int32
    last_token_indices: torch.Tensor  # [N] int64 rows whose hidden state is the output
    last_block_tables: torch.Tensor  # [N, max_blocks] int32
    last_context_lens: torch.Tensor  # [N] int64
    last_query_start_loc: torch.Tensor  # [N+1] int64: 0, 1, .., N

    @property
    def num_outputs(self) -> int:
        return self.last_token_indices.shape[0]


def _linear(x, weight, bias, out=None):
    """x @ weight^T (+ bias); written into ``out`` (a reused step buffer) when given."""
    if out is None:
        return F.linear(x, weight, bias)
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


class LlamaRewardModel:
    """Runs fused weights through the `kernels` ops; holds no autograd state."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, max_position: int | None = None):
        self.cfg = cfg
        self.w = weights
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.max_position = max_position or cfg.max_position_embeddings
        self.cos_sin_cache = kernels.compute_cos_sin_cache(
            cfg.head_dim, self.max_position, cfg.rope_theta, cfg.rope_scaling
        ).to(self.device)
        self.scale = cfg.head_dim**-0.5
        self._buffers: dict[str, torch.Tensor] = {}

    def _buffer(self, name: str, rows: int, cols: int) -> torch.Tensor:
        """A [rows, cols] activation buffer that every layer of every step reuses.

        On CPU a freshly allocated large tensor is page-faulted in on first write and
        given back to the OS when freed (glibc serves big blocks with mmap): per layer
        that costs about as much as a fused elementwise kernel. Reusing a few
        step-sized buffers avoids it. Not thread-safe: one forward at a time.
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty((rows, cols), dtype=self.dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:rows]

    def _attention(
        self, layer: LayerWeights, x, meta: BatchMetadata, key_cache, value_cache, last_only: bool
    ):
        cfg = self.cfg
        t = x.shape[0]
        qkv = _linear(x, layer.qkv, layer.qkv_bias, self._buffer("qkv", t, layer.qkv.shape[0]))
        q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size :].view(t, cfg.num_kv_heads, cfg.head_dim)
        kernels.rope_and_cache(
            q, k, v, meta.positions, self.cos_sin_cache, key_cache, value_cache, meta.slot_mapping
        )
        if last_only:
            if meta.num_outputs == 0:
                return None
            out = kernels.paged_prefill_attention(
                q[meta.last_token_indices], key_cache, value_cache, meta.last_block_tables,
                meta.last_query_start_loc, meta.last_context_lens, self.scale,
            )  # fmt: skip
        else:
            out = kernels.paged_prefill_attention(
                q, key_cache, value_cache, meta.block_tables, meta.query_start_loc,
                meta.context_lens, self.scale,
            )  # fmt: skip
        # x (the layer input, in the "hidden" buffer) is dead once qkv exists.
        hidden = None if last_only else self._buffer("hidden", t, cfg.hidden_size)
        return _linear(out.reshape(out.shape[0], cfg.q_size), layer.o_proj, layer.o_bias, hidden)

    def _mlp(self, layer: LayerWeights, x, reuse: bool):
        """SwiGLU MLP. With ``reuse``, the output overwrites the "hidden" buffer (x's)."""
        rows = x.shape[0]
        if not reuse:
            gate_up = _linear(x, layer.gate_up, layer.gate_up_bias)
            return _linear(kernels.silu_mul(gate_up), layer.down, layer.down_bias)
        inter = layer.down.shape[1]
        gate_up = _linear(
            x, layer.gate_up, layer.gate_up_bias, self._buffer("gate_up", rows, 2 * inter)
        )
        act = kernels.silu_mul(gate_up, out=self._buffer("act", rows, inter))
        return _linear(act, layer.down, layer.down_bias, self._buffer("hidden", rows, x.shape[1]))

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache) -> torch.Tensor:
        """Write every new token's K/V into ``kv_cache`` (per-layer ``key_caches`` /
        ``value_caches``); return the final-norm hidden state of the rows in
        ``meta.last_token_indices``: [N, hidden]."""
        eps = self.cfg.rms_norm_eps
        layers = self.w.layers
        residual = F.embedding(input_ids, self.w.embed)
        rows = input_ids.shape[0]
        x = kernels.rms_norm(
            residual, layers[0].input_norm, eps, out=self._buffer("hidden", rows, residual.shape[1])
        )
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            attn = self._attention(
                layer, x, meta, kv_cache.key_caches[i], kv_cache.value_caches[i], last_only=last
            )
            if attn is None:  # no sequence ends in this step: K/V written, nothing to output
                return x.new_empty((0, self.cfg.hidden_size))
            if last:
                residual = residual[meta.last_token_indices]
            # Norms run in place: each output overwrites its input buffer.
            x = kernels.fused_add_rms_norm(attn, residual, layer.post_norm, eps, out=attn)
            mlp = self._mlp(layer, x, reuse=not last)
            next_norm = self.w.final_norm if last else layers[i + 1].input_norm
            x = kernels.fused_add_rms_norm(mlp, residual, next_norm, eps, out=mlp)
        return x

    @torch.inference_mode()
    def rewards(self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache) -> torch.Tensor:
        """Reward head on the output rows: [N, num_labels] float32.

        The head runs in the compute dtype like HF's `score` / `lm_head` Linear, so
        bf16 rewards round where HF's do; the result is returned in fp32.
        """
        hidden = self.hidden_states(input_ids, meta, kv_cache)
        return F.linear(hidden, self.w.head).float()
