"""engine.client without a server: what RewardClient sends, how it retries a 503 after
the server's Retry-After, and the errors it raises (an httpx MockTransport answers).
tests/engine/server/test_server_endpoints.py runs it against a real server."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from engine.client import RewardClient, RewardItemError, RewardServerError, reward_function


class FakeServer:
    """Answers /v1/score: first `busy` requests get 503 with Retry-After, then rewards
    (the number of messages of each conversation, or an error for an empty one)."""

    def __init__(self, busy: int = 0, retry_after: str = "0.05"):
        self.busy = busy
        self.retry_after = retry_after
        self.requests: list[httpx.Request] = []
        self.times: list[float] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(time.monotonic())
        if self.busy > 0:
            self.busy -= 1
            return httpx.Response(503, headers={"Retry-After": self.retry_after},
                                  json={"error": {"message": "queue full", "type": "x",
                                                  "code": "overloaded"}})  # fmt: skip
        body = json.loads(request.content)
        items = body.get("conversations") or body.get("token_ids") or body.get("responses")
        rewards = [{"error": {"message": "empty", "type": "x", "code": "empty"}} if not x
                   else float(len(x)) for x in items]  # fmt: skip
        return httpx.Response(200, json={"rewards": rewards, "usage": {}})

    def client(self, **kwargs) -> RewardClient:
        return RewardClient("http://rm", transport=httpx.MockTransport(self), **kwargs)


def test_sends_each_form_with_the_key():
    fake = FakeServer()
    client = fake.client(api_key="k")
    assert client.score([[{"role": "user", "content": "a"}]]) == [1.0]
    assert client.score(prompt="p", responses=["ab", "c"]) == [2.0, 1.0]
    assert client.score(token_ids=[(1, 2, 3)]) == [3.0]
    bodies = [json.loads(r.content) for r in fake.requests]
    assert bodies[1] == {"prompt": "p", "responses": ["ab", "c"]}
    assert bodies[2] == {"token_ids": [[1, 2, 3]]}
    assert all(r.headers["Authorization"] == "Bearer k" for r in fake.requests)
    assert all(r.url.path == "/v1/score" for r in fake.requests)


def test_retries_503_after_retry_after():
    fake = FakeServer(busy=2, retry_after="0.1")
    assert fake.client().score(token_ids=[[1]]) == [1.0]
    assert len(fake.requests) == 3
    gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert all(g >= 0.09 for g in gaps), gaps


def test_async_retries_too():
    fake = FakeServer(busy=1)
    client = fake.client()

    async def run():
        out = await client.ascore(token_ids=[[1, 2]])
        await client.aclose()
        return out

    assert asyncio.run(run()) == [2.0]
    assert len(fake.requests) == 2


def test_gives_up_after_max_retries():
    fake = FakeServer(busy=10)
    with pytest.raises(RewardServerError) as err:
        fake.client(max_retries=2).score(token_ids=[[1]])
    assert err.value.status == 503 and err.value.code == "overloaded"
    assert len(fake.requests) == 3


def test_item_errors_raise_or_come_back():
    fake = FakeServer()
    with pytest.raises(RewardItemError, match="item 1 was not scored: empty") as err:
        fake.client().score(token_ids=[[1], []])
    assert err.value.errors == {1: "empty"}
    out = fake.client().score(token_ids=[[1], []], return_errors=True)
    assert out[0] == 1.0 and out[1]["error"]["code"] == "empty"


def test_one_form_per_call():
    client = FakeServer().client()
    with pytest.raises(ValueError, match="give one of"):
        client.score()
    with pytest.raises(ValueError, match="give one of"):
        client.score([[{"role": "user", "content": "a"}]], token_ids=[[1]])
    with pytest.raises(ValueError, match="give one of"):
        client.score(responses=["a"])


def test_trl_reward_function_builds_conversations():
    fake = FakeServer()
    reward_func = reward_function("http://rm", client=fake.client())
    assert reward_func.__name__ == "remote_reward"
    assert reward_func(prompts=["p1", "p2"], completions=["c1", "c2"], extra=1) == [2.0, 2.0]
    sent = json.loads(fake.requests[-1].content)["conversations"]
    assert sent[0] == [{"role": "user", "content": "p1"},
                       {"role": "assistant", "content": "c1"}]  # fmt: skip
    prompts = [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]]
    completions = [[{"role": "assistant", "content": "a"}]]
    assert reward_func(prompts=prompts, completions=completions) == [3.0]


def test_multi_attribute_rewards_need_an_attribute():
    def handler(request):
        return httpx.Response(200, json={"rewards": [[0.5, 2.0]], "usage": {}})

    client = RewardClient("http://rm", transport=httpx.MockTransport(handler))
    with pytest.raises(ValueError, match="attribute=i"):
        reward_function("http://rm", client=client)(prompts=["p"], completions=["c"])
    pick = reward_function("http://rm", client=client, attribute=1)
    assert pick(prompts=["p"], completions=["c"]) == [2.0]


def test_connection_errors_are_retried():
    calls = []

    def handler(request):
        calls.append(request)
        if len(calls) < 3:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(200, json={"rewards": [0.25], "usage": {}})

    client = RewardClient("http://rm", transport=httpx.MockTransport(handler))
    assert client.score(token_ids=[[1]]) == [0.25]
    assert len(calls) == 3
    failing = RewardClient("http://rm", max_retries=1, transport=httpx.MockTransport(
        lambda r: (_ for _ in ()).throw(httpx.ConnectError("down"))))  # fmt: skip
    with pytest.raises(httpx.ConnectError):
        failing.score(token_ids=[[1]])
