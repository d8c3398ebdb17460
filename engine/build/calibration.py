"""Calibration data: the conversations a build runs the model over.

A calibration file is JSONL in the score CLI's forms (engine/jsonl.py): each line is
a group of conversations, the N responses of one prompt for the "responses" form,
which the accuracy report compares pairwise. Without a file, the package's own set
is used (engine/build/data/calibration.jsonl: 22 prompts with 4 responses each, good
to off-topic, in plain, multi-turn and system-prompt forms). Bad lines stop the build
with every problem listed by line, before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..chat import ChatFormatter, ConversationError
from ..jsonl import parse_line

BUILTIN = "builtin"
MAX_LISTED = 10


class CalibrationError(ValueError):
    """A calibration file that cannot be used; the message lists the bad lines."""


@dataclass(frozen=True, slots=True)
class CalibrationSet:
    """Token ids grouped by input line (a group's sequences answer the same prompt)."""

    groups: tuple[tuple[tuple[int, ...], ...], ...]
    source: str

    @property
    def sequences(self) -> list[tuple[int, ...]]:
        return [seq for group in self.groups for seq in group]

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


def builtin_path() -> Path:
    return Path(str(resources.files("engine.build") / "data" / "calibration.jsonl"))


def load_calibration(
    path: str | None, chat: ChatFormatter | None, limit: int, max_len: int
) -> CalibrationSet:
    """Up to ``limit`` conversations of the file (whole lines), tokenized with ``chat``."""
    source = str(path) if path else BUILTIN
    file = Path(path) if path else builtin_path()
    if chat is None:
        raise CalibrationError(
            "calibration needs the checkpoint's tokenizer (tokenizer.json): copy the model's "
            "tokenizer files into the checkpoint directory"
        )
    try:
        raw_lines = file.read_bytes().splitlines()
    except OSError as exc:
        raise CalibrationError(f"cannot read calibration file {file}: {exc.strerror}") from None
    groups, problems, count = [], [], 0
    for line_no, raw in enumerate(raw_lines, start=1):
        if count >= limit:
            break
        item = parse_line(raw, line_no)
        if item is None:
            continue
        if item.error is None:
            try:
                ids = chat.encode_batch(item.conversations)
            except ConversationError as exc:
                item.error = str(exc)
            else:
                long = [len(s) for s in ids if len(s) > max_len]
                if long:
                    item.error = (f"a conversation is {long[0]} tokens long, more than the "
                                  f"maximum length of {max_len}")  # fmt: skip
        if item.error is not None:
            problems.append(f"line {line_no}: {item.error}")
            continue
        groups.append(tuple(tuple(s) for s in ids))
        count += len(ids)
    if problems:
        listed = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise CalibrationError(f"calibration file {file} has bad lines: {listed}{more}")
    if not groups:
        raise CalibrationError(f"calibration file {file} holds no conversations")
    return CalibrationSet(tuple(groups), source)
