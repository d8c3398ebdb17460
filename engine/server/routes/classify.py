"""POST /classify (and /v1/classify): vLLM's classification API, as verl calls it.

Format: vLLM's pooling protocol (vllm/entrypoints/pooling/classify/protocol.py:
ClassificationCompletionRequest / ClassificationChatRequest -> ClassificationResponse
with data[i] = {"index", "label", "probs", "num_classes"}). verl's reward loop
(verl/experimental/reward_loop/reward_loop.py, compute_score_disrm) posts {"model",
"input": <chat-formatted text without its BOS>, "activation": false} and reads
data[-1]["probs"][-1]: with the activation off, probs are the raw rewards.

Texts are tokenized with control tokens parsed; add_special_tokens (default true, as in
vLLM) puts a BOS first only when the text has none, so a text that kept its BOS is not
given a second one. With the activation on (the default), one label gets a sigmoid and
several a softmax, as vLLM's classification pooler does.
"""

from __future__ import annotations

import math
import time
import uuid

from fastapi import APIRouter, Request

from ..errors import APIError
from ..schemas import ClassifyRequest, ClassifyResponse
from .common import (
    SCORING_ERRORS,
    attribute_values,
    conversation,
    get_scorer,
    note_work,
    plain_messages,
    require_finite,
    require_scorable,
)

router = APIRouter(tags=["vLLM"])


@router.post("/classify", response_model=ClassifyResponse, responses=SCORING_ERRORS,
             summary="Rewards as vLLM's classify API (verl)")  # fmt: skip
@router.post("/v1/classify", response_model=ClassifyResponse, responses=SCORING_ERRORS,
             summary="Rewards as vLLM's classify API (verl)", include_in_schema=False)  # fmt: skip
async def classify(body: ClassifyRequest, request: Request):
    scorer = get_scorer(request)
    seqs = _sequences(body, scorer)
    keep = body.truncate_prompt_tokens
    if keep is not None and keep != 0:
        keep = scorer.max_model_len if keep == -1 else keep
        seqs = [ids[-keep:] for ids in seqs]
    for i, ids in enumerate(seqs):
        require_scorable(scorer, ids, f"input[{i}]")
    tokens = sum(map(len, seqs))
    note_work(request, len(seqs), tokens)
    rewards = await scorer.score(request, seqs)
    require_finite(scorer, rewards)
    activation = body.use_activation if body.use_activation is not None else body.activation
    data = []
    for i, reward in enumerate(rewards):
        probs = attribute_values(reward)
        if activation is not False:
            probs = _activate(probs)
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append({"index": i, "label": scorer.labels[best], "probs": probs,
                     "num_classes": len(probs)})  # fmt: skip
    return {"id": f"classify-{uuid.uuid4().hex}", "created": int(time.time()),
            "model": body.model or scorer.config.model_name, "data": data,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


def _sequences(body: ClassifyRequest, scorer) -> list[list[int]]:
    if (body.input is None) == (body.messages is None):
        raise APIError(400, "give exactly one of 'input' (a text, texts or token ids) and "
                       "'messages' (a conversation)", "invalid_form")  # fmt: skip
    if body.messages is not None:
        chat = scorer.require_chat()
        return [chat.encode(conversation(plain_messages(body.messages)))]
    data = body.input
    if isinstance(data, str):
        data = [data]
    if not data:
        raise APIError(400, "'input' is empty: give a text, texts or token ids", "empty")
    if isinstance(data[0], int):
        data = [data]
    scorer.check_items(len(data), "inputs")
    if isinstance(data[0], str):
        return [scorer.encode_text(t, add_bos=body.add_special_tokens) for t in data]
    return [list(ids) for ids in data]


def _activate(values: list[float]) -> list[float]:
    if len(values) == 1:
        x = values[0]
        return [1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))]
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]
