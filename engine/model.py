"""Llama reward model over a packed varlen batch (flat tokens, no padding).

The forward pass matches HF transformers' LlamaForSequenceClassification /
LlamaForCausalLM (modeling_llama.py) layer by layer, with three differences that
do not change the result:
  - q|k|v and gate|up are fused matmuls (weights fused at load);
  - the residual add is fused into the next RMSNorm (`fused_add_rms_norm`);
  - the final layer computes attention output, o_proj and the MLP only for each
    sequence's last token: no other token's hidden state reaches the reward head.
The batch metadata (positions, query_start_loc, context lengths) is the one the
paged KV cache uses, so paged attention replaces `varlen_causal_attention` without
restructuring this file.
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
    """Where each sequence's tokens sit in the flat batch.

    Sequence s owns rows query_start_loc[s]:query_start_loc[s+1] of the batch; its
    context length is its total length so far (cached + new tokens). Host-side
    lists travel beside the tensors so per-layer code never syncs a device.
    """

    positions: torch.Tensor  # [T] int64 absolute position of each token
    query_start_loc: torch.Tensor  # [S+1] int32
    context_lens: torch.Tensor  # [S] int32
    query_start_loc_host: list[int]
    last_token_indices: torch.Tensor  # [S] int64 row of each sequence's last token

    @classmethod
    def from_lengths(cls, lengths: list[int], device="cpu") -> BatchMetadata:
        """Metadata for full prefills of sequences of the given lengths."""
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        loc = torch.tensor(starts, dtype=torch.int32)
        lens = torch.tensor(lengths, dtype=torch.int32)
        # positions restart at 0 for every sequence: arange(T) minus each row's start
        seq_start = torch.repeat_interleave(loc[:-1].long(), lens.long())
        positions = torch.arange(starts[-1], dtype=torch.int64) - seq_start
        return cls(
            positions=positions.to(device),
            query_start_loc=loc.to(device),
            context_lens=lens.to(device),
            query_start_loc_host=starts,
            last_token_indices=(loc[1:].long() - 1).to(device),
        )

    @property
    def num_seqs(self) -> int:
        return len(self.query_start_loc_host) - 1


def _linear(x, weight, bias):
    return F.linear(x, weight, bias)


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

    def _attention(self, layer: LayerWeights, x, meta: BatchMetadata, last_only: bool):
        cfg = self.cfg
        qkv = _linear(x, layer.qkv, layer.qkv_bias)
        t = qkv.shape[0]
        q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size :].view(t, cfg.num_kv_heads, cfg.head_dim)
        kernels.rope(q, k, meta.positions, self.cos_sin_cache)
        if last_only:
            q = q[meta.last_token_indices]
            q_loc = list(range(meta.num_seqs + 1))
        else:
            q_loc = meta.query_start_loc_host
        out = kernels.varlen_causal_attention(
            q, k, v, q_loc, meta.query_start_loc_host, self.scale
        )
        return _linear(out.reshape(out.shape[0], cfg.q_size), layer.o_proj, layer.o_bias)

    def _mlp(self, layer: LayerWeights, x):
        gate_up = _linear(x, layer.gate_up, layer.gate_up_bias)
        return _linear(kernels.silu_mul(gate_up), layer.down, layer.down_bias)

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, meta: BatchMetadata) -> torch.Tensor:
        """Final-norm hidden state of each sequence's last token: [S, hidden]."""
        eps = self.cfg.rms_norm_eps
        layers = self.w.layers
        residual = F.embedding(input_ids, self.w.embed)
        x = kernels.rms_norm(residual, layers[0].input_norm, eps)
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            attn = self._attention(layer, x, meta, last_only=last)
            if last:
                residual = residual[meta.last_token_indices]
            x = kernels.fused_add_rms_norm(attn, residual, layer.post_norm, eps)
            mlp = self._mlp(layer, x)
            next_norm = self.w.final_norm if last else layers[i + 1].input_norm
            x = kernels.fused_add_rms_norm(mlp, residual, next_norm, eps)
        return x

    @torch.inference_mode()
    def rewards(self, input_ids: torch.Tensor, meta: BatchMetadata) -> torch.Tensor:
        """Reward head on the last tokens: [S, num_labels] float32.

        The head runs in the compute dtype like HF's `score` / `lm_head` Linear, so
        bf16 rewards round where HF's do; the result is returned in fp32.
        """
        hidden = self.hidden_states(input_ids, meta)
        return F.linear(hidden, self.w.head).float()
