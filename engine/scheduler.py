"""Continuous-batching scheduler for prefill-only score requests (pure Python).

One rule
--------
Each request has ``num_computed_tokens`` and a target, ``num_tokens``. Every
``schedule()`` step spends a token budget (``max_num_batched_tokens``) closing
those gaps, first for running requests (in admission order, highest priority
first), then by admitting waiting ones (lower ``priority`` value first, first
come first served within a priority), never holding more than ``max_num_seqs``
running requests. A request whose gap exceeds what is left of the budget gets a
chunk of it and continues next step (chunked prefill): each chunk attends to the
earlier ones through the KV cache. A prefix-cache hit at admission simply starts
``num_computed_tokens`` above zero; the last token is always computed, because
its hidden state is the reward.

Prefix-aware admission
----------------------
Requests that share a prompt (the N responses of one prompt) must not all compute
it in the same step: a cache hit is only possible once a block has been computed
and registered. So the scheduler counts the hashes of the full blocks that running
requests are still going to compute ("in flight"). A waiting request that would
compute an in-flight block is held back, keeping its place in the queue, while
requests behind it may be admitted. Once the owner has computed those blocks they
are cached and the held requests are admitted with a hit. Sharing is found from
the chained block hashes, so it needs no group key and also catches shared
multi-turn histories. With 8 requests sharing a 384-token prompt, step 1 computes
the prompt once (with the first request) and step 2 only the other 7 responses.
No block is computed by two requests in one step (a property test checks this).

Running out of blocks
---------------------
A waiting request that cannot get blocks for its first chunk stays at the head of
the queue (nothing behind it is admitted, so large requests are not starved).
Without a chunk cap (``max_chunk_tokens``) every request scheduled in a step but the
last one finishes in it, so blocks never run short for a running request; with a
cap several long prefills progress side by side and they can. Then the KV cache
manager evicts unreferenced cached blocks first. If a running request
still cannot get blocks for its chunk, the scheduler preempts the lowest-priority,
most recently admitted running request (its blocks are released, the full ones stay
in the prefix cache; it restarts from zero, usually with a hit, at the front of its
priority in the queue), and admits nothing new in that step. A request that could
never fit (more blocks than the pool has, or longer than ``max_model_len``) fails
in ``add_request`` with a ``RequestTooLongError``, so no request waits forever.

Calling protocol (not thread-safe: one caller at a time)
---------------------------------------------------------
``add_request`` -> per step: ``expire()``, ``out = schedule()``, run the model on
``out``, ``finished = update_after_step(out)``. ``cancel()`` may come at any time;
if the request is in the batch being run, its results are dropped by
``update_after_step``.
"""

from __future__ import annotations

import bisect
import heapq
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from engine.errors import (
    EngineOverloadedError,
    RequestCancelledError,
    RequestFailedError,
    RequestTimeoutError,
    RequestTooLongError,
)
from engine.kv_cache import KVCacheManager
from engine.request import Request, RequestStatus


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    max_num_batched_tokens: int = 8192  # token budget of one step
    max_num_seqs: int = 256  # running requests at once (and chunks per step)
    max_model_len: int = 131072  # longest request accepted
    max_waiting_requests: int = 4096  # add_request raises EngineOverloadedError beyond
    # Largest chunk of one request per step (None: the whole budget). A cap below the
    # budget lets short requests run beside a long prefill instead of behind it.
    max_chunk_tokens: int | None = None
    prefix_aware_admission: bool = True

    def __post_init__(self) -> None:
        for name in ("max_num_batched_tokens", "max_num_seqs", "max_model_len",
                     "max_waiting_requests", "max_chunk_tokens"):
            value = getattr(self, name)
            if value is None and name == "max_chunk_tokens":
                continue
            if type(value) is not int or value < 1:  # bool is an int subclass: excluded
                raise ValueError(f"SchedulerConfig.{name} must be a positive int, got {value!r}")

    @property
    def chunk_limit(self) -> int:
        return self.max_num_batched_tokens if self.max_chunk_tokens is None \
            else min(self.max_chunk_tokens, self.max_num_batched_tokens)


@dataclass(slots=True, frozen=True)
class ScheduledChunk:
    """Compute positions ``start .. end-1`` of one request in this step.

    ``block_table`` covers positions ``0 .. end-1`` (``ceil(end / block_size)``
    blocks): positions below ``start`` are already in the cache and are attended
    to; the chunk's keys and values are written to their slots. ``is_last`` means
    this chunk holds the request's last token, whose hidden state is the result.
    """

    request_id: str
    token_ids: tuple[int, ...]  # the tokens at positions start .. end-1
    start: int
    end: int
    block_table: tuple[int, ...]
    is_last: bool

    @property
    def num_tokens(self) -> int:
        return self.end - self.start


@dataclass(slots=True, frozen=True)
class SchedulerOutput:
    step: int
    chunks: tuple[ScheduledChunk, ...]
    num_batched_tokens: int
    preempted_request_ids: tuple[str, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not self.chunks


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCacheManager,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.kv_cache = kv_cache
        self.clock = clock
        self._requests: dict[str, Request] = {}  # every waiting or running request
        # Heap of (priority, sequence, request); stale entries are skipped on pop.
        self._waiting: list[tuple[int, int, Request]] = []
        self._queue_seq: dict[str, int] = {}  # live heap entry of each waiting request
        self._running: list[Request] = []  # sorted by (priority, admission order)
        self._admit_seq: dict[str, tuple[int, int]] = {}
        self._deadlines: list[tuple[float, int, Request]] = []
        self._in_flight: Counter[bytes] = Counter()  # block hashes running requests owe
        self._next_seq = 0
        self._next_front_seq = -1  # requeued (preempted) requests go before all others
        self._pending_step: SchedulerOutput | None = None
        self._step = 0
        self._stats: Counter[str] = Counter()
        self._last_step = (0, 0)

    # ---------------------------------------------------------------- intake
    def add_request(self, request: Request) -> Request:
        """Queue a request. Returns it; FAILED already if it could never be scheduled.

        Raises EngineOverloadedError when ``max_waiting_requests`` are waiting.
        """
        if request.request_id in self._requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        if request.status is not RequestStatus.WAITING or request.num_computed_tokens:
            raise ValueError(f"request {request.request_id!r} is not new")
        if self.num_waiting >= self.config.max_waiting_requests:
            raise EngineOverloadedError(
                f"{self.num_waiting} requests are waiting (max_waiting_requests="
                f"{self.config.max_waiting_requests}); retry later")
        reason = self._never_fits(request)
        if reason is not None:
            request.fail(RequestTooLongError(f"request {request.request_id!r}: {reason}"))
            self._stats["failed"] += 1
            return request
        self._requests[request.request_id] = request
        self._enqueue(request, self._next_seq)
        self._next_seq += 1
        if request.deadline is not None:
            heapq.heappush(self._deadlines, (request.deadline, self._next_seq, request))
        return request

    def _never_fits(self, request: Request) -> str | None:
        if request.num_tokens > self.config.max_model_len:
            return (f"{request.num_tokens} tokens exceed max_model_len="
                    f"{self.config.max_model_len}")
        need = self.kv_cache.num_blocks_needed(request.num_tokens)
        if need > self.kv_cache.num_blocks:
            return (f"{request.num_tokens} tokens need {need} KV blocks of "
                    f"{self.kv_cache.block_size}, the pool has {self.kv_cache.num_blocks}")
        return None

    def _enqueue(self, request: Request, seq: int) -> None:
        request.status = RequestStatus.WAITING
        self._queue_seq[request.request_id] = seq
        heapq.heappush(self._waiting, (request.priority, seq, request))

    def _pop_waiting(self) -> tuple[int, Request] | None:
        while self._waiting:
            _, seq, request = heapq.heappop(self._waiting)
            if self._queue_seq.get(request.request_id) == seq:
                del self._queue_seq[request.request_id]
                return seq, request
        return None

    # ------------------------------------------------------------ scheduling
    def schedule(self) -> SchedulerOutput:
        """Pick this step's chunks. The previous output must have been applied."""
        if self._pending_step is not None:
            raise RuntimeError("schedule() called before update_after_step() of the last step")
        chunks: list[ScheduledChunk] = []
        preempted: list[str] = []
        budget = self._schedule_running(self.config.max_num_batched_tokens, chunks, preempted)
        if not preempted:  # blocks are short: let the running requests drain first
            self._schedule_waiting(budget, chunks)
        self._step += 1
        num_tokens = sum(c.num_tokens for c in chunks)
        out = SchedulerOutput(self._step, tuple(chunks), num_tokens, tuple(preempted))
        self._pending_step = out
        self._last_step = (num_tokens, len(chunks))
        self._stats["tokens_computed"] += num_tokens
        return out

    def _schedule_running(self, budget: int, chunks: list[ScheduledChunk],
                          preempted: list[str]) -> int:
        i = 0
        while i < len(self._running) and budget > 0:
            request = self._running[i]
            num_new = min(request.num_remaining_tokens, budget, self.config.chunk_limit)
            while not self.kv_cache.allocate(request, num_new):
                # Victims come from the tail, so none was scheduled earlier this step.
                victim = self._running[-1]
                self._preempt(victim)
                preempted.append(victim.request_id)
                if victim is request:
                    return budget
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
            i += 1
        return budget

    def _schedule_waiting(self, budget: int, chunks: list[ScheduledChunk]) -> None:
        held: list[tuple[int, Request]] = []
        while budget > 0 and len(self._running) < self.config.max_num_seqs:
            entry = self._pop_waiting()
            if entry is None:
                break
            request = entry[1]
            hit = self.kv_cache.find_prefix(request)
            if self._prefix_in_flight(request, len(hit.block_ids)):
                held.append(entry)  # keeps its place; requests behind it may go
                continue
            num_new = min(request.num_tokens - hit.num_tokens, budget, self.config.chunk_limit)
            if not self.kv_cache.allocate(request, num_new, hit):
                held.append(entry)  # out of blocks: nothing behind it jumps the queue
                break
            self._admit(request, hit.num_tokens)
            chunks.append(self._chunk(request, num_new))
            budget -= num_new
        for seq, request in held:
            self._enqueue(request, seq)

    def _prefix_in_flight(self, request: Request, num_hit_blocks: int) -> bool:
        """True if a full block the request would compute is owed by a running one.

        Usually the first such block decides (equal chained hashes mean equal
        prefixes), but a later one can be owed too when the cached copy of an
        earlier block was evicted after its owner computed past it.
        """
        if not self._in_flight:
            return False
        in_flight = self._in_flight
        return any(h in in_flight for h in self.kv_cache.block_hashes(request)[num_hit_blocks:])

    def _admit(self, request: Request, num_cached_tokens: int) -> None:
        request.status = RequestStatus.RUNNING
        request.num_computed_tokens = num_cached_tokens
        request.num_cached_tokens = num_cached_tokens
        self._admit_seq[request.request_id] = (request.priority, self._next_seq)
        self._next_seq += 1
        bisect.insort(self._running, request, key=lambda r: self._admit_seq[r.request_id])
        self._owe(request, num_cached_tokens // self.kv_cache.block_size, None, +1)
        self._stats["prefix_query_tokens"] += request.num_tokens
        self._stats["prefix_hit_tokens"] += num_cached_tokens

    def _chunk(self, request: Request, num_new: int) -> ScheduledChunk:
        start = request.num_computed_tokens
        end = start + num_new
        return ScheduledChunk(request.request_id, request.token_ids[start:end], start, end,
                              tuple(request.block_ids), end == request.num_tokens)

    def _owe(self, request: Request, first: int, last: int | None, delta: int) -> None:
        """Add ``delta`` to the in-flight count of the request's full blocks [first, last)."""
        if not (self.config.prefix_aware_admission and self.kv_cache.enable_prefix_caching):
            return
        for h in self.kv_cache.block_hashes(request)[first:last]:
            count = self._in_flight[h] + delta
            if count > 0:
                self._in_flight[h] = count
            else:
                del self._in_flight[h]

    def _release(self, request: Request) -> None:
        """Take a running request off the batch and give its blocks back."""
        self._owe(request, request.num_computed_tokens // self.kv_cache.block_size, None, -1)
        self._running.remove(request)
        del self._admit_seq[request.request_id]
        self.kv_cache.free(request)

    def _preempt(self, request: Request) -> None:
        self._release(request)
        request.num_computed_tokens = 0
        request.num_cached_tokens = 0
        request.num_preemptions += 1
        self._stats["preemptions"] += 1
        self._enqueue(request, self._next_front_seq)
        self._next_front_seq -= 1

    # ---------------------------------------------------------------- results
    def update_after_step(self, output: SchedulerOutput) -> list[Request]:
        """Record that ``output`` was computed; return the requests it finished.

        Finished requests leave the scheduler and their blocks go to the prefix
        cache. Chunks of requests cancelled or expired meanwhile are ignored.
        """
        if output is not self._pending_step:
            raise RuntimeError(f"step {output.step} is not the step being run")
        self._pending_step = None
        block_size = self.kv_cache.block_size
        finished = []
        for chunk in output.chunks:
            request = self._requests.get(chunk.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue
            if request.num_computed_tokens != chunk.start:
                raise RuntimeError(f"request {chunk.request_id!r} moved during step {output.step}")
            self._owe(request, chunk.start // block_size, chunk.end // block_size, -1)
            request.num_computed_tokens = chunk.end
            self.kv_cache.cache_full_blocks(request)
            if chunk.is_last:
                self._release(request)
                del self._requests[request.request_id]
                request.status = RequestStatus.FINISHED
                self._stats["finished"] += 1
                self._stats["tokens_requested"] += request.num_tokens
                finished.append(request)
        return finished

    # ----------------------------------------------------- cancel and timeout
    def cancel(self, request_id: str) -> Request | None:
        """Withdraw a waiting or running request; its blocks are released at once."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        self._drop(request, RequestCancelledError(f"request {request_id!r} was cancelled"))
        self._stats["cancelled"] += 1
        return request

    def abort(self, request_id: str, error: RequestFailedError) -> Request | None:
        """End a waiting or running request with ``error`` (e.g. its chunk failed to run)."""
        request = self._requests.get(request_id)
        if request is None:
            return None
        self._drop(request, error)
        self._stats["failed"] += 1
        return request

    def expire(self, now: float | None = None) -> list[Request]:
        """Fail every request whose deadline is at or before ``now``; return them."""
        now = self.clock() if now is None else now
        expired = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, request = heapq.heappop(self._deadlines)
            if self._requests.get(request.request_id) is not request:
                continue  # already done
            if request.status is RequestStatus.RUNNING:
                progress = f"after {request.num_computed_tokens} of {request.num_tokens} tokens"
            elif request.num_preemptions:
                progress = "while requeued after a preemption"
            else:
                progress = "before it started"
            self._drop(request, RequestTimeoutError(
                f"request {request.request_id!r} passed its deadline {progress}"))
            self._stats["failed"] += 1
            expired.append(request)
        return expired

    def _drop(self, request: Request, error: RequestFailedError) -> None:
        if request.status is RequestStatus.RUNNING:
            self._release(request)
        else:
            del self._queue_seq[request.request_id]  # its heap entry goes stale
        del self._requests[request.request_id]
        request.fail(error)

    # ------------------------------------------------------------ inspection
    @property
    def num_waiting(self) -> int:
        return len(self._queue_seq)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished_requests(self) -> bool:
        return bool(self._requests)

    def get_request(self, request_id: str) -> Request | None:
        return self._requests.get(request_id)

    def metrics(self) -> dict[str, int | float]:
        s = self._stats
        queried = s["prefix_query_tokens"]
        return {
            "num_waiting": self.num_waiting,
            "num_running": self.num_running,
            "num_finished": s["finished"],
            "num_failed": s["failed"],
            "num_cancelled": s["cancelled"],
            "num_preemptions": s["preemptions"],
            "num_steps": self._step,
            "tokens_requested": s["tokens_requested"],
            "tokens_computed": s["tokens_computed"],
            "prefix_cache_query_tokens": queried,
            "prefix_cache_hit_tokens": s["prefix_hit_tokens"],
            "prefix_cache_hit_rate": s["prefix_hit_tokens"] / queried if queried else 0.0,
            "last_step_tokens": self._last_step[0],
            "last_step_seqs": self._last_step[1],
            **self.kv_cache.usage(),
        }

    def check_invariants(self) -> None:
        """Raise AssertionError if scheduler and KV cache state disagree (for tests)."""
        self.kv_cache.check_invariants()
        running = set(map(id, self._running))
        assert len(running) == len(self._running) <= self.config.max_num_seqs
        for request in self._running:
            assert request.status is RequestStatus.RUNNING
            assert self._requests[request.request_id] is request
            need = self.kv_cache.num_blocks_needed(request.num_computed_tokens)
            assert len(request.block_ids) >= need, f"{request.request_id} lost blocks"
        for request_id in self._queue_seq:
            request = self._requests[request_id]
            assert request.status is RequestStatus.WAITING and not request.block_ids
            assert request.num_computed_tokens == 0
        assert len(self._requests) == len(self._running) + len(self._queue_seq)
