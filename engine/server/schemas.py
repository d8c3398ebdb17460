"""Request and response bodies. These models are the OpenAPI schema (/openapi.json):
FastAPI validates each request against them before a handler runs, so a body the
schema refuses never reaches the engine.

Requests are strict (a string is not a number, a number is not a string) and ignore
unknown keys, the way the OpenAI-style servers they imitate do (clients send fields
such as `temperature` or `user` that a reward model has no use for). Where each
format comes from is cited on its model.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Reward = float | list[float]


class Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors ----------------------------------------------------------------------------


class ErrorInfo(Out):
    message: str = Field(description="what is wrong and what to change")
    type: str = Field(description="error class, as OpenAI names them (invalid_request_error, ...)")
    code: str = Field(description="a short stable word: invalid_json, too_long, overloaded, ...")


class ErrorResponse(Out):
    """Every answer that is not 200 (OpenAI's error object)."""

    error: ErrorInfo


# -- messages ----------------------------------------------------------------------------


class Message(Body):
    """One turn. Roles are checked by the handler (system, user or assistant; a system
    message only first), so an unknown role fails its own item, not the request."""

    role: str
    content: str


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    """An OpenAI chat message: content is a string or a list of text parts."""

    role: str
    content: str | list[TextPart]


# -- NIM / OpenAI chat completions ----------------------------------------------------------
# NVIDIA NIM for LLMs, "Use Reward Models" (docs.nvidia.com/nim/large-language-models/latest/
# reward-model.html): POST /v1/chat/completions with the user prompt and the assistant
# response; message.content is "attr:score,attr:score,..." and logprobs.content lists each
# attribute as {"token": attr, "logprob": score} (NeMo Curator reads it that way:
# nemo_curator/services/openai_client.py, query_reward_model). The response objects follow
# the OpenAI ChatCompletion shape the `openai` client parses (openai/types/chat/
# chat_completion.py).


class ChatCompletionRequest(Body):
    model: str | None = Field(None, description="accepted and reported back; not checked")
    messages: list[ChatMessage] = Field(
        min_length=1, description="the conversation, ending with the assistant turn to score"
    )
    stream: bool | None = Field(None, description="must be false or absent")


class TopLogprob(Out):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(Out):
    token: str = Field(description="the attribute name (reward for a scalar head)")
    logprob: float = Field(description="the attribute's raw score")
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(Out):
    content: list[TokenLogprob]


class AssistantMessage(Out):
    role: Literal["assistant"] = "assistant"
    content: str = Field(description='"reward:<float>", or "name:value,name:value,..."')


class Choice(Out):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs
    finish_reason: Literal["stop"] = "stop"


class Usage(Out):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int


class ChatCompletionResponse(Out):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


# -- batch scoring --------------------------------------------------------------------------


class ScoreRequest(Body):
    """Exactly one form: `conversations`, `prompt` + `responses`, or `token_ids`."""

    model: str | None = None
    conversations: list[list[Message]] | None = Field(
        None, description="conversations to score, one reward each"
    )
    prompt: str | list[Message] | None = Field(
        None, description="with `responses`: a string (one user message) or messages"
    )
    responses: list[str] | None = Field(
        None, description="with `prompt`: the assistant responses, one reward each"
    )
    token_ids: list[list[int]] | None = Field(
        None, description="already formatted and tokenized sequences, one reward each"
    )


class ItemError(Out):
    error: ErrorInfo


class ScoreUsage(Out):
    prompt_tokens: int = Field(description="tokens of the items that were scored")
    total_tokens: int
    items: int
    errors: int


class ScoreResponse(Out):
    rewards: list[float | list[float] | ItemError] = Field(
        description="one per item, in order: a number (a list for multi-attribute heads), "
        'or {"error": ...} for an item that could not be scored'
    )
    usage: ScoreUsage


# -- OpenRLHF remote reward model -------------------------------------------------------------
# OpenRLHF posts {"query", "prompts", "labels"} (openrlhf/utils/remote_rm_utils.py,
# remote_rm_fn / request_api_wrapper) and reads "rewards", "scores" and "extra_logs" from
# the answer (openrlhf/trainer/ppo_utils/experience_maker.py); its reference server is
# openrlhf/cli/serve_rm.py.


class GetRewardRequest(Body):
    query: list[str] = Field(description="chat-formatted texts (prompt + response, special "
                             "tokens written out)")  # fmt: skip
    prompts: list[Any] | None = Field(None, description="accepted, not used")
    labels: list[Any] | None = Field(None, description="accepted, not used")


class GetRewardResponse(Out):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


# -- vLLM classify ------------------------------------------------------------------------------
# vLLM's pooling API (vllm/entrypoints/pooling/classify/protocol.py: ClassificationRequest,
# ClassificationData, ClassificationResponse), as verl's reward loop calls it
# (verl/experimental/reward_loop/reward_loop.py, compute_score_disrm: {"model", "input",
# "activation": False}, reads data[-1].probs[-1]). `activation` is the name vLLM used
# before 0.11.2, `use_activation` the one after; both are accepted.


class ClassifyRequest(Body):
    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]] | None = Field(
        None, description="a text, texts, or token ids (one sequence or several)"
    )
    messages: list[ChatMessage] | None = Field(None, description="or one conversation")
    use_activation: bool | None = Field(
        None, description="false: raw rewards; true/absent: sigmoid (1 label) or softmax"
    )
    activation: bool | None = Field(None, description="the older name of use_activation")
    add_special_tokens: bool = Field(
        True, description="texts: begin with the BOS token (added only when absent)"
    )
    truncate_prompt_tokens: int | None = Field(
        None, ge=-1, description="keep only the last N tokens (-1: the model's maximum)"
    )


class ClassificationData(Out):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassifyUsage(Out):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassifyResponse(Out):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassifyUsage


# -- tokenize ---------------------------------------------------------------------------------


class TokenizeRequest(Body):
    """One form: `messages`, `prompt` + `response`, or `text` (already formatted)."""

    messages: list[Message] | None = None
    prompt: str | list[Message] | None = None
    response: str | None = None
    text: str | None = None


class TokenizeResponse(Out):
    text: str = Field(description="the formatted text scoring reads, special tokens kept")
    token_ids: list[int]
    tokens: list[str] = Field(description="each id decoded on its own")
    count: int
    max_model_len: int


# -- models and health ------------------------------------------------------------------------


class ModelCard(Out):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "reward-engine"
    root: str
    max_model_len: int
    num_labels: int
    labels: list[str] = Field(description="attribute names, in reward order")
    dtype: str


class ModelList(Out):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(Out):
    status: Literal["live", "ready", "starting", "draining", "stopped"]
