"""POST /v1/score: many rewards in one request, item by item.

Forms (exactly one): {"conversations": [[messages], ...]}, {"prompt": ..., "responses":
[...]} (the prompt is computed once: the responses share its KV blocks), or
{"token_ids": [[...], ...]}. The answer has one entry per item, in order: the reward,
or {"error": {...}} for an item that cannot be scored (unknown role, empty, too long,
bad token ids), while its neighbours are scored. Problems with the request itself
(two forms, a bad prompt, too many items) fail it as a whole.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...chat import ConversationError, build_conversation, validate_conversation
from ..errors import APIError, error_body
from ..schemas import ScoreRequest, ScoreResponse
from .common import SCORING_ERRORS, get_scorer, note_work, token_ids_problem

router = APIRouter(tags=["scoring"])

_FORMS = ("give one of {\"conversations\": [[messages], ...]}, {\"prompt\": ..., "
          "\"responses\": [...]} or {\"token_ids\": [[...], ...]}")  # fmt: skip


@router.post("/v1/score", response_model=ScoreResponse, responses=SCORING_ERRORS,
             summary="Rewards of many conversations or sequences")  # fmt: skip
async def score(body: ScoreRequest, request: Request):
    scorer = get_scorer(request)
    items = _items(body, scorer)
    ids_of: dict[int, list[int]] = {}
    errors: dict[int, dict] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            errors[i] = error_body(400, item, "invalid_conversation")
            continue
        problem = token_ids_problem(scorer, item, f"item {i}")
        if problem:
            errors[i] = error_body(400, problem[1], problem[0])
        else:
            ids_of[i] = item
    order = sorted(ids_of)
    tokens = sum(len(ids_of[i]) for i in order)
    note_work(request, len(order), tokens)
    rewards = await scorer.score(request, [ids_of[i] for i in order]) if order else []
    out: list = [None] * len(items)
    for i, reward in zip(order, rewards, strict=True):
        problem = scorer.reward_or_error(reward)
        out[i] = error_body(500, problem, "non_finite_reward") if problem else reward
    for i, err in errors.items():
        out[i] = err
    return {"rewards": out, "usage": {"prompt_tokens": tokens, "total_tokens": tokens,
                                      "items": len(items), "errors": len(errors)}}  # fmt: skip


def _items(body: ScoreRequest, scorer) -> list[list[int] | str]:
    """Token ids of each item, or the message saying why the item is bad."""
    given = [name for name in ("conversations", "prompt", "token_ids")
             if getattr(body, name) is not None]  # fmt: skip
    if body.responses is not None and "prompt" not in given:
        raise APIError(400, "'responses' needs a 'prompt'", "invalid_form")
    if len(given) != 1:
        what = "no input" if not given else "both " + " and ".join(repr(g) for g in given)
        raise APIError(400, f"{what}: {_FORMS}", "invalid_form")
    if body.token_ids is not None:
        scorer.check_items(len(body.token_ids), "sequences")
        return [list(ids) for ids in body.token_ids]
    chat = scorer.require_chat()
    if body.conversations is not None:
        scorer.check_items(len(body.conversations), "conversations")
        convs: list = []
        for i, conv in enumerate(body.conversations):
            try:
                convs.append(validate_conversation([m.model_dump() for m in conv]))
            except ConversationError as exc:
                convs.append(f"item {i}: {exc}")
    else:
        if body.responses is None:
            raise APIError(400, "'prompt' needs 'responses' (an array of strings)", "invalid_form")
        scorer.check_items(len(body.responses), "responses")
        prompt = body.prompt if isinstance(body.prompt, str) else [
            m.model_dump() for m in body.prompt]  # fmt: skip
        try:
            build_conversation(prompt, "")  # the prompt is checked once, for the request
        except ConversationError as exc:
            raise APIError(400, f"'prompt': {exc}", "invalid_conversation") from None
        convs = [build_conversation(prompt, r) for r in body.responses]
    good = [c for c in convs if not isinstance(c, str)]
    encoded = iter(chat.encode_batch(good))
    return [c if isinstance(c, str) else next(encoded) for c in convs]
