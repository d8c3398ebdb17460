"""AsyncRewardEngine: continuous batching, cancellation, timeouts, priorities, overload,
failure isolation, and no leaked KV block once the work drains.

A recording runner wraps the real one: it logs which request chunks each step ran
and can hold a step (a threading.Event "gate") so a test can act while the model is
busy, which also shows that the event loop stays responsive during a step.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
import torch

from engine import (
    AsyncRewardEngine,
    EngineError,
    EngineOverloadedError,
    RequestFailedError,
    RewardEngine,
)

VOCAB = 1000
RTOL = 1e-5  # fp32: batching changes only summation order


@pytest.fixture(scope="module")
def ckpt(make_tiny_checkpoint):
    return make_tiny_checkpoint(vocab_size=VOCAB, with_tokenizer=False)


@pytest.fixture(scope="module")
def reference(ckpt):
    """Rewards of sequences scored alone by the sync engine."""
    eng = RewardEngine.from_pretrained(ckpt, dtype="float32", enable_prefix_caching=False)
    return lambda seqs: eng.score_token_ids(seqs)


def tokens(n, seed):
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Recorder:
    """Wraps a runner's execute: logs each step's (request_id, start, end) chunks and,
    while ``hold`` is set, blocks the worker thread at the next step until released."""

    def __init__(self, engine: AsyncRewardEngine, fail_on_token: int | None = None):
        self.runner = engine.engine.runner
        self.execute = self.runner.execute
        self.runner.execute = self
        self.steps: list[list[tuple[str, int, int]]] = []
        self.hold = threading.Event()
        self.started = threading.Event()
        self.released = threading.Event()
        self.fail_on_token = fail_on_token

    def __call__(self, chunks):
        self.steps.append([(c.request_id, c.start, c.end) for c in chunks])
        if self.hold.is_set():
            self.hold.clear()
            self.started.set()
            assert self.released.wait(10), "the test never released the step"
            self.released.clear()
        if self.fail_on_token is not None and any(
            self.fail_on_token in c.token_ids for c in chunks
        ):
            raise RuntimeError("bad token in this batch")
        return self.execute(chunks)

    async def wait_started(self):
        """Wait (without blocking the event loop) until a held step is running."""
        for _ in range(10_000):
            if self.started.is_set():
                self.started.clear()
                return
            await asyncio.sleep(0.001)
        raise AssertionError("no step started")

    def ran(self, request_id):
        return [i for i, step in enumerate(self.steps) if any(c[0] == request_id for c in step)]


def make_engine(ckpt, **runtime):
    return AsyncRewardEngine.from_pretrained(ckpt, dtype="float32", **runtime)


def assert_drained(eng):
    m = eng.metrics()
    assert m["num_waiting"] == m["num_running"] == m["blocks_used"] == 0, m
    assert m["blocks_free"] + m["blocks_cached"] == m["blocks_total"], m
    assert m["requests_pending"] == 0
    eng.engine.scheduler.check_invariants()


def assert_close(got, ref):
    scale = max(abs(x) for x in ref)
    assert max(abs(a - b) for a, b in zip(got, ref, strict=True)) <= RTOL * scale, (got, ref)


def test_concurrent_callers_are_batched_and_get_their_own_rewards(ckpt, reference):
    prompt = tokens(40, 1)
    seqs = [prompt + tokens(5 + i, 10 + i) for i in range(8)]
    seqs += [tokens(3 + 11 * i, 20 + i) for i in range(8)]

    async def main():
        async with make_engine(ckpt, max_num_batched_tokens=256) as eng:
            got = await asyncio.gather(*(eng.score_token_ids(s) for s in seqs))
            return eng, list(got)

    eng, got = asyncio.run(main())
    assert_close(got, reference(seqs))
    m = eng.metrics()
    assert m["model_steps"] < len(seqs) and m["prefix_cache_hit_tokens"] == 7 * 32
    assert_drained(eng)


def test_a_request_arriving_during_a_step_joins_the_next_step(ckpt, reference):
    a, b = tokens(80, 2), tokens(20, 3)

    async def main():
        eng = make_engine(ckpt, max_num_batched_tokens=64, max_chunk_tokens=32)
        rec = Recorder(eng)
        async with eng:
            rec.hold.set()
            task_a = asyncio.create_task(eng.score_token_ids(a))
            await rec.wait_started()  # step 1 (a's first chunk) is running in the worker
            task_b = asyncio.create_task(eng.score_token_ids(b))
            await asyncio.sleep(0.01)  # the loop is free to take b meanwhile
            rec.released.set()
            got = [await task_a, await task_b]
        return eng, rec, got

    eng, rec, got = asyncio.run(main())
    assert [[(s, e) for _, s, e in step] for step in rec.steps] == [
        [(0, 32)],
        [(32, 64), (0, 20)],  # b runs beside a's second chunk, not after a
        [(64, 80)],
    ]
    assert_close(got, reference([a, b]))
    assert_drained(eng)


def test_cancelling_the_caller_frees_the_request_blocks_at_once(ckpt, reference):
    long_seq, other = tokens(96, 4), tokens(30, 5)

    async def main():
        eng = make_engine(ckpt, max_num_batched_tokens=32)
        rec = Recorder(eng)
        async with eng:
            rec.hold.set()
            task = asyncio.create_task(eng.score_token_ids(long_seq))
            await rec.wait_started()
            assert eng.metrics()["blocks_used"] == 2
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            used_after_cancel = eng.metrics()["blocks_used"]  # the step is still running
            rec.released.set()
            after = await eng.score_token_ids(other)
        return eng, rec, used_after_cancel, after

    eng, rec, used_after_cancel, after = asyncio.run(main())
    assert used_after_cancel == 0
    assert len(rec.steps) == 1 + 1  # the cancelled request never ran again
    assert_close([after], reference([other]))
    assert eng.metrics()["num_cancelled"] == 1
    assert_drained(eng)


def test_a_request_that_times_out_before_it_starts_is_never_computed(ckpt, reference):
    blocker, late = tokens(40, 6), tokens(40, 7)

    async def main():
        eng = make_engine(ckpt, max_num_seqs=1)
        rec = Recorder(eng)
        async with eng:
            rec.hold.set()
            first = asyncio.create_task(eng.score_token_ids(blocker))
            await rec.wait_started()
            with pytest.raises(TimeoutError, match="did not finish within"):
                await eng.score_token_ids(late, timeout=0.05)
            rec.released.set()
            return eng, rec, await first

    eng, rec, first = asyncio.run(main())
    assert len(rec.steps) == 1  # only the blocker ran
    assert_close([first], reference([blocker]))
    assert_drained(eng)


def test_lower_priority_numbers_run_first_and_fcfs_within_a_priority(ckpt):
    blocker = tokens(20, 8)
    priorities = [3, 1, 2, 1, 0, 2]

    async def main():
        eng = make_engine(ckpt, max_num_seqs=1)
        rec = Recorder(eng)
        async with eng:
            rec.hold.set()
            first = asyncio.create_task(eng.score_token_ids(blocker))
            await rec.wait_started()
            tasks = [
                asyncio.create_task(eng.score_token_ids(tokens(10, 30 + i), priority=p))
                for i, p in enumerate(priorities)
            ]
            await asyncio.sleep(0.01)
            rec.released.set()
            await asyncio.gather(first, *tasks)
        return eng, rec

    eng, rec = asyncio.run(main())
    order = [step[0][0] for step in rec.steps[1:]]
    ids = [f"req-{i + 1}" for i in range(len(priorities))]  # req-0 is the blocker
    expected = [ids[i] for i in sorted(range(len(priorities)), key=lambda i: priorities[i])]
    assert order == expected
    assert_drained(eng)


def test_a_full_waiting_queue_raises_the_overload_error(ckpt):
    async def main():
        eng = make_engine(ckpt, max_num_seqs=1, max_waiting_requests=2)
        rec = Recorder(eng)
        async with eng:
            rec.hold.set()
            first = asyncio.create_task(eng.score_token_ids(tokens(10, 40)))
            await rec.wait_started()
            queued = [
                asyncio.create_task(eng.score_token_ids(tokens(10, 41 + i))) for i in range(2)
            ]
            await asyncio.sleep(0.01)
            with pytest.raises(EngineOverloadedError, match="retry later"):
                await eng.score_token_ids(tokens(10, 50))
            rec.released.set()
            results = await asyncio.gather(first, *queued)
        return eng, results

    eng, results = asyncio.run(main())
    assert len(results) == 3 and all(isinstance(r, float) for r in results)
    assert_drained(eng)


def test_one_bad_request_fails_alone(ckpt, reference):
    good = [tokens(30, 60), tokens(45, 61)]
    bad_token = next(t for t in range(VOCAB) if all(t not in s for s in good))
    poisoned = tokens(20, 62)[:-1] + [bad_token]

    async def main():
        eng = make_engine(ckpt)
        rec = Recorder(eng, fail_on_token=bad_token)
        async with eng:
            results = await asyncio.gather(
                eng.score_token_ids(good[0]),
                eng.score_token_ids(poisoned),
                eng.score_token_ids([VOCAB + 1]),  # refused before it is queued
                eng.score_token_ids([]),
                eng.score_token_ids(good[1]),
                return_exceptions=True,
            )
        return eng, rec, results

    eng, rec, results = asyncio.run(main())
    ok0, bad, oov, empty, ok1 = results
    assert isinstance(bad, RequestFailedError) and "bad token" in str(bad)
    assert isinstance(oov, ValueError) and "outside" in str(oov)
    assert isinstance(empty, ValueError) and "empty" in str(empty)
    assert_close([ok0, ok1], reference(good))
    assert len(rec.steps[0]) == 3  # the batch failed, then each chunk ran alone
    assert eng.metrics()["num_failed"] == 1
    assert_drained(eng)


def test_metrics_are_a_plain_dict(ckpt):
    async def main():
        async with make_engine(ckpt) as eng:
            await eng.score_token_ids(tokens(50, 70))
            return eng.metrics()

    m = asyncio.run(main())
    json.dumps(m)
    for key in (
        "num_waiting",
        "num_running",
        "tokens_requested",
        "tokens_computed",
        "prefix_cache_hit_rate",
        "blocks_used",
        "blocks_cached",
        "blocks_free",
        "step_time_last_s",
        "step_time_mean_s",
        "batch_tokens_last",
        "batch_tokens_mean",
    ):
        assert key in m, key
    assert m["tokens_requested"] == m["tokens_computed"] == 50


def test_requests_need_a_running_engine_and_stopping_fails_the_pending_ones(ckpt):
    async def main():
        eng = make_engine(ckpt, max_num_seqs=1)
        with pytest.raises(RuntimeError, match="not running"):
            await eng.score_token_ids([1, 2, 3])
        rec = Recorder(eng)
        await eng.start()
        rec.hold.set()
        task = asyncio.create_task(eng.score_token_ids(tokens(10, 80)))
        waiting = asyncio.create_task(eng.score_token_ids(tokens(10, 81)))
        await rec.wait_started()
        stopping = asyncio.create_task(eng.stop())
        await asyncio.sleep(0.01)
        rec.released.set()
        await stopping
        return eng, await asyncio.gather(task, waiting, return_exceptions=True)

    eng, (done, stopped) = asyncio.run(main())
    assert isinstance(done, float)  # its step was running: it finishes
    assert isinstance(stopped, EngineError) and "stopped" in str(stopped)
    assert_drained(eng)
