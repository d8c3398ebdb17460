"""Exceptions raised by the engine to its callers.

Every error a request can end with derives from ``RequestFailedError`` so a caller
can catch one class; the subclasses say why. ``RequestTimeoutError`` is also a
``TimeoutError`` so ``except TimeoutError`` works the way asyncio users expect.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class of every exception the engine raises on purpose."""


class EngineOverloadedError(EngineError):
    """The waiting queue is full: the request was not accepted (retry later)."""


class RequestFailedError(EngineError):
    """A request ended without a result; the message says why."""


class RequestTooLongError(RequestFailedError, ValueError):
    """The request can never be scheduled (longer than the model or the KV pool)."""


class RequestTimeoutError(RequestFailedError, TimeoutError):
    """The request's deadline passed before its result was ready."""


class RequestCancelledError(RequestFailedError):
    """The request was cancelled by its caller."""


class EngineDeadError(EngineError):
    """The engine cannot run any more: a tensor-parallel worker died or the ranks fell
    out of step. Every pending and later request fails with it; the message names the
    worker and why. Start a new engine."""
