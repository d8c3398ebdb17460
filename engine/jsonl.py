"""Scoring input and output records (JSON Lines), with errors that say what to fix.

One input line is one JSON object in one of three forms:

    {"messages": [{"role": ..., "content": ...}, ...]}       -> "reward"
    {"prompt": "text" or [messages], "response": "text"}      -> "reward"
    {"prompt": "text" or [messages], "responses": ["a", ...]} -> "rewards", one per response

An optional "id" (any JSON value) is copied to the output line; other keys are ignored.
Each output line holds the input's "id" (when it has one), its 1-based physical "line"
number, and either the reward(s) or an "error".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .chat import ConversationError, Message, json_type_name, validate_conversation

__all__ = ["InputLine", "parse_line", "parse_record"]

_FORMS_HELP = (
    'give {"messages": [...]}, {"prompt": ..., "response": "..."} '
    'or {"prompt": ..., "responses": ["...", ...]}'
)


@dataclass(slots=True)
class InputLine:
    """One non-blank input line: its conversations to score, or why it cannot be scored."""

    line: int
    conversations: list[list[Message]] = field(default_factory=list)
    many: bool = False  # the "responses" form: the output holds "rewards"
    id: Any = None
    has_id: bool = False
    error: str | None = None

    def output(self, rewards: list[Any] | None = None) -> dict[str, Any]:
        """The output record: `rewards` (one per conversation) unless the line has an error."""
        record: dict[str, Any] = {"id": self.id} if self.has_id else {}
        record["line"] = self.line
        if self.error is not None:
            record["error"] = self.error
        elif self.many:
            record["rewards"] = rewards
        else:
            record["reward"] = rewards[0]
        return record


def parse_line(raw: bytes | str, line: int) -> InputLine | None:
    """Parse one physical input line; None for a blank line. Never raises: a bad line
    comes back with `error` set."""
    if isinstance(raw, bytes):
        if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte order mark some editors write
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return InputLine(line, error=f"the line is not valid UTF-8 (byte {exc.start + 1})")
    else:
        text = raw
    if not text.strip():
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputLine(line, error=f"invalid JSON: {exc.msg} (column {exc.colno})")
    return parse_record(record, line)


def parse_record(record: Any, line: int) -> InputLine:
    """Turn one decoded JSON value into the conversations it asks to score."""
    if not isinstance(record, dict):
        return InputLine(
            line, error=f"a line must be a JSON object, got {json_type_name(record)}: {_FORMS_HELP}"
        )
    item = InputLine(line, id=record.get("id"), has_id="id" in record)
    try:
        item.conversations, item.many = _conversations(record)
    except ConversationError as exc:
        item.error = str(exc)
    return item


def _conversations(record: dict[str, Any]) -> tuple[list[list[Message]], bool]:
    has = {key for key in ("messages", "prompt", "response", "responses") if key in record}
    if "messages" in has:
        if has != {"messages"}:
            others = ", ".join(repr(k) for k in sorted(has - {"messages"}))
            raise ConversationError(f"give either 'messages' or 'prompt', not both ({others})")
        return [_checked(record["messages"], "messages")], False
    if "prompt" not in has:
        if has:
            raise ConversationError(f"{_key_list(has)} needs a 'prompt'")
        keys = ", ".join(repr(k) for k in record) or "none"
        raise ConversationError(f"unknown input form (keys: {keys}): {_FORMS_HELP}")
    if {"response", "responses"} <= has:
        raise ConversationError("give either 'response' or 'responses', not both")
    if "response" in has:
        responses, many = [record["response"]], False
        if not isinstance(responses[0], str):
            raise ConversationError(
                f"'response' must be a string, got {json_type_name(responses[0])}"
            )
    elif "responses" in has:
        responses, many = record["responses"], True
        if not isinstance(responses, list) or not responses:
            what = "an empty array" if responses == [] else json_type_name(responses)
            raise ConversationError(f"'responses' must be a non-empty array of strings, got {what}")
        for i, response in enumerate(responses):
            if not isinstance(response, str):
                raise ConversationError(
                    f"'responses'[{i}] must be a string, got {json_type_name(response)}"
                )
    else:
        raise ConversationError(
            "'prompt' needs a 'response' (a string) or 'responses' (an array of strings)"
        )
    prompt = _prompt_messages(record["prompt"])
    return [[*prompt, {"role": "assistant", "content": r}] for r in responses], many


def _prompt_messages(prompt: Any) -> list[Message]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise ConversationError(
            f"'prompt' must be a string or an array of messages, got {json_type_name(prompt)}"
        )
    return _checked(prompt, "prompt")


def _checked(messages: Any, key: str) -> list[Message]:
    try:
        return validate_conversation(messages)
    except ConversationError as exc:
        raise ConversationError(f"'{key}': {exc}") from None


def _key_list(keys: set[str]) -> str:
    return " and ".join(repr(k) for k in sorted(keys))
