"""A client for `reward-engine serve`, and a TRL reward function backed by it.

    from engine.client import RewardClient, reward_function
    client = RewardClient("http://127.0.0.1:8000", api_key=None)
    client.score([[{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]])
    client.score(prompt="2+2?", responses=["4", "5"])       # the prompt is computed once
    await client.ascore(token_ids=[[128000, 9906]])          # the same, from asyncio

    trainer = GRPOTrainer(..., reward_funcs=reward_function("http://127.0.0.1:8000"))

Both ``score`` and ``ascore`` post to /v1/score and return one reward per item (a float,
or a list of floats for multi-attribute heads). A 503 (the server's queue is full, or it
is restarting) is retried after the server's Retry-After, and a connection that fails
(refused, reset) after a short backoff, up to ``max_retries`` times (scoring is
idempotent); any other error raises ``RewardServerError`` with the server's message. An item the
server could not score raises ``RewardItemError`` naming it, unless
``return_errors=True``, which puts the server's error object in its place.

Needs httpx (the `server` extra).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import httpx

__all__ = ["RewardClient", "RewardItemError", "RewardServerError", "reward_function"]

Reward = float | list[float]


class RewardServerError(Exception):
    """The server answered with an error (status, code and message are attributes)."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.code = code
        self.message = message


class RewardItemError(ValueError):
    """Some items could not be scored; ``errors`` maps item index -> message."""

    def __init__(self, errors: dict[int, str]):
        first = next(iter(errors.items()))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(f"item {first[0]} was not scored: {first[1]}{more}")
        self.errors = errors


class RewardClient:
    """Talks to one reward server. Thread-safe for ``score``; ``ascore`` opens its own
    async connection pool on first use (per event loop)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        max_retries: int = 8,
        max_retry_wait: float = 30.0,
        transport=None,
    ):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Idle connections are closed before the server's keep-alive timeout (uvicorn: 5 s)
        # could close one under a new request.
        limits = httpx.Limits(keepalive_expiry=2.0)
        self._client_args = dict(base_url=self.base_url, headers=headers, timeout=timeout,
                                 limits=limits)  # fmt: skip
        if transport is not None:  # an httpx transport (tests, proxies, custom TLS)
            self._client_args["transport"] = transport
        self._sync = httpx.Client(**self._client_args)
        self._async: dict[int, Any] = {}

    # -- scoring ---------------------------------------------------------------------

    def score(self, conversations=None, *, prompt=None, responses=None, token_ids=None,
              return_errors: bool = False) -> list[Reward]:  # fmt: skip
        """One reward per conversation / response / token-id sequence (give one form)."""
        body = _score_body(conversations, prompt, responses, token_ids)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._sync.post("/v1/score", json=body)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                time.sleep(self._backoff(attempt))
                continue
            wait = self._retry_wait(response, attempt)
            if wait is None:
                return _rewards(response, return_errors)
            time.sleep(wait)
        raise AssertionError("unreachable")

    async def ascore(self, conversations=None, *, prompt=None, responses=None, token_ids=None,
                     return_errors: bool = False) -> list[Reward]:  # fmt: skip
        """``score`` for asyncio callers."""
        body = _score_body(conversations, prompt, responses, token_ids)
        client = self._async_client()
        for attempt in range(self.max_retries + 1):
            try:
                response = await client.post("/v1/score", json=body)
            except httpx.TransportError:
                if attempt >= self.max_retries:
                    raise
                await asyncio.sleep(self._backoff(attempt))
                continue
            wait = self._retry_wait(response, attempt)
            if wait is None:
                return _rewards(response, return_errors)
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    def models(self) -> dict:
        response = self._sync.get("/v1/models")
        _raise_for_error(response)
        return response.json()["data"][0]

    def close(self) -> None:
        self._sync.close()

    async def aclose(self) -> None:
        for client in self._async.values():
            await client.aclose()
        self._async.clear()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------

    def _async_client(self):
        loop = id(asyncio.get_running_loop())
        if loop not in self._async:
            self._async[loop] = httpx.AsyncClient(**self._client_args)
        return self._async[loop]

    def _backoff(self, attempt: int) -> float:
        return min(0.1 * 2**attempt, self.max_retry_wait)

    def _retry_wait(self, response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or None when the response is final."""
        if response.status_code != 503 or attempt >= self.max_retries:
            return None
        try:
            wait = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.05), self.max_retry_wait)


def _score_body(conversations, prompt, responses, token_ids) -> dict:
    forms = {"conversations": conversations, "prompt": prompt, "token_ids": token_ids}
    given = [k for k, v in forms.items() if v is not None]
    if len(given) != 1 or (responses is not None) != (given == ["prompt"]):
        raise ValueError("give one of: conversations, prompt= with responses=, or token_ids=")
    if given == ["prompt"]:
        return {"prompt": prompt, "responses": list(responses)}
    key = given[0]
    return {key: [list(x) for x in forms[key]]}


def _raise_for_error(response) -> None:
    if response.status_code == 200:
        return
    try:
        error = response.json()["error"]
        message, code = error["message"], error.get("code")
    except (ValueError, KeyError, TypeError):
        message, code = response.text[:500], None
    raise RewardServerError(response.status_code, message, code)


def _rewards(response, return_errors: bool) -> list:
    _raise_for_error(response)
    rewards = response.json()["rewards"]
    if not return_errors:
        errors = {i: r["error"]["message"] for i, r in enumerate(rewards) if isinstance(r, dict)}
        if errors:
            raise RewardItemError(errors)
    return rewards


# -- TRL ---------------------------------------------------------------------------------


def reward_function(
    base_url: str,
    api_key: str | None = None,
    *,
    attribute: int | None = None,
    client: RewardClient | None = None,
) -> Callable[..., list[float]]:
    """A reward function with TRL's ``reward_funcs`` signature, scored by a server.

    TRL calls ``reward_func(prompts=..., completions=..., **kwargs)`` and expects one
    float per completion (trl/trainer/grpo_trainer.py, GRPOTrainer._calculate_rewards).
    Both of its dataset forms work: conversational (each prompt a list of messages, each
    completion a list holding the assistant message) and plain text (strings: the
    prompt is one user message, the completion the assistant's answer). Multi-attribute
    heads need ``attribute`` (the index of the reward to train on).
    """
    client = client or RewardClient(base_url, api_key)

    def remote_reward(prompts: Sequence, completions: Sequence, **kwargs) -> list[float]:
        conversations = [_conversation(p, c) for p, c in zip(prompts, completions, strict=True)]
        rewards = client.score(conversations)
        return [_one_number(r, attribute) for r in rewards]

    remote_reward.__name__ = "remote_reward"  # TRL logs each reward function by name
    return remote_reward


def _conversation(prompt, completion) -> list[dict]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if isinstance(completion, str):
        return [*messages, {"role": "assistant", "content": completion}]
    return [*messages, *completion]


def _one_number(reward, attribute: int | None) -> float:
    if isinstance(reward, list):
        if attribute is None:
            raise ValueError(
                f"the reward model has {len(reward)} attributes: pass "
                "reward_function(..., attribute=i) to pick the one to train on"
            )
        return float(reward[attribute])
    return float(reward)
