"""Sequences -> rewards on the shared AsyncRewardEngine, for every endpoint.

``Scorer.score`` is the one path a request takes to the engine:

1. admission: a request whose sequences would push the engine's waiting queue past
   --max-queue is refused with 503 + Retry-After before anything is queued (verl and
   OpenRLHF retry a 503; a 4xx makes verl give up). The engine's own queue bound is set
   to max_queue + max_items, a hard ceiling that a race between handlers cannot pass.
2. every sequence becomes one engine request, awaited concurrently, so they join the
   continuous batch with every other client's and share the prefix cache;
3. the request as a whole fails at the first sequence that fails: overload -> 503,
   deadline -> 504, an engine failure -> 500; its other sequences are cancelled, which
   frees their KV blocks at once;
4. a client that disconnects while it waits cancels its sequences the same way.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from pathlib import Path

from starlette.requests import Request

from ..async_engine import AsyncRewardEngine
from ..errors import (
    EngineError,
    EngineOverloadedError,
    RequestFailedError,
    RequestTimeoutError,
)
from .config import ServerConfig
from .errors import APIError


class ClientDisconnected(Exception):
    """The client went away before its answer was ready (nothing is sent)."""


class Scorer:
    """The engine as the endpoints see it: formatting, limits and scoring."""

    def __init__(self, engine: AsyncRewardEngine, config: ServerConfig):
        self.async_engine = engine
        self.engine = engine.engine
        self.config = config
        self.chat = engine.engine.chat
        self.max_model_len = self.engine.max_model_len
        self.num_labels = self.engine.num_labels
        self.labels = label_names(config.model, self.num_labels)
        self.draining = False

    # -- formatting ----------------------------------------------------------------

    def require_chat(self):
        if self.chat is None:
            raise APIError(400, "this model has no tokenizer.json: only token ids can be "
                           "scored (/v1/score with 'token_ids')", "no_tokenizer")  # fmt: skip
        return self.chat

    def encode_text(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of already-formatted text: control tokens written in it are parsed
        as control tokens; a BOS is put first when asked and not already there."""
        chat = self.require_chat()
        ids = chat.tokenizer.encode(text, add_special_tokens=False).ids
        bos = self.bos_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids.insert(0, bos)
        return ids

    @property
    def bos_id(self) -> int | None:
        chat = self.chat
        if chat is None:
            return None
        # the checkpoint's bos_token (tokenizer_config.json), as the formatter reads it
        token = chat._special_tokens.get("bos_token", "<|begin_of_text|>")
        return chat.tokenizer.token_to_id(token)

    def too_long(self, n: int, what: str) -> str | None:
        """Why a sequence of n tokens cannot be scored, or None."""
        if n > self.max_model_len:
            return (f"{what} is {n} tokens long, more than the model's maximum length of "
                    f"{self.max_model_len} tokens")  # fmt: skip
        return None

    def check_items(self, n: int, what: str) -> None:
        if n > self.config.max_items:
            raise APIError(413, f"{n} {what} in one request, more than the server's limit of "
                           f"{self.config.max_items} (--max-items): split the request",
                           "too_many_items")  # fmt: skip
        if n == 0:
            raise APIError(400, f"no {what} to score: give at least one", "empty")

    def reward_or_error(self, reward) -> str | None:
        values = reward if isinstance(reward, list) else [reward]
        if all(math.isfinite(v) for v in values):
            return None
        return "the model produced a non-finite reward (check the checkpoint and --dtype)"

    # -- scoring -------------------------------------------------------------------

    async def score(self, request: Request, seqs: Sequence[Sequence[int]]) -> list:
        """Rewards of seqs, in order; raises APIError (503/504/500) or
        ClientDisconnected. Token ids must already be checked against the vocabulary."""
        self._admit(len(seqs))
        work = asyncio.ensure_future(self._score_all(seqs))
        watch = asyncio.ensure_future(_wait_for_disconnect(request))
        try:
            await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
            watch.cancel()
        if work.cancelled():
            raise ClientDisconnected
        return work.result()

    def _admit(self, n: int) -> None:
        if self.draining:
            raise APIError(503, "the server is shutting down: send the request to another "
                           "replica or retry later", "draining",
                           {"Retry-After": str(self.config.retry_after_s)})  # fmt: skip
        if not self.async_engine.is_running:
            raise APIError(503, "the engine is not running", "engine_stopped",
                           {"Retry-After": str(self.config.retry_after_s)})  # fmt: skip
        waiting = self.engine.scheduler.num_waiting
        if waiting and waiting + n > self.config.max_queue:
            raise self._overloaded(waiting)

    def _overloaded(self, waiting: int) -> APIError:
        return APIError(503, f"the engine's queue is full ({waiting} sequences waiting, limit "
                        f"{self.config.max_queue}): retry after the Retry-After seconds",
                        "overloaded", {"Retry-After": str(self.config.retry_after_s)})  # fmt: skip

    async def _score_all(self, seqs) -> list:
        timeout = self.config.request_timeout
        tasks = [asyncio.ensure_future(self.async_engine.score_token_ids(s, timeout=timeout))
                 for s in seqs]  # fmt: skip
        try:
            return list(await asyncio.gather(*tasks))
        except EngineOverloadedError:
            raise self._overloaded(self.engine.scheduler.num_waiting) from None
        except RequestTimeoutError:
            raise APIError(504, f"the request did not finish within {timeout} s "
                           "(--request-timeout); sequences not started were not computed",
                           "timeout") from None  # fmt: skip
        except RequestFailedError as exc:
            raise APIError(500, f"the engine failed to score the request: {exc}",
                           "engine_failure") from None  # fmt: skip
        except EngineError as exc:
            raise APIError(503, f"the engine is unavailable: {exc}", "engine_stopped",
                           {"Retry-After": str(self.config.retry_after_s)}) from None  # fmt: skip
        finally:
            for task in tasks:
                task.cancel()  # a no-op for finished ones; frees the others' blocks
            await asyncio.gather(*tasks, return_exceptions=True)


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client closes the connection. The body has been read by then,
    so the next ASGI message the server sends is http.disconnect."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def label_names(model_dir: str, num_labels: int) -> list[str]:
    """Attribute names: the checkpoint's id2label when it names every label (HF's
    default LABEL_i names count as none), else "reward" for a scalar head and
    LABEL_i for the others."""
    default = ["reward"] if num_labels == 1 else [f"LABEL_{i}" for i in range(num_labels)]
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return default
    id2label = cfg.get("id2label") or {}
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i])
                 for i in range(num_labels)]  # fmt: skip
    except (KeyError, TypeError):
        return default
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return default
    return names
