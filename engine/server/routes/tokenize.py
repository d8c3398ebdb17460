"""POST /v1/tokenize: what scoring would read, without scoring it.

Forms: {"messages": [...]}, {"prompt": ..., "response": ...} or {"text": ...}. The
formatter and the checks are the ones /v1/score and /v1/chat/completions use: "text" is
the formatted conversation with its control tokens written out, "tokens" each id decoded
on its own. A text is tokenized as /get_reward and /classify tokenize theirs (control
tokens parsed, a BOS first). A sequence longer than the model's maximum is still
tokenized: compare "count" with "max_model_len".
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...chat import ConversationError, build_conversation
from ..errors import APIError
from ..schemas import TokenizeRequest, TokenizeResponse
from .common import SCORING_ERRORS, conversation, get_scorer

router = APIRouter(tags=["tokenize"])

_FORMS = ('give one of {"messages": [...]}, {"prompt": ..., "response": "..."} or '
          '{"text": "..."}')  # fmt: skip

_ERRORS = {k: v for k, v in SCORING_ERRORS.items() if k in (400, 401, 413, 503)}


@router.post("/v1/tokenize", response_model=TokenizeResponse, responses=_ERRORS,
             summary="The formatted text and token ids scoring reads")  # fmt: skip
async def tokenize(body: TokenizeRequest, request: Request):
    scorer = get_scorer(request)
    chat = scorer.require_chat()
    given = [k for k in ("messages", "prompt", "text") if getattr(body, k) is not None]
    if len(given) != 1 or (body.response is not None) != (given == ["prompt"]):
        raise APIError(400, f"one form per request: {_FORMS}", "invalid_form")
    if body.text is not None:
        ids = scorer.encode_text(body.text)
        text = body.text
        if ids and ids[0] == scorer.bos_id and not _starts_with_bos(chat, body.text, ids):
            text = chat.tokenizer.id_to_token(ids[0]) + text
    else:
        if body.messages is not None:
            messages = conversation([m.model_dump() for m in body.messages])
        else:
            prompt = body.prompt if isinstance(body.prompt, str) else [
                m.model_dump() for m in body.prompt]  # fmt: skip
            try:
                messages = build_conversation(prompt, body.response)
            except ConversationError as exc:
                raise APIError(400, str(exc), "invalid_conversation") from None
        text = chat.render(messages)
        ids = chat.encode(messages)
    tokens = chat.tokenizer.decode_batch([[i] for i in ids], skip_special_tokens=False)
    return {"text": text, "token_ids": ids, "tokens": tokens, "count": len(ids),
            "max_model_len": scorer.max_model_len}  # fmt: skip


def _starts_with_bos(chat, text: str, ids: list[int]) -> bool:
    """Whether the text itself began with the BOS (rather than it being added)."""
    return text.startswith(chat.tokenizer.id_to_token(ids[0]))
