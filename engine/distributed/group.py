"""The torch.distributed process group of a tensor-parallel engine.

Rank 0 hosts a TCPStore on a free port of 127.0.0.1 (the OS picks it, so two engines
never race for one); every rank joins the default process group through it, gloo for
CPU tensors and NCCL for CUDA ones. One tensor-parallel engine per process at a time.
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
    if dist.is_initialized():
        raise RuntimeError(
            "tensor_parallel_size > 1 starts its own torch.distributed process group, and "
            "this process already has one (another tensor-parallel engine, or torchrun?): "
            "close the other engine first, or run the engine in a process of its own"
        )
    return dist.TCPStore("127.0.0.1", 0, world_size, is_master=True,
                         timeout=datetime.timedelta(seconds=timeout_s),
                         wait_for_workers=False)  # fmt: skip


def init_group(spec, rank: int, device: torch.device, store: dist.TCPStore | None = None):
    """Join the group as ``rank`` (rank 0 passes the store it hosts)."""
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    if store is None:
        store = dist.TCPStore("127.0.0.1", spec.store_port, spec.tensor_parallel_size,
                              is_master=False, timeout=timeout)  # fmt: skip
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend_for(device), store=store, rank=rank,
                            world_size=spec.tensor_parallel_size, timeout=timeout,
                            **kwargs)  # fmt: skip


def destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def abort_group() -> None:
    """Unblock collectives waiting on a dead rank (NCCL waits until its timeout; gloo
    fails at once when a peer's connection closes, so it needs no abort)."""
    abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
    if abort is not None and dist.is_initialized():
        try:
            abort()
        except Exception:  # noqa: BLE001 - best effort: the engine is failing anyway
            pass
