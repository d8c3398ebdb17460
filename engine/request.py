"""State record of one score request, as the scheduler and KV cache see it.

A reward model runs a single forward pass over each sequence and reads the hidden
state of its LAST token, so a request is just a token sequence and a progress
counter: ``num_computed_tokens`` grows from the cached-prefix length to
``num_tokens`` over one or more scheduling steps (chunked prefill). There is no
decode and no output token.

The record is mutable on purpose and owned by the ``Scheduler``: it moves the
status, the counters and (through the ``KVCacheManager``) the block ids. Callers
read it; they do not write it.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from engine.errors import RequestCancelledError, RequestFailedError


class RequestStatus(enum.Enum):
    WAITING = "waiting"  # queued (new, or preempted and requeued)
    RUNNING = "running"  # admitted: holds KV blocks, some chunks may remain
    FINISHED = "finished"  # last token computed: the result is ready
    FAILED = "failed"  # ended with ``Request.error`` (too long, timed out, ...)
    CANCELLED = "cancelled"  # the caller withdrew it

    @property
    def is_done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.FAILED, RequestStatus.CANCELLED)


@dataclass(slots=True, eq=False)
class Request:
    """One sequence to score.

    ``priority``: lower runs first; equal priorities run first come, first served.
    ``deadline``: absolute ``time.monotonic()`` seconds after which the request fails.
    ``group``: an optional key tying requests together (e.g. the N responses of one
    prompt); sharing itself is found from the token ids, so the key is informational.
    """

    request_id: str
    token_ids: tuple[int, ...]
    priority: int = 0
    deadline: float | None = None
    group: Hashable | None = None
    arrival_time: float = field(default_factory=time.monotonic)

    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    # Tokens taken from the prefix cache at the latest admission (0 on a miss).
    num_cached_tokens: int = 0
    # KV block of each position range [i * block_size, (i + 1) * block_size).
    block_ids: list[int] = field(default_factory=list)
    # Chained hashes of the full blocks of token_ids, filled by the KV cache manager.
    block_hashes: list[bytes] = field(default_factory=list)
    num_preemptions: int = 0
    error: RequestFailedError | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.token_ids, tuple):
            self.token_ids = tuple(self.token_ids)
        if not self.token_ids:
            raise ValueError(f"request {self.request_id!r} has no tokens")

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_remaining_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_done(self) -> bool:
        return self.status.is_done

    @property
    def failure_reason(self) -> str | None:
        return None if self.error is None else str(self.error)

    def fail(self, error: RequestFailedError) -> None:
        """End the request with ``error``; a cancellation ends it CANCELLED."""
        cancelled = isinstance(error, RequestCancelledError)
        self.status = RequestStatus.CANCELLED if cancelled else RequestStatus.FAILED
        self.error = error
