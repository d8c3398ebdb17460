"""Evaluation input: reading JSONL or Parquet rows, telling the format from the fields,
and turning each row into the conversations to score. A bad row never stops the
others: it comes back with `error` set, naming its line (JSONL) or row (Parquet).

Formats (fields of one row; an optional "id" is carried to the per-row output):

  rewardbench   prompt (str), chosen (str), rejected (str), subset (str)
  rewardbench2  prompt (str), chosen [str, ...], rejected [str, ...], subset (str),
                num_correct (int, how many of chosen are correct; used by the Ties subset)
  pairs         chosen and rejected, each a string or a list of messages, with an
                optional prompt (a string or a list of messages)

A response that is a string (or a list of assistant messages) follows the prompt; a
list of messages that starts with a system or user message is the whole conversation
(the UltraFeedback / HH-RLHF-chat layout), and without a prompt a string in the
HH-RLHF transcript form ("\\n\\nHuman: ...\\n\\nAssistant: ...") is split into turns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chat import ConversationError, Message, json_type_name, validate_conversation

FORMATS = ("rewardbench", "rewardbench2", "pairs")
PARQUET_SUFFIXES = (".parquet", ".pq")


class DataError(Exception):
    """The file as a whole cannot be read (missing, unreadable, no rows, unknown format)."""


@dataclass(slots=True)
class EvalRow:
    """One input row: the conversations to score (chosen first), or why it cannot be."""

    line: int  # 1-based line of a JSONL file, or row of a Parquet file
    id: Any = None
    subset: str | None = None
    chosen: list[list[Message]] = field(default_factory=list)
    rejected: list[list[Message]] = field(default_factory=list)
    num_correct: int | None = None
    error: str | None = None
    tokens: int = 0  # of all its conversations, once tokenized
    chosen_rewards: list[float] = field(default_factory=list)
    rejected_rewards: list[float] = field(default_factory=list)

    @property
    def conversations(self) -> list[list[Message]]:
        return self.chosen + self.rejected


# -- reading ---------------------------------------------------------------------------


def count_rows(path: Path) -> int | None:
    """Rows in the file (non-blank JSONL lines, Parquet rows), for the progress bar."""
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet(path).metadata.num_rows
    with open(path, "rb") as f:
        return sum(1 for raw in f if raw.strip())


def read_records(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, decoded record, None) or (number, None, error) per row."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    if path.suffix.lower() in PARQUET_SUFFIXES:
        yield from _parquet_records(path)
    else:
        yield from _jsonl_records(path)


def _jsonl_records(path: Path):
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    with f:
        for line, raw in enumerate(f, start=1):
            if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield line, None, f"the line is not valid UTF-8 (byte {exc.start + 1})"
                continue
            if not text.strip():
                continue
            try:
                yield line, json.loads(text), None
            except json.JSONDecodeError as exc:
                yield line, None, f"invalid JSON: {exc.msg} (column {exc.colno})"


def _parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            f"{path} is Parquet, which needs pyarrow: pip install 'reward-engine[eval]' "
            "(or convert the file to JSONL)"
        ) from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"cannot read {path} as Parquet: {exc}") from None


def _parquet_records(path: Path):
    row = 0
    for batch in _parquet(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            row += 1
            yield row, record, None


# -- the format ------------------------------------------------------------------------


def detect_format(record: Any) -> str | None:
    """The format a decoded row's fields say, or None when they fit none."""
    if not isinstance(record, dict) or "chosen" not in record or "rejected" not in record:
        return None
    chosen = record["chosen"]
    if "num_correct" in record or (
        isinstance(chosen, list) and chosen and all(isinstance(c, str) for c in chosen)
    ):
        return "rewardbench2"
    if "subset" in record and isinstance(chosen, str):
        return "rewardbench"
    return "pairs"


def describe_fields(record: Any) -> str:
    if not isinstance(record, dict):
        return f"a row that is {json_type_name(record)}"
    return "fields " + (", ".join(repr(k) for k in record) or "none")


# -- one row ---------------------------------------------------------------------------


def parse_row(record: Any, line: int, fmt: str) -> EvalRow:
    """The row's conversations under `fmt`, or the row with `error` set."""
    if not isinstance(record, dict):
        return EvalRow(line, error=f"a row must be an object, got {json_type_name(record)}")
    row = EvalRow(line, id=record.get("id"))
    try:
        _fill(row, record, fmt)
    except ConversationError as exc:
        row.error = str(exc)
    return row


def _fill(row: EvalRow, record: dict, fmt: str) -> None:
    missing = [k for k in _REQUIRED[fmt] if k not in record]
    if missing:
        raise ConversationError(
            f"a {fmt} row needs {', '.join(repr(k) for k in missing)} "
            f"(it has {', '.join(repr(k) for k in record) or 'no fields'})"
        )
    if fmt != "pairs":
        row.subset = _string(record["subset"], "subset")
    prompt = _prompt(record.get("prompt"))
    if fmt == "rewardbench":
        row.chosen = [_conversation(prompt, _string(record["chosen"], "chosen"), "chosen")]
        row.rejected = [_conversation(prompt, _string(record["rejected"], "rejected"), "rejected")]
    elif fmt == "rewardbench2":
        row.chosen = _response_list(prompt, record["chosen"], "chosen")
        row.rejected = _response_list(prompt, record["rejected"], "rejected")
        num_correct = record.get("num_correct", len(row.chosen))
        if type(num_correct) is not int or not 1 <= num_correct <= len(row.chosen):
            raise ConversationError(
                f"'num_correct' must be an integer from 1 to {len(row.chosen)} (the number of "
                f"chosen responses), got {num_correct!r}"
            )
        row.num_correct = num_correct
    else:
        row.chosen = [_conversation(prompt, record["chosen"], "chosen")]
        row.rejected = [_conversation(prompt, record["rejected"], "rejected")]


_REQUIRED = {
    "rewardbench": ("prompt", "chosen", "rejected", "subset"),
    "rewardbench2": ("prompt", "chosen", "rejected", "subset"),
    "pairs": ("chosen", "rejected"),
}


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConversationError(f"{key!r} must be a string, got {json_type_name(value)}")
    return value


def _prompt(prompt: Any) -> list[Message] | None:
    if prompt is None:
        return None
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    try:
        return validate_conversation(prompt)
    except ConversationError as exc:
        raise ConversationError(f"'prompt': {exc}") from None


def _response_list(prompt, responses: Any, key: str) -> list[list[Message]]:
    if not isinstance(responses, list) or not responses:
        what = "an empty array" if responses == [] else json_type_name(responses)
        raise ConversationError(f"{key!r} must be a non-empty array of strings, got {what}")
    return [_conversation(prompt, r, f"{key}[{i}]") for i, r in enumerate(responses)]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _conversation(prompt: list[Message] | None, response: Any, key: str) -> list[Message]:
    """The conversation whose last assistant turn is `response` (module docstring)."""
    if isinstance(response, str):
        if prompt is None:
            return _hh_transcript(response, key)
        return [*prompt, {"role": "assistant", "content": response}]
    try:
        messages = validate_conversation(response)
    except ConversationError as exc:
        raise ConversationError(f"{key!r}: {exc}") from None
    if messages[-1]["role"] != "assistant":
        raise ConversationError(f"{key!r}: the last message must be the assistant's response")
    if messages[0]["role"] != "assistant":
        return messages  # a whole conversation
    if prompt is None:
        raise ConversationError(f"{key!r} holds only assistant messages and there is no 'prompt'")
    return [*prompt, *messages]


def _hh_transcript(text: str, key: str) -> list[Message]:
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise ConversationError(
            f"{key!r} is a string but the row has no 'prompt', and it is not an HH-RLHF "
            "transcript ('\\n\\nHuman: ...\\n\\nAssistant: ...'): give a 'prompt'"
        )
    roles = {"Human": "user", "Assistant": "assistant"}
    messages = [
        {"role": roles[who], "content": said}
        for who, said in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages[-1]["role"] != "assistant":
        raise ConversationError(f"{key!r}: the transcript must end with an Assistant turn")
    return messages
