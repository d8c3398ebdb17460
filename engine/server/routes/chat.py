"""POST /v1/chat/completions: NVIDIA NIM's reward-model API over OpenAI's chat format.

Source of the format: NIM for LLMs, "Use Reward Models"
(docs.nvidia.com/nim/large-language-models/latest/reward-model.html): the conversation
ends with the assistant turn to score; choices[0].message.content is
"attribute:score,attribute:score,..." and choices[0].logprobs.content lists each
attribute as {"token": attribute, "logprob": score}. A scalar head's one attribute is
named "reward". The official `openai` client parses the answer unchanged.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request

from ..errors import APIError
from ..schemas import (
    AssistantMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChoiceLogprobs,
    TokenLogprob,
    Usage,
)
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

router = APIRouter(tags=["NIM / OpenAI"])


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse,
             responses=SCORING_ERRORS, summary="Reward of the last assistant turn (NIM)")  # fmt: skip
async def chat_completions(body: ChatCompletionRequest, request: Request):
    scorer = get_scorer(request)
    chat = scorer.require_chat()
    if body.stream:
        raise APIError(400, "stream=true is not supported: a reward is one answer, send "
                       "stream=false", "stream_unsupported")  # fmt: skip
    messages = conversation(plain_messages(body.messages))
    if messages[-1]["role"] != "assistant":
        raise APIError(400, "the last message must be the assistant response to score (role "
                       f"'assistant'), got role {messages[-1]['role']!r}",
                       "no_assistant_turn")  # fmt: skip
    ids = chat.encode(messages)
    require_scorable(scorer, ids, "the conversation")
    note_work(request, 1, len(ids))
    [reward] = await scorer.score(request, [ids])
    require_finite(scorer, [reward])
    values = attribute_values(reward)
    pairs = list(zip(scorer.labels, values, strict=True))
    content = ",".join(f"{name}:{value!r}" for name, value in pairs)
    logprobs = [TokenLogprob(token=name, logprob=value, bytes=list(name.encode()))
                for name, value in pairs]  # fmt: skip
    return ChatCompletionResponse(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model or scorer.config.model_name,
        choices=[
            Choice(
                index=0,
                message=AssistantMessage(content=content),
                logprobs=ChoiceLogprobs(content=logprobs),
            )
        ],  # fmt: skip
        usage=Usage(prompt_tokens=len(ids), total_tokens=len(ids)),
    )
