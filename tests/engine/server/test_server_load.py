"""Behaviour under load and faults, against the slow server (conftest: one sequence
runs at a time, 64 tokens per step, each step held 50 ms, two sequences may wait,
2 s request timeout) and, for SIGTERM, a process of its own."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import threading
import time
from urllib.parse import urlparse

import httpx
from server_testing import SLOW_BATCH_TOKENS, SLOW_STEP_S, SLOW_TIMEOUT_S, assert_close, stop

_seed = iter(range(1_000, 1_000_000))


def distinct(n: int) -> list[int]:
    """n token ids no other test uses (no prefix-cache hit can shorten the work)."""
    base = next(_seed) * 7919 % 100_000
    return [(base + 3 * i) % 120_000 + 1 for i in range(n)]


def seconds_for(n_tokens: int) -> float:
    return -(-n_tokens // SLOW_BATCH_TOKENS) * SLOW_STEP_S  # a lower bound


def wait_metric(server, name: str, predicate, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = server.metrics()
        if predicate(m.get(name, 0.0)):
            return m
        time.sleep(0.01)
    raise AssertionError(f"{name} never satisfied the condition: {server.metrics().get(name)}")


def test_overload_is_503_with_retry_after_at_once(slow_server, reference):
    long, short = distinct(1000), [distinct(20), distinct(21)]
    assert seconds_for(len(long)) < SLOW_TIMEOUT_S

    async def run():
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=30) as client:

            def post(seqs):
                return asyncio.create_task(client.post("/v1/score", json={"token_ids": seqs}))

            first = post([long])
            await asyncio.to_thread(wait_metric, slow_server, "reward_engine_requests_running",
                                    lambda v: v == 1)  # fmt: skip
            waiting = [post([s]) for s in short]
            await asyncio.to_thread(wait_metric, slow_server, "reward_engine_requests_waiting",
                                    lambda v: v == 2)  # fmt: skip
            start = time.perf_counter()
            refused = await client.post("/v1/score", json={"token_ids": [distinct(5)]})
            refused_after = time.perf_counter() - start
            done = await asyncio.gather(first, *waiting)
            return refused, refused_after, done

    refused, refused_after, done = asyncio.run(run())
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert "queue is full" in refused.json()["error"]["message"]
    assert refused_after < 0.5  # answered at once, not queued
    assert [r.status_code for r in done] == [200, 200, 200]
    got = [r.json()["rewards"][0] for r in done]
    assert_close(got, reference.score_token_ids([long, *short]))


def test_timeout_is_504_and_a_sequence_not_started_is_never_computed(slow_server):
    """Two sequences in one request, one running at a time: the first is cut by the
    deadline, the second never starts, and nothing of it is computed."""
    first, second = distinct(3000), distinct(3000)
    assert seconds_for(len(first)) > SLOW_TIMEOUT_S
    before = slow_server.metrics()
    start = time.perf_counter()
    r = httpx.post(slow_server.url + "/v1/score", json={"token_ids": [first, second]},
                   timeout=30)  # fmt: skip
    elapsed = time.perf_counter() - start
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "timeout" and "2.0 s" in r.json()["error"]["message"]
    assert SLOW_TIMEOUT_S <= elapsed < SLOW_TIMEOUT_S + 1.0
    after = wait_metric(slow_server, "reward_engine_kv_blocks_used", lambda v: v == 0)
    computed = after["reward_engine_tokens_computed_total"] - before[
        "reward_engine_tokens_computed_total"]  # fmt: skip
    assert 0 < computed < len(first)  # the first in part, the second not at all
    ended = sum(
        after[k] - before[k]
        for k in ("reward_engine_sequences_failed_total", "reward_engine_sequences_cancelled_total")
    )
    assert ended == 2
    assert after["reward_engine_requests_running"] == after["reward_engine_requests_waiting"] == 0


def test_client_disconnect_cancels_and_frees_kv_blocks(slow_server):
    seq = distinct(3000)
    before = slow_server.metrics()
    body = json.dumps({"token_ids": [seq]}).encode()
    host = urlparse(slow_server.url)
    sock = socket.create_connection((host.hostname, host.port))
    sock.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip
    running = wait_metric(slow_server, "reward_engine_requests_running", lambda v: v == 1)
    assert running["reward_engine_kv_blocks_used"] > 0
    sock.close()
    closed = time.perf_counter()
    after = wait_metric(slow_server, "reward_engine_kv_blocks_used", lambda v: v == 0, 1.0)
    assert time.perf_counter() - closed < 1.0  # freed long before the sequence would finish
    assert after["reward_engine_requests_running"] == 0
    cancelled = after["reward_engine_sequences_cancelled_total"] - before[
        "reward_engine_sequences_cancelled_total"]  # fmt: skip
    assert cancelled == 1
    computed = after["reward_engine_tokens_computed_total"] - before[
        "reward_engine_tokens_computed_total"]  # fmt: skip
    assert computed < len(seq) / 2
    assert 'route="/v1/score",status="499"' in "".join(after)


def test_sigterm_drains_then_exits_zero(slow_server, reference):
    """Uses up the shared slow server (the fixture starts a new one for any later test)."""
    server = slow_server
    try:
        seq = distinct(800)
        assert 2 * SLOW_STEP_S < seconds_for(len(seq)) < SLOW_TIMEOUT_S
        result = {}

        def in_flight():
            result["r"] = httpx.post(server.url + "/v1/score", json={"token_ids": [seq]},
                                     timeout=30)  # fmt: skip

        thread = threading.Thread(target=in_flight)
        thread.start()
        wait_metric(server, "reward_engine_requests_running", lambda v: v == 1)
        server.proc.send_signal(signal.SIGTERM)
        ready = None
        for _ in range(100):
            ready = httpx.get(server.url + "/v1/health/ready", timeout=5)
            if ready.status_code == 503:
                break
            time.sleep(0.01)
        assert ready.status_code == 503 and ready.json() == {"status": "draining"}
        assert httpx.get(server.url + "/v1/health/live", timeout=5).status_code == 200
        new = httpx.post(server.url + "/v1/score", json={"token_ids": [[1, 2]]}, timeout=5)
        assert new.status_code == 503 and new.json()["error"]["code"] == "draining"
        assert "Retry-After" in new.headers
        thread.join(30)
        assert result["r"].status_code == 200, result["r"].text
        assert_close(result["r"].json()["rewards"], reference.score_token_ids([seq]))
        assert server.proc.wait(30) == 0
        log = server.log_text()
        assert "draining" in log and "drained" in log
    finally:
        stop(server)


def test_the_first_signal_drains_a_second_exits():
    """The uvicorn server's signal handling, without a process: the first SIGTERM only
    begins the drain; a second one exits (a third forces it)."""
    import uvicorn

    from engine.server.app import create_app
    from engine.server.cli import _draining_server
    from engine.server.config import ServerConfig

    app = create_app(ServerConfig(model="unused"))
    drains = []
    server = _draining_server(uvicorn.Config(app), app, drains.append)
    server.started = True
    server.handle_exit(signal.SIGTERM, None)
    assert drains == [app] and not server.should_exit
    server.drained()
    assert server.should_exit and not server.force_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.force_exit
