"""Rank 0's side of a tensor-parallel engine: spawn the workers, run steps, stop them.

RewardEngine.from_pretrained(..., tensor_parallel_size=N) drives it:

    executor = TensorParallelExecutor.start(path, N, dtype, ...)  # spawns ranks 1..N-1
    loaded = executor.load()            # rank 0's shard; waits for the workers' shards
    model = executor.make_model(...)    # rank 0's TensorParallelModel
    RewardEngine(model, chat, runtime, parallel=executor)
        -> executor.make_runner(model, kv_cache)  # workers build their pools: "ready"

The worker protocol is in engine/distributed/worker.py. Startup errors of a worker are
raised here with the worker's own message; after startup every failure is an
``EngineDeadError`` (module docstring of engine/distributed).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import weakref
from multiprocessing import connection

import torch
import torch.multiprocessing as mp

from ..errors import EngineDeadError
from ..runner import ModelRunner
from ..sharding import rank_config
from . import group
from .model import TensorParallelModel
from .protocol import pack_step, step_sizes
from .worker import WorkerSpec, rank_device, worker_main

logger = logging.getLogger(__name__)

# After a failed collective, how long to wait for a dead worker's exit to be seen: its
# socket and its sentinel close together, but its exit status can come later (joined).
EXIT_GRACE_S = 1.0
STEP_FAILED = "a step failed on rank 0"
STOP_GRACE_S = 5.0


class TensorParallelExecutor:
    def __init__(self, spec: WorkerSpec, store, processes, conns, previous_threads=None):
        self.spec = spec
        self.tp = spec.tensor_parallel_size
        self.device = rank_device(spec, 0)
        self._store = store
        self._procs = processes  # rank r at index r - 1
        self._conns = conns
        self._dead: str | None = None
        self._closed = False
        self.group = None  # once every worker has loaded (load())
        self._watch = _Watcher(processes, conns, previous_threads)
        self._finalizer = weakref.finalize(self, _shutdown, self._watch)

    # -- startup --------------------------------------------------------------------

    @classmethod
    def start(
        cls, model_dir, tensor_parallel_size: int, dtype: torch.dtype, reward_token_ids,
        verify: bool, device, num_threads: int | None,
    ) -> TensorParallelExecutor:  # fmt: skip
        """Spawn ranks 1..N-1; they start loading their shards at once. What can be
        checked before (the shapes split, an engine directory's rank count) is."""
        from ..config import ModelConfig
        from ..engine_dir import check_tensor_parallel_size, is_engine_dir, read_manifest
        from ..sharding import check_tensor_parallel

        tp = tensor_parallel_size
        check_tensor_parallel(ModelConfig.from_pretrained(model_dir), tp)
        if is_engine_dir(model_dir):
            check_tensor_parallel_size(model_dir, read_manifest(model_dir), tp)
        device = torch.device(device)
        if device.type == "cuda":
            first = device.index or 0
            if torch.cuda.device_count() < first + tp:
                raise ValueError(
                    f"tensor_parallel_size={tp} on {device} needs GPUs {first}..{first + tp - 1}; "
                    f"{torch.cuda.device_count()} are visible"
                )
            device = torch.device("cuda", first)
        elif device.type != "cpu":
            raise ValueError(f"tensor parallelism runs on cpu or cuda devices, not {device}")
        threads = num_threads or max(1, torch.get_num_threads() // tp)
        timeout_s = group.step_timeout_s()
        store = group.host_store(tp, timeout_s)
        spec = WorkerSpec(str(model_dir), dtype, reward_token_ids, verify, tp, str(device),
                          threads, store.port, timeout_s)  # fmt: skip
        ctx = mp.get_context("spawn")
        processes, conns = [], []
        try:
            for rank in range(1, tp):
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(rank, spec, theirs), daemon=True,
                                   name=f"reward-engine-tp{rank}")  # fmt: skip
                proc.start()
                theirs.close()
                processes.append(proc)
                conns.append(ours)
        except BaseException:
            _shutdown(_Watcher(processes, conns, None))
            raise
        previous_threads = None
        if device.type == "cpu":  # rank 0 shares the host's cores with the workers
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        logger.info("tensor parallel: %d ranks (%s, %d threads each), workers %s", tp,
                    group.backend_for(device), threads,
                    ", ".join(str(p.pid) for p in processes))  # fmt: skip
        return cls(spec, store, processes, conns, previous_threads)

    def load(self):
        """Rank 0's shard (loaded here while the workers load theirs); then the process
        group, once every worker has its shard."""
        from ..loading import load_model

        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        loaded = load_model(self.spec.model_dir, self.spec.dtype, self.spec.reward_token_ids,
                            self.spec.verify, rank=0, tensor_parallel_size=self.tp)  # fmt: skip
        self._collect("loaded", timeout_s=None)
        self.group = self._watch.group = group.Group(self.spec, 0, self.device, self._store)
        self._watch.start(self._on_worker_death)
        return loaded

    def make_model(self, cfg, weights, max_position, deterministic) -> TensorParallelModel:
        return TensorParallelModel(rank_config(cfg, self.tp), weights, max_position=max_position,
                                   deterministic=deterministic, group=self.group)  # fmt: skip

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of ranks 1..N-1, in rank order."""
        return [p.pid for p in self._procs]

    @property
    def workers_alive(self) -> list[bool]:
        return [p.is_alive() for p in self._procs]

    @property
    def pools_sharing_memory(self) -> int:
        """KV pools that share one memory budget: all N on CPU (one host), one per GPU."""
        return self.tp if self.device.type == "cpu" else 1

    def make_runner(self, model: TensorParallelModel, kv_cache, runtime) -> ModelRunner:
        """Have every worker build its model and its slice of the KV pool (the same
        blocks as rank 0's), and return rank 0's runner."""
        settings = {
            "num_blocks": kv_cache.num_blocks,
            "block_size": kv_cache.block_size,
            "cache_dtype": kv_cache.storage.dtype,
            "max_position": model.max_position,
            "deterministic": model.deterministic,
            "pretouch": runtime.kv_cache_pretouch,
        }
        self._send_all(("start", settings))
        self._collect("ready", timeout_s=self.spec.timeout_s)
        return TensorParallelRunner(model, kv_cache, self)

    # -- steps ----------------------------------------------------------------------

    def run_step(self, model, kv_cache, input_ids, meta) -> torch.Tensor:
        """Broadcast one step's metadata, run rank 0's part, return the rewards."""
        self.check_alive()
        sizes = step_sizes(input_ids, meta)
        payload = pack_step(input_ids, meta)
        self._send_all(("step", sizes))
        try:
            self.group.broadcast(payload, src=0)
            return model.rewards(input_ids, meta, kv_cache)
        except BaseException as exc:  # every rank's state is unknown now
            error = self._fail(f"{STEP_FAILED} ({type(exc).__name__}: {exc})")
            if isinstance(exc, Exception):
                raise error from exc
            raise  # an interrupt stays one; the engine is dead all the same

    def check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        if self._closed:
            raise EngineDeadError("the tensor-parallel engine was closed")
        if any(not p.is_alive() for p in self._procs):
            raise self._fail("")

    def metrics(self, model: TensorParallelModel) -> dict:
        return {
            "tensor_parallel_size": self.tp,
            "allreduce_time_total_s": model.comm_seconds,
            "allreduce_calls": model.comm_calls,
        }

    # -- shutdown and failure -------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and leave the process group (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()

    def _send_all(self, message) -> None:
        for rank, conn in enumerate(self._conns, start=1):
            try:
                conn.send(message)
            except OSError as exc:
                raise self._fail(f"rank {rank} could not be reached ({exc})") from None

    def _collect(self, kind: str, timeout_s: float | None) -> None:
        """Wait until every worker has said ``kind``; a worker's error or death raises."""
        waiting = set(range(1, self.tp))
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        by_object = {}
        for rank, (proc, conn) in enumerate(zip(self._procs, self._conns, strict=True), 1):
            by_object[conn] = by_object[proc.sentinel] = rank
        while waiting:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = connection.wait([o for o, r in by_object.items() if r in waiting], left)
            if not ready:
                raise self._fail(f"ranks {sorted(waiting)} did not get {kind} within "
                                 f"{timeout_s:.0f} s")  # fmt: skip
            for obj in ready:
                rank = by_object[obj]
                conn = self._conns[rank - 1]
                if obj is not conn or not conn.poll():
                    raise self._fail("", startup=True)
                try:
                    message = conn.recv()
                except EOFError:
                    raise self._fail("", startup=True) from None
                if message[0] == "error":
                    raise self._fail("", startup=True, errors={rank: message[1]})
                if message[0] == kind:
                    waiting.discard(rank)

    def _on_worker_death(self) -> None:
        """Watcher thread: a worker exited while the engine runs."""
        if not self._closed and self._dead is None:
            self.group.abort()  # NCCL would wait for its timeout; gloo fails by itself

    def _fail(self, reason: str, startup: bool = False, errors=None) -> Exception:
        """Mark the engine dead, stop what is left of it, and return the error to raise:
        which worker died and how (or the error it reported), and ``reason``."""
        errors = dict(errors or {})
        grace = EXIT_GRACE_S if not startup else 0.5
        exited = connection.wait([p.sentinel for p in self._procs], grace)
        for proc in self._procs:
            if proc.sentinel in exited:
                proc.join(grace)  # the sentinel can fire before the exit status is ready
        for rank, conn in enumerate(self._conns, start=1):
            try:
                while rank not in errors and conn.poll():
                    message = conn.recv()
                    if message[0] == "error":
                        errors[rank] = message[1]
            except (EOFError, OSError):
                pass
        parts = []
        for rank, proc in enumerate(self._procs, start=1):
            if rank in errors:
                last = errors[rank].strip().splitlines()[-1]
                logger.error("tensor-parallel worker rank %d failed:\n%s", rank, errors[rank])
                parts.append(f"tensor-parallel worker rank {rank} (pid {proc.pid}) failed: {last}")
            elif proc.exitcode is not None:
                parts.append(f"tensor-parallel worker rank {rank} (pid {proc.pid}) died "
                             f"({_describe_exit(proc.exitcode)})")  # fmt: skip
        if reason and not (parts and reason.startswith(STEP_FAILED)):
            parts.append(reason)  # a step's own error, unless a dead worker explains it
        message = "; ".join(parts) or "a tensor-parallel worker stopped"
        message += (
            ": the engine cannot start" if startup else
            ": the engine is dead (its ranks are out of step); start a new engine"
        )  # fmt: skip
        self._dead = message
        self._closed = True
        self._watch.graceful = False
        self._finalizer()
        return EngineDeadError(message)


class TensorParallelRunner(ModelRunner):
    """Rank 0's runner: every step goes to the workers too (TensorParallelExecutor)."""

    def __init__(self, model, kv_cache, executor: TensorParallelExecutor):
        super().__init__(model, kv_cache)
        self.executor = executor

    def execute(self, chunks) -> dict[str, list[float]]:
        if not chunks:
            return {}
        input_ids, meta = self.prepare(chunks)
        rewards = self.executor.run_step(self.model, self.kv_cache, input_ids, meta)
        finishing = [c.request_id for c in chunks if c.is_last]
        return dict(zip(finishing, rewards.tolist(), strict=True))


class _Watcher:
    """What the shutdown needs (no reference to the executor, so a dropped engine is
    collected), and a daemon thread that notices a worker's exit while the engine runs."""

    def __init__(self, processes, conns, previous_threads):
        self.procs, self.conns = processes, conns
        self.previous_threads = previous_threads
        self.group = None
        self.graceful = True  # False once a step failed: workers may be stuck in a collective
        self._wake_r, self._wake_w = mp.get_context("spawn").Pipe(duplex=False)

    def start(self, on_death) -> None:
        callback = weakref.WeakMethod(on_death)  # the thread must not keep the engine alive

        def watch():
            ready = connection.wait([p.sentinel for p in self.procs] + [self._wake_r])
            if self._wake_r not in ready and (fn := callback()) is not None:
                fn()

        threading.Thread(target=watch, name="reward-engine-tp-watch", daemon=True).start()

    def stop(self) -> None:
        try:
            self._wake_w.send(None)
        except OSError:
            pass


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _shutdown(state: _Watcher) -> None:
    """Stop every worker (asked first, then killed), drop the process group and give
    this process back its thread count. A weakref finalizer: runs once, on close(), on
    garbage collection or at exit."""
    state.stop()
    for conn in state.conns:
        try:
            conn.send(("stop",))
        except OSError:
            pass
    deadline = time.monotonic() + (STOP_GRACE_S if state.graceful else 0.0)
    for proc in state.procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in state.procs:
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)
    for conn in state.conns:
        conn.close()
    if state.group is not None:
        state.group.shutdown()
    if state.previous_threads is not None:
        torch.set_num_threads(state.previous_threads)
