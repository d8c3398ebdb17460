"""LlamaRewardModel over one rank's shard, with the two all-reduces of a layer.

A rank's o_proj and down are row-parallel (engine/sharding.py): their outputs are
partial sums, and one all-reduce after each gives every rank the full attention and MLP
output before the residual add and the next norm. Everything else is the single-process
model unchanged, on the rank's shape (sharding.rank_config).

The time spent in the all-reduces is accumulated in ``comm_seconds`` (on CPU, where
gloo's all-reduce returns when it is done, it includes waiting for the slowest rank;
NCCL returns at once, so on GPUs it measures only the launch).
"""

from __future__ import annotations

import time

import torch

from ..model import LlamaRewardModel


class TensorParallelModel(LlamaRewardModel):
    def __init__(self, *args, group, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group  # engine/distributed/group.py Group
        self.comm_seconds = 0.0
        self.comm_calls = 0

    def _all_reduce(self, partial: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        self.group.all_reduce(partial)
        self.comm_seconds += time.perf_counter() - start
        self.comm_calls += 1
        return partial

    def _attention(self, *args, **kwargs):
        out = super()._attention(*args, **kwargs)
        return None if out is None else self._all_reduce(out)

    def _mlp(self, *args, **kwargs):
        return self._all_reduce(super()._mlp(*args, **kwargs))
