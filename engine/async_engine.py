"""AsyncRewardEngine: continuous batching for many concurrent asyncio callers.

    from engine import AsyncRewardEngine
    async with AsyncRewardEngine.from_pretrained("path/to/checkpoint") as eng:
        reward = await eng.score(conversation, priority=0, timeout=5.0)
        rewards = await asyncio.gather(*(eng.score_token_ids(ids) for ids in batch))

A background task owns the scheduler. Each iteration it expires late requests,
schedules one step, runs the model on it in a dedicated worker thread (the event
loop stays responsive: callers keep adding and cancelling requests meanwhile) and
resolves the futures of the requests the step finished. A request that arrives
while a step runs joins the next step.

Every scheduler call happens on the event loop thread; the worker thread only runs
the model on an immutable ``SchedulerOutput``. Cancelling or timing out a request
while its chunk is running is safe: its blocks go back at once, nothing is
allocated until the running step is applied, and its results are dropped.

Per request: ``priority`` (lower first, FCFS within a priority); ``timeout``
(seconds; raises ``RequestTimeoutError``, a ``TimeoutError``; a request that has
not started by its deadline is never computed); cancelling the awaiting task
withdraws the request and frees its KV blocks. A full waiting queue raises
``EngineOverloadedError``. A chunk that fails to run fails its own request only
(``RequestFailedError`` with the reason); bad token ids raise ``ValueError``.

A tensor-parallel engine (``tensor_parallel_size=N``) whose worker dies fails every
pending and later request with ``EngineDeadError``. Leaving ``async with`` (or
``close()``) stops the workers of an engine that ``from_pretrained`` loaded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .errors import EngineDeadError, EngineError, RequestTimeoutError
from .llm_engine import Reward, RewardEngine
from .request import Request

logger = logging.getLogger(__name__)


class AsyncRewardEngine:
    """Scores requests from concurrent coroutines; use as ``async with engine: ...``."""

    def __init__(self, engine: RewardEngine, owns_engine: bool = False):
        self.engine = engine
        self._owns_engine = owns_engine  # loaded by from_pretrained: closed with this
        self._futures: dict[str, asyncio.Future] = {}
        self._task: asyncio.Task | None = None
        self._wakeup: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self._dead: BaseException | None = None

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, dtype="auto", **kwargs
    ) -> AsyncRewardEngine:
        """Load a checkpoint; takes RewardEngine.from_pretrained's arguments."""
        return cls(RewardEngine.from_pretrained(model_dir, dtype, **kwargs), owns_engine=True)

    @property
    def chat(self):
        return self.engine.chat

    # -- lifecycle ------------------------------------------------------------------

    async def __aenter__(self) -> AsyncRewardEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()
        if self._owns_engine:
            self.engine.close()

    async def close(self) -> None:
        """Stop the loop and the engine's tensor-parallel workers, if it has any."""
        await self.stop()
        self.engine.close()

    async def start(self) -> None:
        """Start the background loop (``async with`` does this)."""
        if self._task is not None:
            raise RuntimeError("the engine is already running")
        if self.engine.scheduler.has_unfinished_requests():
            raise RuntimeError("the engine has requests from another caller")
        self._stopping = False
        self._dead = None
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="reward-engine-step")
        self._task = asyncio.create_task(self._loop(), name="reward-engine-loop")

    async def stop(self) -> None:
        """Finish the running step, then fail every request still pending."""
        if self._task is None:
            return
        self._stopping = True
        self._wakeup.set()
        try:
            await self._task
        finally:
            self._task = None
            self._executor.shutdown(wait=True)
            self._fail_all(EngineError("the engine stopped before the request finished"))

    @property
    def is_running(self) -> bool:
        return self._task is not None and not self._stopping and self._dead is None

    # -- public scoring API ---------------------------------------------------------

    async def score(
        self, conversation: list[dict], priority: int = 0, timeout: float | None = None
    ) -> Reward:
        """Reward of one conversation (a list of {"role", "content"} messages)."""
        chat = self.engine._require_chat()
        return await self.score_token_ids(chat.encode(conversation), priority, timeout)

    async def score_responses(
        self, prompt, responses: Sequence[str], priority: int = 0, timeout: float | None = None
    ) -> list[Reward]:
        """Rewards of N responses to one prompt; the prompt is computed once."""
        chat = self.engine._require_chat()
        ids = [chat.encode(chat.conversation(prompt, r)) for r in responses]
        return list(
            await asyncio.gather(*(self.score_token_ids(x, priority, timeout) for x in ids))
        )

    async def score_token_ids(
        self, token_ids: Sequence[int], priority: int = 0, timeout: float | None = None
    ) -> Reward:
        """Reward of one tokenized sequence (the full formatted conversation)."""
        if isinstance(self._dead, EngineDeadError):
            raise EngineDeadError(str(self._dead))
        if not self.is_running:
            raise RuntimeError(
                "the engine is not running: use `async with engine:` or `await engine.start()`"
            ) from self._dead
        ids = tuple(map(int, token_ids))
        self.engine.check_token_ids(ids)
        deadline = None if timeout is None else time.monotonic() + timeout
        request = self.engine.add_request(ids, priority, deadline)  # may raise overload
        future = asyncio.get_running_loop().create_future()
        self._futures[request.request_id] = future
        self._wakeup.set()
        try:
            if timeout is None:
                return await future
            return await asyncio.wait_for(future, timeout)
        except (TimeoutError, asyncio.TimeoutError) as exc:  # distinct classes before 3.11
            if isinstance(exc, RequestTimeoutError):
                raise  # expired by the scheduler
            error = RequestTimeoutError(
                f"request {request.request_id!r} did not finish within {timeout} s"
            )
            self.engine.scheduler.abort(request.request_id, error)
            raise error from None
        finally:
            # Cancelled, timed out or finished: withdraw it (a no-op once it is done).
            self._futures.pop(request.request_id, None)
            self.engine.scheduler.cancel(request.request_id)

    def metrics(self) -> dict[str, int | float]:
        """RewardEngine.metrics() plus the number of callers awaiting a result."""
        return {**self.engine.metrics(), "requests_pending": len(self._futures)}

    # -- the loop -------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        scheduler = self.engine.scheduler
        try:
            while not self._stopping:
                if not scheduler.has_unfinished_requests():
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                for request in scheduler.expire():
                    self._resolve(request, None)
                out = scheduler.schedule()
                if out.is_empty:  # nothing can run now (all waiting on a deadline or a slot)
                    scheduler.update_after_step(out)
                    await asyncio.sleep(0.001)
                    continue
                start = time.perf_counter()
                try:
                    rewards, errors = await loop.run_in_executor(
                        self._executor, self.engine.execute, out
                    )
                except BaseException:
                    self.engine.abandon_step(out, "the engine loop was interrupted")
                    raise
                finished, failed = self.engine.finish_step(
                    out, rewards, errors, time.perf_counter() - start
                )
                for request, reward in finished:
                    self._resolve(request, reward)
                for request in failed:
                    self._resolve(request, None)
        except BaseException as exc:
            self._dead = exc
            if isinstance(exc, EngineDeadError):
                logger.error("the engine loop stopped: %s", exc)
            else:
                logger.exception("the engine loop stopped")
            dead = isinstance(exc, EngineDeadError)
            self._fail_all(exc if dead else EngineError(f"the engine loop stopped: {exc!r}"))
            if not isinstance(exc, Exception):
                raise

    def _resolve(self, request: Request, reward: Reward | None) -> None:
        future = self._futures.get(request.request_id)
        if future is None or future.done():
            return
        if request.error is not None:
            future.set_exception(request.error)
        else:
            future.set_result(reward)

    def _fail_all(self, error: EngineError) -> None:
        for request_id, future in list(self._futures.items()):
            self.engine.scheduler.cancel(request_id)
            if not future.done():
                future.set_exception(error)
        self._futures.clear()
