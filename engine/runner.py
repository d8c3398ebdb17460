"""Model runner: the one boundary between scheduled requests and tensors.

``ModelRunner.execute(chunks)`` turns one scheduling step (``ScheduledChunk``s from
the scheduler) into flat tensors, runs the model over them and returns the reward
of every request whose last token was in the step:

- token ids and positions of every new token, packed sequence after sequence;
- ``query_start_loc`` [S+1] and ``context_lens`` [S] (cached + new tokens);
- block tables [S, max_blocks] int32, padded with block 0 (never read: the kernel
  reads only the ``ceil(context_len / block_size)`` entries a sequence has);
- the slot of every new token, ``block_table[pos // block_size] * block_size +
  pos % block_size``, where ``rope_and_cache`` writes its key and value.

Host work is a handful of numpy array ops per step whatever the token count (no
per-token Python loop), which matters on CPU where the whole step is host time.

``KVCachePool`` owns the per-layer key and value tensors in the layout the kernels
document ([num_blocks, block_size, Hkv, D] each, contiguous), in the compute dtype or
E4M3 (``RuntimeConfig.kv_cache_dtype``); ``kv_cache_num_blocks`` sizes it from a
``RuntimeConfig``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from itertools import chain

import numpy as np
import torch

from .config import (
    CPU_DEFAULT_KV_CACHE_FRACTION,
    CPU_DEFAULT_KV_CACHE_GIB,
    CUDA_DEFAULT_KV_CACHE_FRACTION,
    GIB,
    ModelConfig,
    RuntimeConfig,
    kv_cache_dtype,
)
from .kv_cache import kv_cache_bytes_per_block, num_blocks_for_memory
from .model import BatchMetadata, LlamaRewardModel
from .scheduler import ScheduledChunk

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- KV pool


def available_memory_bytes(device: torch.device) -> int:
    """Free device memory (CUDA) or the host's available memory (CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def kv_cache_num_blocks(
    runtime: RuntimeConfig,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_model_len: int,
    pools_sharing_memory: int = 1,
) -> int:
    """Blocks of the KV pool (see RuntimeConfig for the order of the settings). ``dtype``
    is the compute dtype; the pool's element size follows runtime.kv_cache_dtype.
    ``pools_sharing_memory``: how many pools of this shape split the memory budget (the
    ranks of a tensor-parallel engine on one host; ``cfg`` is then one rank's shape)."""
    if runtime.num_kv_blocks is not None:
        return runtime.num_kv_blocks
    if runtime.kv_cache_gib is not None:
        budget = runtime.kv_cache_gib * GIB
    elif device.type == "cuda":
        fraction = runtime.kv_cache_memory_fraction or CUDA_DEFAULT_KV_CACHE_FRACTION
        budget = available_memory_bytes(device) * fraction
    elif runtime.kv_cache_memory_fraction is not None:
        budget = available_memory_bytes(device) * runtime.kv_cache_memory_fraction
    else:
        budget = min(
            CPU_DEFAULT_KV_CACHE_GIB * GIB,
            available_memory_bytes(device) * CPU_DEFAULT_KV_CACHE_FRACTION,
        )
    budget /= pools_sharing_memory
    cache_dtype = kv_cache_dtype(runtime.kv_cache_dtype, dtype)
    dtype_bytes = torch.empty((), dtype=cache_dtype).element_size()
    num_blocks = num_blocks_for_memory(
        int(budget), runtime.block_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, dtype_bytes
    )
    # More than every running request at full length could hold is never used.
    per_request = -(-max_model_len // runtime.block_size)
    return max(1, min(num_blocks, runtime.max_num_seqs * per_request))


class KVCachePool:
    """One key and one value tensor per layer, each [num_blocks, block_size, Hkv, D], of
    ``dtype``: the compute dtype, or torch.float8_e4m3fn for an FP8 cache.

    All layers live in one allocation so the pool is a single block of memory. With
    ``pretouch`` it is zeroed (on CPU: every page faulted in) when the engine starts,
    so the memory is claimed up front and steps do not pay for page faults (on the
    small checkpoint here, about 1.5 % of the time to score a workload that fills
    the pool once). Without it, pages are faulted in as blocks are first written.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        pretouch: bool = True,
    ):
        self.num_blocks = num_blocks
        self.block_size = block_size
        shape = (cfg.num_layers, 2, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        self.storage = (torch.zeros if pretouch else torch.empty)(shape, dtype=dtype, device=device)
        self.key_caches = [self.storage[i, 0] for i in range(cfg.num_layers)]
        self.value_caches = [self.storage[i, 1] for i in range(cfg.num_layers)]
        self.bytes_per_block = kv_cache_bytes_per_block(
            block_size, cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, self.storage.element_size()
        )

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()


# ----------------------------------------------------------------------------- runner


def prepare_batch(
    chunks: Sequence[ScheduledChunk], block_size: int, device: torch.device
) -> tuple[torch.Tensor, BatchMetadata]:
    """Flat input ids and batch metadata of the chunks of one step (module docstring)."""
    num_seqs = len(chunks)
    bs = block_size
    starts = np.fromiter((c.start for c in chunks), np.int64, num_seqs)
    ends = np.fromiter((c.end for c in chunks), np.int64, num_seqs)
    q_lens = ends - starts
    query_start_loc = np.zeros(num_seqs + 1, np.int64)
    np.cumsum(q_lens, out=query_start_loc[1:])
    num_tokens = int(query_start_loc[-1])
    token_ids = np.fromiter(
        chain.from_iterable(c.token_ids for c in chunks), np.int64, num_tokens
    )
    # Position of each token: its row minus its sequence's first row, plus its start.
    seq_of_token = np.repeat(np.arange(num_seqs), q_lens)
    positions = np.arange(num_tokens) + np.repeat(starts - query_start_loc[:-1], q_lens)
    # Block tables padded to the longest; a boolean mask scatters the flat ids.
    num_blocks = np.fromiter((len(c.block_table) for c in chunks), np.int64, num_seqs)
    block_tables = np.zeros((num_seqs, int(num_blocks.max(initial=1))), np.int32)
    block_tables[np.arange(block_tables.shape[1]) < num_blocks[:, None]] = np.fromiter(
        chain.from_iterable(c.block_table for c in chunks), np.int32, int(num_blocks.sum())
    )
    slot_mapping = (
        block_tables[seq_of_token, positions // bs].astype(np.int64) * bs + positions % bs
    )
    # The final layer computes only the last token of each finishing request.
    is_last = np.fromiter((c.is_last for c in chunks), np.bool_, num_seqs)
    last_rows = query_start_loc[1:][is_last] - 1

    def t(a):
        return torch.from_numpy(a).to(device, non_blocking=True)

    meta = BatchMetadata(
        positions=t(positions),
        slot_mapping=t(slot_mapping),
        query_start_loc=t(query_start_loc),
        context_lens=t(ends),
        block_tables=t(block_tables),
        last_token_indices=t(last_rows),
        last_block_tables=t(block_tables[is_last]),
        last_context_lens=t(ends[is_last]),
        last_query_start_loc=t(np.arange(len(last_rows) + 1, dtype=np.int64)),
    )
    return t(token_ids), meta


class ModelRunner:
    """Runs scheduled chunks through the model over the paged KV cache."""

    def __init__(self, model: LlamaRewardModel, kv_cache: KVCachePool):
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.device = model.device

    def prepare(self, chunks: Sequence[ScheduledChunk]) -> tuple[torch.Tensor, BatchMetadata]:
        """Flat input ids and batch metadata of one step (module docstring)."""
        return prepare_batch(chunks, self.block_size, self.device)

    def execute(self, chunks: Sequence[ScheduledChunk]) -> dict[str, list[float]]:
        """Run one step; returns {request_id: reward row} for the chunks that are last."""
        if not chunks:
            return {}
        input_ids, meta = self.prepare(chunks)
        rewards = self.model.rewards(input_ids, meta, self.kv_cache)
        finishing = [c.request_id for c in chunks if c.is_last]
        return dict(zip(finishing, rewards.tolist(), strict=True))
