"""Scoring evaluation rows with a reward engine, chunk by chunk.

Every response of a row is tokenized and sent in the same engine call, next to each
other: they share the prompt's tokens, so the scheduler computes the prompt once and
the prefix cache serves it to the others (the hit rate is in engine.metrics()). A row
the engine cannot take (a conversation too long, a message it cannot format) gets an
error and the rest are scored, as `reward-engine score` does.

The engine needs only: `chat.encode(messages) -> token ids`, `max_model_len`,
`score_token_ids(seqs, progress=callback) -> rewards` and `metrics()`, so tests can
score with a stub whose rewards they know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from ..chat import ConversationError
from .formats import EvalRow

CHUNK_TOKENS = 16384  # tokens per engine call: bounds memory, keeps the bar moving


class RewardShapeError(Exception):
    """The model's rewards are not scalars and no reward index was chosen."""


def score_rows(
    engine,
    rows: Iterable[EvalRow],
    reward_index: int | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_tokens: int = CHUNK_TOKENS,
) -> Iterator[EvalRow]:
    """Yield every row, in order, with its rewards filled in or its error set.
    `progress` is called with token counts as the engine finishes sequences."""
    chunk: list[tuple[EvalRow, list[list[int]]]] = []
    tokens = 0
    for row in rows:
        ids = _tokenize(engine, row)
        chunk.append((row, ids))
        tokens += sum(map(len, ids))
        if tokens >= chunk_tokens:
            yield from _score_chunk(engine, chunk, reward_index, progress)
            chunk, tokens = [], 0
    yield from _score_chunk(engine, chunk, reward_index, progress)


def _tokenize(engine, row: EvalRow) -> list[list[int]]:
    if row.error is not None:
        return []
    try:
        ids = [engine.chat.encode(c) for c in row.conversations]
    except ConversationError as exc:
        row.error = str(exc)
        return []
    limit = engine.max_model_len
    for k, seq in enumerate(ids):
        if len(seq) > limit:
            which = _which(row, k)
            row.error = (
                f"{which} is {len(seq)} tokens long, more than the model's maximum length of "
                f"{limit} tokens"
            )
            return []
    row.tokens = sum(map(len, ids))
    return ids


def _which(row: EvalRow, k: int) -> str:
    n = len(row.chosen)
    if k < n:
        return "the chosen conversation" if n == 1 else f"chosen[{k}]"
    m = len(row.rejected)
    return "the rejected conversation" if m == 1 else f"rejected[{k - n}]"


def _score_chunk(engine, chunk, reward_index, progress):
    scored = [(row, ids) for row, ids in chunk if row.error is None]
    seqs = [s for _, ids in scored for s in ids]
    per_row: list[list | None]
    if not seqs:
        per_row = []
    else:
        try:
            flat = engine.score_token_ids(seqs, progress=progress)
            per_row, start = [], 0
            for _, ids in scored:
                per_row.append(flat[start : start + len(ids)])
                start += len(ids)
        except ValueError:  # a sequence the engine refuses: find it row by row
            per_row = []
            for row, ids in scored:
                try:
                    per_row.append(engine.score_token_ids(ids, progress=progress))
                except ValueError as exc:
                    row.error = f"the model cannot score it: {exc}"
                    per_row.append(None)
    for (row, _), rewards in zip(scored, per_row, strict=True):
        if rewards is not None:
            values = [_scalar(r, reward_index) for r in rewards]
            row.chosen_rewards = values[: len(row.chosen)]
            row.rejected_rewards = values[len(row.chosen) :]
    for row, _ in chunk:
        yield row


def _scalar(reward, index: int | None) -> float:
    if isinstance(reward, list):
        if index is None:
            if len(reward) == 1:
                return float(reward[0])
            raise RewardShapeError(
                f"the model returns {len(reward)} rewards per conversation; choose the one to "
                "evaluate with --reward-index"
            )
        if not -len(reward) <= index < len(reward):
            raise RewardShapeError(
                f"--reward-index {index} is out of range: the model returns {len(reward)} rewards"
            )
        return float(reward[index])
    if index not in (None, 0, -1):
        raise RewardShapeError(f"--reward-index {index}: the model returns one reward")
    return float(reward)
