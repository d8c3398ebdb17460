"""A stand-in for RewardEngine whose rewards the tests know: a conversation's token ids
are the UTF-8 bytes of its rendered text, and its reward is the number after the last
"r=" in that text (so a fixture row writes its own rewards into its responses)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from engine.chat import validate_conversation

_REWARD = re.compile(r"r=(-?[0-9.]+)")


class StubChat:
    def encode(self, messages) -> list[int]:
        messages = validate_conversation(messages)
        return list("\n".join(f"{m['role']}: {m['content']}" for m in messages).encode())


class StubEngine:
    """The engine interface engine/eval uses: chat.encode, max_model_len,
    score_token_ids(seqs, progress) and metrics(). Each call's sequences are recorded."""

    def __init__(self, max_model_len: int = 4000, hit_rate: float = 0.25, refuse: str = ""):
        self.chat = StubChat()
        self.max_model_len = max_model_len
        self.calls: list[list[str]] = []
        self.hit_rate = hit_rate
        self.refuse = refuse  # a text the engine refuses with ValueError

    def score_token_ids(self, seqs, progress=None):
        texts = [bytes(s).decode() for s in seqs]
        if self.refuse and any(self.refuse in t for t in texts):
            raise ValueError(f"sequence refused: it contains {self.refuse!r}")
        self.calls.append(texts)
        if progress is not None:
            progress(sum(map(len, seqs)))
        return [float(_REWARD.findall(t)[-1]) for t in texts]

    def metrics(self):
        return {"prefix_cache_hit_rate": self.hit_rate, "tokens_requested": 100,
                "tokens_computed": 75, "model_steps": len(self.calls)}  # fmt: skip


def write_jsonl(path: Path, rows) -> Path:
    """Rows are records (written as JSON) or raw strings (written as they are)."""
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path
