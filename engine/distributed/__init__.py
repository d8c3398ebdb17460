"""Tensor parallelism: one engine over N processes (engine/sharding.py splits the weights).

``RewardEngine.from_pretrained(path, tensor_parallel_size=N)`` runs rank 0 in the
calling process and spawns ranks 1..N-1 (torch.multiprocessing, "spawn"); they join one
torch.distributed process group (gloo on CPU, NCCL on GPUs: rank r on cuda:r).

- Rank 0 owns the scheduler, the KV block manager and the reward head; each rank owns
  its slice of the KV pool (the KV heads of its q heads) and of every layer.
- Each step, rank 0 sends the workers a wake-up with the step's sizes over a pipe and
  the step's metadata (token ids, positions, slots, block tables, ...) as one int64
  tensor by a broadcast; every rank runs the model on it, with one all-reduce after
  attention and one after the MLP (engine/distributed/model.py); rank 0 alone applies
  the reward head.
- Idle workers wait on their pipe, not in a collective, so an idle engine never times
  out; a step's collectives time out after REWARD_ENGINE_TP_TIMEOUT_S (default 600 s).
- A worker that dies, or a step that fails on any rank, fails the engine with
  ``EngineDeadError`` naming the rank and its exit status or error (the ranks' collectives
  can no longer be trusted to be in step); the remaining workers are stopped.
- ``RewardEngine.close()`` (also on exit and when the engine is garbage-collected)
  stops the workers.

Nothing here is imported unless tensor_parallel_size > 1.
"""

from .executor import TensorParallelExecutor

__all__ = ["TensorParallelExecutor"]
