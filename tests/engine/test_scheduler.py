"""Scheduler: the one rule (budget, chunks, prefix hits), admission, preemption, failures.

A fake runner stands in for the model: it "computes" a chunk by writing, into each
slot the block table names, a key that identifies the token AND everything before
it (what a real K/V vector depends on), and checks that every earlier position of
the request reads back the right key. A wrong block table, a shared block written
to, or a prefix hit on the wrong content therefore fails the test.
"""

import itertools

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from engine.errors import (
    EngineOverloadedError,
    RequestCancelledError,
    RequestTimeoutError,
    RequestTooLongError,
)
from engine.kv_cache import KVCacheManager
from engine.request import Request, RequestStatus
from engine.scheduler import Scheduler, SchedulerConfig

BS = 16


def make_scheduler(num_blocks=1024, block_size=BS, clock=None, **config):
    kv = KVCacheManager(num_blocks, block_size)
    config.setdefault("max_num_batched_tokens", 8192)
    kwargs = {} if clock is None else {"clock": clock}
    return Scheduler(SchedulerConfig(**config), kv, **kwargs)


_ids = itertools.count()


def make_requests(n, num_tokens, prefix=(), **kwargs):
    """n requests of ``num_tokens`` tokens each: ``prefix`` then distinct tokens."""
    requests = []
    for _ in range(n):
        i = next(_ids)
        tail = [100_000 + i * 7919 + k for k in range(num_tokens - len(prefix))]
        requests.append(Request(f"r{i}", tuple(prefix) + tuple(tail), **kwargs))
    return requests


def add_all(scheduler, requests):
    for r in requests:
        scheduler.add_request(r)
    return requests


class FakeRunner:
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.slots = {}
        self.chunks = {}  # request id -> [(start, end)] since its latest admission

    @staticmethod
    def prefix_keys(token_ids):
        keys, key = [], 0
        for t in token_ids:
            key = hash((key, t))
            keys.append(key)
        return keys

    def run(self, out):
        s = self.scheduler
        bs = s.kv_cache.block_size
        assert out.num_batched_tokens == sum(c.num_tokens for c in out.chunks)
        assert out.num_batched_tokens <= s.config.max_num_batched_tokens
        assert len(out.chunks) <= s.config.max_num_seqs
        assert len({c.request_id for c in out.chunks}) == len(out.chunks)
        for rid in out.preempted_request_ids:
            self.chunks.pop(rid, None)
        for c in out.chunks:
            request = s.get_request(c.request_id)
            assert 0 <= c.start < c.end <= request.num_tokens
            assert c.token_ids == request.token_ids[c.start:c.end]
            assert len(c.block_table) == -(-c.end // bs)
            assert c.is_last == (c.end == request.num_tokens)
            keys = self.prefix_keys(request.token_ids[:c.end])
            slot = [c.block_table[p // bs] * bs + p % bs for p in range(c.end)]
            for p in range(c.start):
                assert self.slots.get(slot[p]) == keys[p], f"{c.request_id} reads a wrong KV at {p}"
            for p in range(c.start, c.end):
                assert s.kv_cache.ref_count(c.block_table[p // bs]) == 1, "write to a shared block"
                self.slots[slot[p]] = keys[p]
            self.chunks.setdefault(c.request_id, []).append((c.start, c.end))

    def step(self):
        out = self.scheduler.schedule()
        self.run(out)
        finished = self.scheduler.update_after_step(out)
        self.scheduler.check_invariants()
        for r in finished:
            self.check_coverage(r)
        return out, finished

    def check_coverage(self, request):
        """A finished request's chunks cover [cached prefix, num_tokens) in order."""
        bounds = self.chunks.pop(request.request_id)
        assert bounds[0][0] == request.num_cached_tokens
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
        assert bounds[-1][1] == request.num_tokens

    def drain(self, max_steps=10_000):
        outputs = []
        while self.scheduler.has_unfinished_requests():
            assert len(outputs) < max_steps, "the scheduler stopped making progress"
            outputs.append(self.step()[0])
        return outputs


def spans(out):
    return [(c.request_id, c.start, c.end) for c in out.chunks]


# ----------------------------------------------------------- the one rule
def test_single_request_runs_in_one_step_and_its_blocks_go_to_the_cache():
    s = make_scheduler()
    (r,) = add_all(s, make_requests(1, 40))
    runner = FakeRunner(s)
    out, finished = runner.step()
    assert spans(out) == [(r.request_id, 0, 40)]
    assert out.chunks[0].is_last and finished == [r]
    assert r.status is RequestStatus.FINISHED and r.block_ids == []
    assert s.kv_cache.num_cached_blocks == 2  # 40 tokens: two full blocks, one partial


def test_long_request_is_prefilled_in_chunks():
    s = make_scheduler(max_num_batched_tokens=32)
    (r,) = add_all(s, make_requests(1, 100))
    runner = FakeRunner(s)
    outs = runner.drain()
    assert [spans(o) for o in outs] == [[(r.request_id, a, b)] for a, b in
                                        [(0, 32), (32, 64), (64, 96), (96, 100)]]
    assert [len(o.chunks[0].block_table) for o in outs] == [2, 4, 6, 7]
    assert [o.chunks[0].is_last for o in outs] == [False, False, False, True]


def test_budget_is_shared_running_first_then_waiting():
    s = make_scheduler(max_num_batched_tokens=50)
    a, b, c = add_all(s, make_requests(3, 30))
    runner = FakeRunner(s)
    out, _ = runner.step()
    assert spans(out) == [(a.request_id, 0, 30), (b.request_id, 0, 20)]
    out, _ = runner.step()
    assert spans(out) == [(b.request_id, 20, 30), (c.request_id, 0, 30)]


def test_max_num_seqs_limits_running_requests():
    s = make_scheduler(max_num_seqs=3, max_num_batched_tokens=1000)
    add_all(s, make_requests(7, 10))
    runner = FakeRunner(s)
    outs = runner.drain()
    assert [len(o.chunks) for o in outs] == [3, 3, 1]


def test_full_cache_hit_still_computes_the_last_block():
    s = make_scheduler()
    (a,) = add_all(s, make_requests(1, 48))
    runner = FakeRunner(s)
    runner.drain()
    b = s.add_request(Request("again", a.token_ids))
    out, finished = runner.step()
    assert spans(out) == [("again", 32, 48)]  # capped at 47 tokens, rounded to a block
    assert finished == [b] and b.num_cached_tokens == 32


# ------------------------------------------------------ prefix-aware admission
def test_shared_prompt_is_computed_once_then_fanned_out():
    s = make_scheduler()
    prompt = tuple(range(1, 385))  # 384 tokens: 24 full blocks
    group = add_all(s, make_requests(8, 384 + 20, prefix=prompt, group="p"))
    runner = FakeRunner(s)
    out, _ = runner.step()
    assert spans(out) == [(group[0].request_id, 0, 404)]  # the prompt, once
    out, finished = runner.step()
    assert spans(out) == [(r.request_id, 384, 404) for r in group[1:]]
    assert len(finished) == 7 and all(r.num_cached_tokens == 384 for r in group[1:])
    m = s.metrics()
    assert m["tokens_computed"] == 404 + 7 * 20
    assert m["prefix_cache_hit_tokens"] == 7 * 384
    assert m["prefix_cache_hit_rate"] == pytest.approx(7 * 384 / (8 * 404))


def test_without_prefix_aware_admission_the_prompt_is_computed_n_times():
    s = make_scheduler(prefix_aware_admission=False)
    add_all(s, make_requests(8, 404, prefix=tuple(range(1, 385))))
    out, _ = FakeRunner(s).step()
    assert out.num_batched_tokens == 8 * 404


def test_held_requests_keep_their_place_but_do_not_block_others():
    s = make_scheduler()
    prompt = tuple(range(1, 65))
    g = add_all(s, make_requests(3, 80, prefix=prompt))
    (other,) = add_all(s, make_requests(1, 30))
    runner = FakeRunner(s)
    out, _ = runner.step()
    assert spans(out) == [(g[0].request_id, 0, 80), (other.request_id, 0, 30)]
    out, _ = runner.step()
    assert spans(out) == [(g[1].request_id, 64, 80), (g[2].request_id, 64, 80)]


def test_group_waits_for_a_chunked_prompt_to_finish():
    s = make_scheduler(max_num_batched_tokens=64)
    g = add_all(s, make_requests(3, 160, prefix=tuple(range(1, 129))))
    outs = FakeRunner(s).drain()
    assert [spans(o) for o in outs[:2]] == [[(g[0].request_id, 0, 64)],
                                            [(g[0].request_id, 64, 128)]]
    assert sum(o.num_batched_tokens for o in outs) == 160 + 2 * 32


# ------------------------------------------------------------- preemption
def test_preemption_frees_the_latest_admitted_request():
    # Six blocks: room for one 96-token request. A chunk cap lets both start.
    s = make_scheduler(num_blocks=6, max_num_batched_tokens=64, max_chunk_tokens=32)
    a, b = add_all(s, make_requests(2, 96))
    runner = FakeRunner(s)
    out, _ = runner.step()
    assert spans(out) == [(a.request_id, 0, 32), (b.request_id, 0, 32)]
    out, _ = runner.step()  # a takes the last two blocks; b cannot grow and yields
    assert spans(out) == [(a.request_id, 32, 64)]
    assert out.preempted_request_ids == (b.request_id,)
    assert b.status is RequestStatus.WAITING and b.num_computed_tokens == 0
    assert b.block_ids == [] and b.num_preemptions == 1
    runner.drain()
    assert a.status is b.status is RequestStatus.FINISHED
    assert s.metrics()["num_preemptions"] == 1


def test_preempted_request_resumes_from_its_cached_blocks():
    s = make_scheduler(num_blocks=7, max_num_batched_tokens=64, max_chunk_tokens=32)
    a, b = add_all(s, make_requests(2, 96))
    runner = FakeRunner(s)
    runner.step()
    out, _ = runner.step()
    assert out.preempted_request_ids == (b.request_id,)
    # b's two computed blocks went to the cache; its tail block is evicted first,
    # so when b comes back its head block is still there.
    runner.drain()
    assert b.status is RequestStatus.FINISHED and b.num_cached_tokens == 16


def test_preemption_spares_higher_priority_requests():
    s = make_scheduler(num_blocks=6, max_num_batched_tokens=64, max_chunk_tokens=32)
    (low,) = add_all(s, make_requests(1, 96, priority=5))
    runner = FakeRunner(s)
    runner.step()
    (high,) = add_all(s, make_requests(1, 96, priority=0))
    out, _ = runner.step()
    assert spans(out) == [(low.request_id, 32, 64), (high.request_id, 0, 32)]
    out, _ = runner.step()  # high runs first now; low holds the blocks it needs
    assert out.preempted_request_ids == (low.request_id,)
    assert spans(out) == [(high.request_id, 32, 64)]
    runner.drain()
    assert low.status is high.status is RequestStatus.FINISHED


def test_small_pool_never_drops_a_request():
    s = make_scheduler(num_blocks=8, max_num_batched_tokens=256, max_chunk_tokens=40)
    requests = add_all(s, make_requests(6, 100))
    FakeRunner(s).drain()
    assert all(r.status is RequestStatus.FINISHED for r in requests)
    assert s.metrics()["num_preemptions"] > 0
    assert s.kv_cache.num_free_blocks + s.kv_cache.num_cached_blocks == 8


def test_waiting_request_that_does_not_fit_yet_waits_at_the_head():
    s = make_scheduler(num_blocks=6, max_num_batched_tokens=200)
    a, big, small = add_all(s, [*make_requests(1, 64), *make_requests(1, 80),
                                *make_requests(1, 16)])
    runner = FakeRunner(s)
    out, _ = runner.step()
    assert spans(out) == [(a.request_id, 0, 64)]  # small does not jump ahead of big
    out, _ = runner.step()
    assert spans(out) == [(big.request_id, 0, 80), (small.request_id, 0, 16)]


# ---------------------------------------------------------------- failures
def test_request_longer_than_the_pool_fails_at_admission():
    s = make_scheduler(num_blocks=4)
    (r,) = make_requests(1, 65)
    assert s.add_request(r) is r
    assert r.status is RequestStatus.FAILED
    assert isinstance(r.error, RequestTooLongError)
    assert "need 5 KV blocks" in r.failure_reason and "the pool has 4" in r.failure_reason
    assert not s.has_unfinished_requests()
    (ok,) = add_all(s, make_requests(1, 64))
    FakeRunner(s).drain()
    assert ok.status is RequestStatus.FINISHED


def test_request_longer_than_max_model_len_fails_at_admission():
    s = make_scheduler(max_model_len=100)
    (r,) = make_requests(1, 101)
    s.add_request(r)
    assert r.status is RequestStatus.FAILED and "max_model_len=100" in r.failure_reason


def test_waiting_request_past_its_deadline_is_never_computed():
    now = [0.0]
    s = make_scheduler(clock=lambda: now[0], max_num_batched_tokens=32)
    (a,) = add_all(s, make_requests(1, 64))
    (b,) = add_all(s, make_requests(1, 16, deadline=1.0))
    runner = FakeRunner(s)
    runner.step()  # a takes the whole budget
    now[0] = 1.0
    assert s.expire() == [b]
    assert b.status is RequestStatus.FAILED and isinstance(b.error, TimeoutError)
    assert isinstance(b.error, RequestTimeoutError) and "before it started" in b.failure_reason
    outs = runner.drain()
    assert all(c.request_id == a.request_id for o in outs for c in o.chunks)


def test_running_request_past_its_deadline_releases_its_blocks():
    s = make_scheduler(max_num_batched_tokens=32)
    (r,) = add_all(s, make_requests(1, 100, deadline=5.0))
    runner = FakeRunner(s)
    runner.step()
    assert s.expire(now=4.9) == []
    assert s.expire(now=5.0) == [r]
    assert "after 32 of 100 tokens" in r.failure_reason
    assert s.kv_cache.num_used_blocks == 0 and s.kv_cache.num_cached_blocks == 2
    assert s.metrics()["num_failed"] == 1
    s.check_invariants()


def test_cancel_waiting_and_running_requests():
    s = make_scheduler(max_num_batched_tokens=32)
    a, b = add_all(s, make_requests(2, 64))
    runner = FakeRunner(s)
    runner.step()
    assert s.cancel(a.request_id) is a
    assert s.cancel(b.request_id) is b
    assert s.cancel("unknown") is None
    for r in (a, b):
        assert r.status is RequestStatus.CANCELLED and isinstance(r.error, RequestCancelledError)
    assert s.kv_cache.num_used_blocks == 0
    assert not s.has_unfinished_requests()
    assert s.schedule().is_empty


def test_cancel_during_a_step_drops_its_results():
    s = make_scheduler()
    a, b = add_all(s, make_requests(2, 40))
    out = s.schedule()
    s.cancel(a.request_id)  # e.g. the awaiting task was cancelled while the batch ran
    assert s.update_after_step(out) == [b]
    assert a.status is RequestStatus.CANCELLED and a.num_computed_tokens == 0
    s.check_invariants()


# ------------------------------------------------------- priorities, queue
def test_lower_priority_value_runs_first_and_fcfs_within_a_priority():
    s = make_scheduler(max_num_seqs=1)
    low1, low2 = add_all(s, make_requests(2, 10, priority=5))
    high1, high2 = add_all(s, make_requests(2, 10, priority=-1))
    mid = add_all(s, make_requests(1, 10))[0]
    order = [o.chunks[0].request_id for o in FakeRunner(s).drain()]
    assert order == [r.request_id for r in (high1, high2, mid, low1, low2)]


def test_full_waiting_queue_raises_overloaded():
    s = make_scheduler(max_waiting_requests=3)
    add_all(s, make_requests(3, 10))
    with pytest.raises(EngineOverloadedError, match="max_waiting_requests=3"):
        s.add_request(make_requests(1, 10)[0])
    FakeRunner(s).step()  # admitted requests leave the waiting queue
    s.add_request(make_requests(1, 10)[0])


def test_duplicate_request_id_is_rejected():
    s = make_scheduler()
    s.add_request(Request("x", (1, 2, 3)))
    with pytest.raises(ValueError, match="duplicate"):
        s.add_request(Request("x", (1, 2, 3)))


def test_schedule_requires_the_previous_step_to_be_applied():
    s = make_scheduler()
    add_all(s, make_requests(1, 10))
    out = s.schedule()
    with pytest.raises(RuntimeError):
        s.schedule()
    s.update_after_step(out)
    with pytest.raises(RuntimeError):
        s.update_after_step(out)


def test_metrics_is_a_plain_dict():
    s = make_scheduler(max_num_batched_tokens=32)
    add_all(s, make_requests(2, 40))
    FakeRunner(s).step()
    m = s.metrics()
    assert m["num_waiting"] == 1 and m["num_running"] == 1
    assert m["last_step_tokens"] == 32 and m["last_step_seqs"] == 1
    assert m["blocks_used"] == 2
    assert all(isinstance(v, int | float) for v in m.values())


@pytest.mark.parametrize("field", ["max_num_batched_tokens", "max_num_seqs", "max_model_len",
                                   "max_waiting_requests", "max_chunk_tokens"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_config_rejects_non_positive_ints(field, value):
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**{field: value})


def test_request_needs_tokens():
    with pytest.raises(ValueError):
        Request("empty", ())


# ------------------------------------------------------- property tests
TOKENS = st.integers(0, 3)  # a tiny vocabulary makes accidental shared blocks common


@st.composite
def workloads(draw, pressure=False):
    """Random arrivals; ``pressure`` makes long chunked prefills share a tight pool."""
    budget = st.integers(24, 96) if pressure else st.integers(1, 96)
    chunk = st.integers(1, 12) if pressure else st.none() | st.integers(1, 24)
    pool_tokens = st.integers(112, 160) if pressure else st.integers(16, 192)
    config = SchedulerConfig(
        max_num_batched_tokens=draw(budget),
        max_num_seqs=draw(st.integers(2 if pressure else 1, 6)),
        max_model_len=160 if pressure else draw(st.integers(32, 160)),
        max_waiting_requests=draw(st.integers(1, 16)),
        max_chunk_tokens=draw(chunk),
        prefix_aware_admission=draw(st.booleans()),
    )
    prompts = draw(st.lists(st.lists(TOKENS, max_size=64), min_size=1, max_size=3))
    arrival = st.tuples(
        st.integers(0, 2 if pressure else 12),  # step it arrives at
        st.integers(0, len(prompts) - 1),  # which prompt it starts with
        st.lists(TOKENS, min_size=32 if pressure else 0, max_size=48),  # its own tail
        st.integers(0, 2),  # priority
        st.none() | st.integers(0, 20),  # deadline, in steps after arrival
    )
    block_size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    arrivals = draw(st.lists(arrival, min_size=3 if pressure else 1, max_size=16))
    return {
        "block_size": block_size,
        "num_blocks": max(1, draw(pool_tokens) // block_size),
        "config": config,
        "prompts": prompts,
        "arrivals": arrivals,
        # (step, which arrival, cancel while that step's batch runs)
        "cancels": draw(st.lists(st.tuples(st.integers(0, 12),
                                           st.integers(0, len(arrivals) - 1),
                                           st.booleans()), max_size=4)),
    }


def computed_block_hashes(scheduler, out):
    """Hashes of the full blocks each chunk of ``out`` writes to."""
    bs = scheduler.kv_cache.block_size
    hashes = []
    for c in out.chunks:
        request = scheduler.get_request(c.request_id)
        full = scheduler.kv_cache.block_hashes(request)
        hashes += [full[b] for b in range(c.start // bs, (c.end - 1) // bs + 1) if b < len(full)]
    return hashes


def arrive(s, w, step, requests):
    for k, (at, p, tail, priority, ttl) in enumerate(w["arrivals"]):
        if at != step:
            continue
        tokens = tuple(w["prompts"][p]) + tuple(tail) or (0,)
        r = Request(f"q{k}", tokens, priority=priority,
                    deadline=None if ttl is None else step + ttl)
        try:
            requests[r.request_id] = s.add_request(r)
        except EngineOverloadedError:
            event("overloaded")
            # preempted requests return to the queue whatever its bound, so it may be over
            assert s.num_waiting >= w["config"].max_waiting_requests


def drive(w):
    """Run the workload through scheduler and fake runner, checking every step."""
    s = Scheduler(w["config"], KVCacheManager(w["num_blocks"], w["block_size"]),
                  clock=lambda: 0.0)
    runner = FakeRunner(s)
    requests, started = {}, set()
    last_arrival = max(a[0] for a in w["arrivals"])
    for step in itertools.count():
        assert step < 5000, "the scheduler stopped making progress"
        arrive(s, w, step, requests)
        cancels = [(f"q{k}", mid) for at, k, mid in w["cancels"] if at == step]
        for rid, mid in cancels:
            if not mid:
                s.cancel(rid)
        s.expire(now=step)
        s.check_invariants()
        out = s.schedule()
        runner.run(out)
        if w["config"].prefix_aware_admission:
            hashes = computed_block_hashes(s, out)
            assert len(hashes) == len(set(hashes)), "one block computed twice in a step"
        started.update(c.request_id for c in out.chunks)
        for rid, mid in cancels:
            if mid and s.cancel(rid) is not None:
                event("cancelled while its batch ran")
        for r in s.update_after_step(out):
            runner.check_coverage(r)
        s.check_invariants()
        if step >= last_arrival and not s.has_unfinished_requests():
            return s, requests, started


def check_drained(s, requests, started):
    """Every request ended with a result or a reason, and every block came back."""
    for r in requests.values():
        assert r.status.is_done and r.block_ids == []
        if r.status is RequestStatus.FINISHED:
            assert r.error is None and r.num_computed_tokens == r.num_tokens
            assert r.num_cached_tokens % s.kv_cache.block_size == 0
            assert r.num_cached_tokens <= r.num_tokens - 1
        else:
            assert r.failure_reason
            if "before it started" in r.failure_reason:
                assert r.request_id not in started
    kv = s.kv_cache
    assert kv.num_used_blocks == 0
    assert kv.num_free_blocks + kv.num_cached_blocks == kv.num_blocks
    assert s.num_waiting == s.num_running == 0
    m = s.metrics()
    assert m["num_finished"] == sum(r.status is RequestStatus.FINISHED for r in requests.values())
    # What the examples exercised (shown by pytest --hypothesis-show-statistics).
    for name in ("num_preemptions", "prefix_cache_hit_tokens", "num_cancelled", "num_failed"):
        if m[name]:
            event(name)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads())
def test_random_workloads_drain_without_leaks(w):
    check_drained(*drive(w))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(workloads(pressure=True))
def test_random_workloads_under_block_pressure_drain_without_leaks(w):
    check_drained(*drive(w))
