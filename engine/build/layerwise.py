"""Run the calibration set through a model one layer at a time.

A build holds one layer of weights at once, so it cannot run the model the way the
engine does (every layer for one batch, then the next batch). Here every batch goes
through layer i before any goes through layer i + 1: each batch keeps its hidden
state and residual between layers, and one layer's KV cache is reused by every
batch (a batch writes and reads its keys and values within one layer call).

A ``Stream`` is one model variant running this way: the build runs two side by
side, the unquantized model (whose activations calibrate the static scales) and
the built one (for the accuracy report). Both call ``LlamaRewardModel.layer_forward``,
the engine's own layer code, on batches made by ``prepare_batch``, the engine's own
step builder; only the order of the loops differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..checkpoint import ModelWeights
from ..config import ModelConfig
from ..linear import QuantizedActivation
from ..model import LlamaRewardModel
from ..runner import prepare_batch
from ..scheduler import ScheduledChunk
from .quantize import finite_amax

BLOCK_SIZE = 16


@dataclass(slots=True)
class InputSpec:
    """What ``layer_forward`` reads of the layer that consumes a norm's output: its
    quantization (None: dense) and static input scale."""

    quantization: str | None = None
    input_scale: torch.Tensor | None = None


@dataclass(slots=True)
class NextLayer:
    """The two things ``layer_forward`` reads of the next layer."""

    input_norm: torch.Tensor
    qkv: InputSpec


class ObservedLinear:
    """A dense layer that records the largest finite |x| of every input it is given."""

    quantization = None

    def __init__(self, inner):
        self.inner = inner
        self.amax = 0.0

    @property
    def out_features(self) -> int:
        return self.inner.out_features

    def __call__(self, x, out=None):
        self.amax = max(self.amax, finite_amax(x))
        return self.inner(x, out)


@dataclass(slots=True)
class LayerObservations:
    """Largest |x| seen by the unquantized model at each GEMM input and in the cache."""

    o_proj: float = 0.0
    gate_up: float = 0.0
    down: float = 0.0
    next_qkv: float = 0.0  # the next layer's q|k|v input: this layer's output
    key: float = 0.0
    value: float = 0.0


@dataclass(slots=True)
class _Batch:
    input_ids: torch.Tensor
    meta: object
    num_blocks: int


def make_batches(sequences, budget: int, block_size: int = BLOCK_SIZE) -> list[_Batch]:
    """Whole sequences packed in order into batches of at most ``budget`` tokens (a
    longer sequence runs alone), each with its step tensors and block tables."""
    groups, current, tokens = [], [], 0
    for seq in sequences:
        if current and tokens + len(seq) > budget:
            groups.append(current)
            current, tokens = [], 0
        current.append(seq)
        tokens += len(seq)
    if current:
        groups.append(current)
    batches = []
    for group in groups:
        chunks, next_block = [], 0
        for j, seq in enumerate(group):
            n = -(-len(seq) // block_size)
            table = tuple(range(next_block, next_block + n))
            next_block += n
            chunks.append(ScheduledChunk(str(j), tuple(seq), 0, len(seq), table, True))
        input_ids, meta = prepare_batch(chunks, block_size, torch.device("cpu"))
        batches.append(_Batch(input_ids, meta, next_block))
    return batches


@dataclass
class Stream:
    """One model variant's state for every batch between two layers."""

    model: LlamaRewardModel
    batches: list[_Batch]
    kv_dtype: torch.dtype
    states: list = field(default_factory=list)  # (x, residual) per batch

    def __post_init__(self):
        cfg = self.model.cfg
        blocks = max(b.num_blocks for b in self.batches)
        shape = (blocks, BLOCK_SIZE, cfg.num_kv_heads, cfg.head_dim)
        self.key_cache = torch.zeros(shape, dtype=self.kv_dtype)
        self.value_cache = torch.zeros(shape, dtype=self.kv_dtype)

    def start(self, first: NextLayer) -> float:
        """Embed every batch and norm it for the first layer; returns the largest |x|
        of the normed embeddings (the first q|k|v input)."""
        amax = 0.0
        for batch in self.batches:
            x, residual = self.model.first_norm(batch.input_ids, first)
            if not isinstance(x, QuantizedActivation):
                amax = max(amax, finite_amax(x))
            self.states.append((_keep(x), residual))
        return amax

    def run_layer(self, layer, next_layer: NextLayer | None, observe: LayerObservations | None):
        """Every batch through ``layer``; with ``observe``, record its activations."""
        if observe is not None:
            layer = _observed(layer)
        for k, batch in enumerate(self.batches):
            x, residual = self.states[k]
            x, residual = self.model.layer_forward(
                layer, x, residual, batch.meta, self.key_cache, self.value_cache, next_layer
            )
            if observe is not None:
                slots = batch.meta.slot_mapping
                flat = self.key_cache.shape[0] * BLOCK_SIZE
                observe.key = max(observe.key, finite_amax(self.key_cache.view(flat, -1)[slots]))
                observe.value = max(
                    observe.value, finite_amax(self.value_cache.view(flat, -1)[slots])
                )
                if next_layer is not None:
                    observe.next_qkv = max(observe.next_qkv, finite_amax(x))
            self.states[k] = (_keep(x), residual)
        if observe is not None:
            observe.o_proj = layer.o_proj.amax
            observe.gate_up = layer.gate_up.amax
            observe.down = layer.down.amax

    def rewards(self, head: torch.Tensor) -> torch.Tensor:
        """[num_sequences, num_labels] fp32, after the final layer, in sequence order."""
        hidden = torch.cat([x for x, _ in self.states])
        return F.linear(hidden, head).float()


def _keep(x):
    """A copy of a layer output that outlives the step buffers it was written into."""
    if isinstance(x, QuantizedActivation):
        return QuantizedActivation(x.codes.clone(), x.scale.clone())
    return x.clone()


def _observed(layer):
    from dataclasses import replace

    return replace(
        layer,
        qkv=layer.qkv,  # its input is the previous layer's output, observed there
        o_proj=ObservedLinear(layer.o_proj),
        gate_up=ObservedLinear(layer.gate_up),
        down=ObservedLinear(layer.down),
    )


def shell_model(cfg: ModelConfig, dtype: torch.dtype, max_len: int) -> LlamaRewardModel:
    """A model without layers (they are passed one at a time): its embedding, final
    norm and head are set by the build when it has read them."""
    empty = torch.empty(0, cfg.hidden_size, dtype=dtype)
    weights = ModelWeights(embed=empty, layers=[], final_norm=empty[0:0, 0], head=empty)
    return LlamaRewardModel(cfg, weights, max_position=max_len)
