"""What the route modules share: the scorer, error documentation, item checks."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request

from ...chat import ConversationError, validate_conversation
from ..errors import APIError
from ..schemas import ErrorResponse
from ..scoring import Scorer


def _doc(text: str) -> dict:
    return {"model": ErrorResponse, "description": text}


# Every answer a scoring endpoint can give besides 200, for the OpenAPI schema.
SCORING_ERRORS = {
    400: _doc("the body or an item in it is invalid (the message says what to fix)"),
    401: _doc("missing or wrong API key (when the server has one)"),
    413: _doc("the body is larger than --max-request-bytes, or has more than --max-items"),
    500: _doc("the engine failed while scoring"),
    503: _doc("overloaded or shutting down: retry after the Retry-After seconds"),
    504: _doc("the request did not finish within --request-timeout"),
}


def get_scorer(request: Request) -> Scorer:
    scorer = getattr(request.app.state, "scorer", None)
    if scorer is None:
        raise APIError(503, "the engine is still loading: retry shortly", "starting",
                       {"Retry-After": "1"})  # fmt: skip
    return scorer


def note_work(request: Request, items: int, tokens: int) -> None:
    """What the request log line and the metrics count for this request."""
    state = request.scope.setdefault("state", {})
    state["items"] = items
    state["tokens"] = tokens


def conversation(messages: list[dict], where: str = "'messages'") -> list[dict]:
    """A validated conversation, or 400 saying what is wrong with it."""
    try:
        return validate_conversation(messages)
    except ConversationError as exc:
        raise APIError(400, f"{where}: {exc}", "invalid_conversation") from None


def plain_messages(messages) -> list[dict]:
    """Pydantic messages -> {"role", "content"} dicts (text parts joined)."""
    out = []
    for m in messages:
        content = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        out.append({"role": m.role, "content": content})
    return out


def token_ids_problem(scorer: Scorer, ids: Sequence[int], what: str) -> tuple[str, str] | None:
    """(code, message) when the token ids cannot be scored, else None."""
    if not ids:
        return "empty", f"{what} has no tokens: nothing to score"
    vocab = scorer.engine.model.cfg.vocab_size
    bad = next((t for t in ids if not 0 <= t < vocab), None)
    if bad is not None:
        return "invalid_token_ids", f"{what} has token id {bad}, outside [0, {vocab})"
    too_long = scorer.too_long(len(ids), what)
    if too_long:
        return "too_long", too_long
    try:
        scorer.engine.check_token_ids(ids)
    except ValueError as exc:
        return "too_long", f"{what}: {exc}"
    return None


def require_scorable(scorer: Scorer, ids: Sequence[int], what: str) -> None:
    """400 when a sequence of an all-or-nothing request cannot be scored."""
    problem = token_ids_problem(scorer, ids, what)
    if problem is not None:
        raise APIError(400, problem[1], problem[0])


def attribute_values(reward) -> list[float]:
    return reward if isinstance(reward, list) else [reward]


def require_finite(scorer: Scorer, rewards) -> None:
    for reward in rewards:
        problem = scorer.reward_or_error(reward)
        if problem:
            raise APIError(500, problem, "non_finite_reward")
