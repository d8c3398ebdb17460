"""Llama reward model over a packed varlen batch (flat tokens, no padding).

The forward pass matches HF transformers' LlamaForSequenceClassification /
LlamaForCausalLM (modeling_llama.py) layer by layer, with three differences that
do not change the result:
  - q|k|v and gate|up are fused matmuls (weights fused at load or build time);
  - the residual add is fused into the next RMSNorm (`fused_add_rms_norm`);
  - the final layer computes attention output, o_proj and the MLP only for each
    sequence's last token: no other token's hidden state reaches the reward head.
Attention goes through the paged KV cache: every layer writes the keys and values
of all new tokens (`rope_and_cache`) and attends over the cache
(`paged_prefill_attention`), so a chunk can continue a sequence whose earlier
tokens came from an earlier step or from the prefix cache. A chunk that does not
end its sequence needs no output at all: in the final layer its tokens only write
their keys and values. With an FP8 (E4M3) cache the two ops get each layer's
k_scale / v_scale (1.0 where the weights hold none: uncalibrated, with a warning).

The linear layers are whatever the weights hold (engine/linear.py): dense, FP8 or
INT8 W8A8. A quantized layer's input is quantized by the kernel that produces it
(RMSNorm before q|k|v and gate|up, SiLU-mul before down), with the layer's static
scale or per token; only o_proj's input, the attention output, is quantized apart.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import kernels

from .checkpoint import LayerWeights, ModelWeights
from .config import ModelConfig
from .linear import QUANTIZED_DTYPES, DenseLinear, QuantizedActivation, batch_invariant

logger = logging.getLogger(__name__)


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


class LlamaRewardModel:
    """Runs fused weights through the `kernels` ops; holds no autograd state.

    deterministic: every dense product, the reward head's included, runs batch-invariant
    (engine/linear.py batch_invariant), so a sequence's reward is the same bits whatever
    else shares its steps; the other kernels work per row already (README).
    """

    def __init__(
        self,
        cfg: ModelConfig,
        weights: ModelWeights,
        max_position: int | None = None,
        deterministic: bool = False,
    ):
        self.cfg = cfg
        self.deterministic = deterministic
        self.head = DenseLinear(weights.head)
        if deterministic:  # the one switch: every dense product batch-invariant
            weights = replace(weights, layers=[
                replace(layer, **{k: batch_invariant(v) for k, v in layer.linears().items()})
                for layer in weights.layers
            ])  # fmt: skip
            self.head = batch_invariant(self.head)
        self.w = weights
        self.dtype = weights.embed.dtype
        self.device = weights.embed.device
        self.max_position = max_position or cfg.max_position_embeddings
        self.cos_sin_cache = kernels.compute_cos_sin_cache(
            cfg.head_dim, self.max_position, cfg.rope_theta, cfg.rope_scaling
        ).to(self.device)
        self.scale = cfg.head_dim**-0.5
        self._buffers: dict[str, torch.Tensor] = {}
        self._uncalibrated_kv_scale: torch.Tensor | None = None

    def _buffer(self, name: str, rows: int, cols: int, dtype=None) -> torch.Tensor:
        """A [rows, cols] activation buffer that every layer of every step reuses.

        On CPU a freshly allocated large tensor is page-faulted in on first write and
        given back to the OS when freed (glibc serves big blocks with mmap): per layer
        that costs about as much as a fused elementwise kernel. Reusing a few
        step-sized buffers avoids it. Not thread-safe: one forward at a time.
        ``dtype``: the compute dtype unless given (the int8 / E4M3 codes of W8A8 inputs).
        """
        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty((rows, cols), dtype=dtype or self.dtype, device=self.device)
            self._buffers[name] = buf
        return buf[:rows]

    def _attention(
        self, layer: LayerWeights, x, meta: BatchMetadata, key_cache, value_cache, last_only: bool
    ):
        cfg = self.cfg
        t = x.shape[0]
        qkv = layer.qkv(x, self._buffer("qkv", t, layer.qkv.out_features))
        q = qkv[:, : cfg.q_size].view(t, cfg.num_heads, cfg.head_dim)
        k = qkv[:, cfg.q_size : cfg.q_size + cfg.kv_size].view(t, cfg.num_kv_heads, cfg.head_dim)
        v = qkv[:, cfg.q_size + cfg.kv_size :].view(t, cfg.num_kv_heads, cfg.head_dim)
        kv_scales = self._kv_scales(layer, key_cache)
        kernels.rope_and_cache(
            q, k, v, meta.positions, self.cos_sin_cache, key_cache, value_cache,
            meta.slot_mapping, **kv_scales,
        )  # fmt: skip
        if last_only:
            if meta.num_outputs == 0:
                return None
            out = kernels.paged_prefill_attention(
                q[meta.last_token_indices], key_cache, value_cache, meta.last_block_tables,
                meta.last_query_start_loc, meta.last_context_lens, self.scale, **kv_scales,
                batch_invariant=self.deterministic,
            )  # fmt: skip
        else:
            out = kernels.paged_prefill_attention(
                q, key_cache, value_cache, meta.block_tables, meta.query_start_loc,
                meta.context_lens, self.scale, **kv_scales, batch_invariant=self.deterministic,
            )  # fmt: skip
        # x (the layer input, in the "hidden" buffer) is dead once qkv exists.
        hidden = None if last_only else self._buffer("hidden", t, cfg.hidden_size)
        return layer.o_proj(out.reshape(out.shape[0], cfg.q_size), hidden)

    def _kv_scales(self, layer: LayerWeights, key_cache: torch.Tensor) -> dict:
        """The attention ops' k_scale= / v_scale=: none for a cache in the compute dtype;
        for an E4M3 cache the layer's scales, 1.0 where it has none (warned once)."""
        if key_cache.dtype != torch.float8_e4m3fn:
            return {}
        if self._uncalibrated_kv_scale is None:
            self._uncalibrated_kv_scale = torch.ones((), dtype=torch.float32, device=self.device)
            missing = sum(w.k_scale is None or w.v_scale is None for w in self.w.layers)
            if missing:
                logger.warning(
                    "the FP8 KV cache runs uncalibrated in %d of %d layers (k_scale = v_scale "
                    "= 1.0: keys and values beyond +-448 saturate, below 2^-6 lose precision); "
                    "calibrated scales (`reward-engine build --kv-cache-dtype fp8`) are more "
                    "accurate",
                    missing, len(self.w.layers),
                )  # fmt: skip
        unit = self._uncalibrated_kv_scale
        return {
            "k_scale": unit if layer.k_scale is None else layer.k_scale,
            "v_scale": unit if layer.v_scale is None else layer.v_scale,
        }

    def _mlp(self, layer: LayerWeights, x, reuse: bool):
        """SwiGLU MLP. With ``reuse``, the output overwrites the "hidden" buffer (x's)."""
        rows = x.shape[0]
        inter = layer.gate_up.out_features // 2
        gate_up = layer.gate_up(x, self._buffer("gate_up", rows, 2 * inter) if reuse else None)
        act = self._activation(gate_up, layer.down, reuse)
        hidden = self._buffer("hidden", rows, self.cfg.hidden_size) if reuse else None
        return layer.down(act, hidden)

    @torch.inference_mode()
    def hidden_states(self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache) -> torch.Tensor:
        """Write every new token's K/V into ``kv_cache`` (per-layer ``key_caches`` /
        ``value_caches``); return the final-norm hidden state of the rows in
        ``meta.last_token_indices``: [N, hidden]."""
        layers = self.w.layers
        x, residual = self.first_norm(input_ids, layers[0])
        for i, layer in enumerate(layers):
            last = i == len(layers) - 1
            x, residual = self.layer_forward(
                layer, x, residual, meta, kv_cache.key_caches[i], kv_cache.value_caches[i],
                next_layer=None if last else layers[i + 1],
            )  # fmt: skip
            if x is None:  # no sequence ends in this step: K/V written, nothing to output
                return residual.new_empty((0, self.cfg.hidden_size))
        return x

    def first_norm(self, input_ids: torch.Tensor, first_layer) -> tuple:
        """(the first layer's input, the residual stream): the token embeddings and their
        input norm (quantized for a W8A8 q|k|v)."""
        residual = F.embedding(input_ids, self.w.embed)
        hidden = self._buffer("hidden", input_ids.shape[0], residual.shape[1])
        x = self._norm(residual, None, first_layer.input_norm, self.cfg.rms_norm_eps,
                       first_layer.qkv, hidden)  # fmt: skip
        return x, residual

    def layer_forward(
        self, layer: LayerWeights, x, residual, meta: BatchMetadata, key_cache, value_cache,
        next_layer=None,
    ) -> tuple:  # fmt: skip
        """One decoder layer: writes the new tokens' K/V and returns (the next layer's
        input, the residual stream), the input already normed with ``next_layer``'s
        input norm (``input_norm`` and ``qkv`` are all it reads of it; engine/build runs
        layers one at a time through here). With no next layer, this is the final
        layer: only each finishing sequence's last token is computed, and the first
        value is their final-norm hidden states (None when no sequence finishes).
        The result lives in step buffers the next call overwrites."""
        eps = self.cfg.rms_norm_eps
        last = next_layer is None
        attn = self._attention(layer, x, meta, key_cache, value_cache, last_only=last)
        if attn is None:
            return None, residual
        if last:
            residual = residual[meta.last_token_indices]
        # Norms run in place: each output overwrites its input buffer.
        x = self._norm(attn, residual, layer.post_norm, eps, layer.gate_up, attn)
        mlp = self._mlp(layer, x, reuse=not last)
        if last:
            return kernels.fused_add_rms_norm(mlp, residual, self.w.final_norm, eps, out=mlp), residual
        return self._norm(mlp, residual, next_layer.input_norm, eps, next_layer.qkv, mlp), residual

    def _norm(self, x, residual, weight, eps, consumer, out):
        """RMSNorm of x (of x + residual, updating residual, when given) in the form the
        consuming linear layer takes: quantized in the same kernel for W8A8 layers (with
        their static scale, or per token; the codes in a step buffer), else in the
        compute dtype, into ``out``."""
        if consumer.quantization is None:
            if residual is None:
                return kernels.rms_norm(x, weight, eps, out=out)
            return kernels.fused_add_rms_norm(x, residual, weight, eps, out=out)
        qdtype, scale = _quant_target(consumer)
        codes = self._buffer("norm_codes", x.shape[0], x.shape[1], qdtype)
        if residual is None:
            codes, scale = kernels.rms_norm_quant(x, weight, eps, qdtype, scale, out=codes)
        else:
            codes, scale = kernels.fused_add_rms_norm_quant(
                x, residual, weight, eps, qdtype, scale, out=codes
            )
        return QuantizedActivation(codes, scale)

    def _activation(self, gate_up, consumer, reuse: bool):
        """silu(gate) * up in the form the down projection takes (see _norm), in a step
        buffer with ``reuse``."""
        rows, inter = gate_up.shape[0], gate_up.shape[1] // 2
        if consumer.quantization is None:
            return kernels.silu_mul(gate_up, out=self._buffer("act", rows, inter) if reuse else None)
        qdtype, scale = _quant_target(consumer)
        codes = self._buffer("act_codes", rows, inter, qdtype) if reuse else None
        return QuantizedActivation(*kernels.silu_mul_quant(gate_up, qdtype, scale, out=codes))


    @torch.inference_mode()
    def rewards(self, input_ids: torch.Tensor, meta: BatchMetadata, kv_cache) -> torch.Tensor:
        """Reward head on the output rows: [N, num_labels] float32.

        The head runs in the compute dtype like HF's `score` / `lm_head` Linear, so
        bf16 rewards round where HF's do; the result is returned in fp32.
        """
        hidden = self.hidden_states(input_ids, meta, kv_cache)
        return self.head(hidden).float()


def _quant_target(layer):
    return QUANTIZED_DTYPES[layer.quantization], layer.input_scale
