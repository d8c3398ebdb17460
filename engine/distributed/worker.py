"""The process of a tensor-parallel rank > 0: load the shard, then run every step.

Life of a worker (rank 0's side is engine/distributed/executor.py):
  1. load its shard of the weights (in parallel with the other ranks) and say "loaded"
     on its pipe;
  2. join the process group;
  3. on "start" (the KV pool's size and the run settings rank 0 decided), build its
     model and its slice of the KV pool and say "ready";
  4. on each "step" (the step's sizes), receive the step's metadata by broadcast and run
     the layers (the all-reduces pair with rank 0's); rank 0 applies the reward head;
  5. on "stop", or when rank 0's end of the pipe closes (rank 0 died), leave.
Any error is sent on the pipe as ("error", traceback) before the process exits with
status 1, so rank 0 can say what went wrong.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What every rank needs to load its shard (pickled to the spawned process)."""

    model_dir: str
    dtype: torch.dtype
    reward_token_ids: tuple[int, ...] | None
    verify: bool
    tensor_parallel_size: int
    device: str  # rank 0's device: "cpu" or "cuda:K" (rank r runs on cuda:K+r)
    num_threads: int
    store_port: int
    timeout_s: float


def rank_device(spec: WorkerSpec, rank: int) -> torch.device:
    base = torch.device(spec.device)
    if base.type == "cuda":
        return torch.device("cuda", (base.index or 0) + rank)
    return base


def worker_main(rank: int, spec: WorkerSpec, conn) -> None:
    """Entry point of rank ``rank`` (torch.multiprocessing spawn target)."""
    # Ctrl-C reaches the whole process group: rank 0 decides, and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.ERROR, format=f"rank {rank} %(levelname)s %(name)s: "
                        "%(message)s")  # fmt: skip
    try:
        _run(rank, spec, conn)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        os._exit(0)  # rank 0 is gone: nothing to report to
    except BaseException:  # noqa: BLE001 - reported to rank 0, then the process ends
        try:
            conn.send(("error", traceback.format_exc()))
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


def _run(rank: int, spec: WorkerSpec, conn) -> None:
    from ..checkpoint import move_weights
    from ..loading import load_model
    from .group import Group

    torch.set_num_threads(spec.num_threads)
    device = rank_device(spec, rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    loaded = load_model(spec.model_dir, spec.dtype, spec.reward_token_ids, spec.verify,
                        rank=rank, tensor_parallel_size=spec.tensor_parallel_size)  # fmt: skip
    weights = loaded.weights if device.type == "cpu" else move_weights(loaded.weights, device)
    conn.send(("loaded",))
    group = Group(spec, rank, device)
    try:
        _serve(conn, spec, group, loaded.cfg, weights, device)
    finally:
        group.shutdown()


def _serve(conn, spec: WorkerSpec, group, cfg, weights, device: torch.device) -> None:
    from ..runner import KVCachePool
    from ..sharding import rank_config
    from .model import TensorParallelModel
    from .protocol import payload_numel, unpack_step

    kind, settings = conn.recv()
    if kind != "start":
        return
    model = TensorParallelModel(rank_config(cfg, spec.tensor_parallel_size), weights,
                                max_position=settings["max_position"],
                                deterministic=settings["deterministic"],
                                group=group)  # fmt: skip
    del weights
    pool = KVCachePool(model.cfg, settings["num_blocks"], settings["block_size"],
                       settings["cache_dtype"], device, pretouch=settings["pretouch"])  # fmt: skip
    conn.send(("ready",))
    while True:
        message = conn.recv()
        if message[0] == "stop":
            return
        sizes = message[1]
        flat = torch.empty(payload_numel(sizes), dtype=torch.int64, device=device)
        group.broadcast(flat, src=0)
        input_ids, meta = unpack_step(flat, sizes)
        model.hidden_states(input_ids, meta, pool)
