"""The communicator of one tensor-parallel engine: N ranks, gloo on CPU, NCCL on CUDA.

Rank 0 hosts a TCPStore on a free port of 127.0.0.1 (the OS picks it, so engines never
race for one) and every rank builds the backend's process group on it directly
(torch.distributed.ProcessGroupGloo / ProcessGroupNCCL, constructed as
torch/distributed/distributed_c10d.py `_new_process_group_helper` does), not the
global default group: several tensor-parallel engines can live in one process, and a
process that already has a default group (torchrun) is left alone.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

DEFAULT_TIMEOUT_S = 600.0


def step_timeout_s() -> float:
    """How long a collective may wait for the other ranks (REWARD_ENGINE_TP_TIMEOUT_S)."""
    return float(os.environ.get("REWARD_ENGINE_TP_TIMEOUT_S", DEFAULT_TIMEOUT_S))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def host_store(world_size: int, timeout_s: float) -> dist.TCPStore:
    """Rank 0's store, on a port the OS chooses (store.port)."""
    if not dist.is_available():
        raise RuntimeError("tensor_parallel_size > 1 needs a torch built with torch.distributed")
    return dist.TCPStore("127.0.0.1", 0, world_size, is_master=True,
                         timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)  # fmt: skip


class Group:
    """The collectives a step needs, over one engine's ranks."""

    def __init__(self, spec, rank: int, device: torch.device, store: dist.TCPStore | None = None):
        timeout = datetime.timedelta(seconds=spec.timeout_s)
        size = spec.tensor_parallel_size
        if store is None:
            store = dist.TCPStore("127.0.0.1", spec.store_port, size, is_master=False,
                                  timeout=timeout)  # fmt: skip
        self._store = store  # the group keeps using it: hold a reference
        self.backend = backend_for(device)
        if self.backend == "nccl":
            if not dist.is_nccl_available():
                raise RuntimeError("tensor parallelism on CUDA needs a torch built with NCCL")
            options = dist.ProcessGroupNCCL.Options()
            options.is_high_priority_stream = False
            options._timeout = timeout
            self._pg = dist.ProcessGroupNCCL(store, rank, size, options)
        else:
            self._pg = dist.ProcessGroupGloo(store, rank, size, timeout)

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        self._pg.allreduce([tensor]).wait()
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
        self._pg.broadcast([tensor], _root(src)).wait()
        return tensor

    def abort(self) -> None:
        """Unblock collectives waiting on a dead rank. NCCL would wait for its timeout;
        gloo fails at once when a peer's connection closes, so it needs none."""
        if self.backend == "nccl":
            try:
                self._pg.abort()
            except Exception:  # noqa: BLE001 - best effort: the engine is failing anyway
                pass

    def shutdown(self) -> None:
        if self.backend == "nccl":
            try:
                self._pg.shutdown()
            except Exception:  # noqa: BLE001
                pass
        self._pg = None


def _root(src: int) -> dist.BroadcastOptions:
    options = dist.BroadcastOptions()
    options.rootRank = src
    return options
