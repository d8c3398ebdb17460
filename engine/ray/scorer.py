"""RewardScorer: the engine as a callable class for Ray Data's ``Dataset.map_batches``.

    ds.map_batches(RewardScorer, fn_constructor_kwargs={"model": "/shared/my-rm"},
                   concurrency=4, num_gpus=1, batch_size=64)

Ray starts ``concurrency`` actors; each builds one engine in its constructor and scores
every batch it is given in one engine call (the continuous batcher and the prefix cache
work across the batch). Rows are in the score command's forms (engine/jsonl.py): either
the record's own columns ("messages", or "prompt" with "response"/"responses", and an
optional "id"), or a "raw" column holding the JSON text of an input line. A "line"
column, when present, numbers the rows (the command line sets it to the 1-based input
line or Parquet row); without one a row's line is its place in its batch.

Every input row gives one output row (``OUTPUT_SCHEMA``): "line", "id" (the input's id
as JSON text, null when it had none), "error" (null when scored) and "output", the
record the local `reward-engine score` writes for that line, as JSON text. A bad row
gets its error and never fails its neighbours.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow as pa

from ..jsonl import InputLine, parse_line, parse_record

OUTPUT_SCHEMA = pa.schema([
    ("line", pa.int64()), ("id", pa.string()), ("error", pa.string()), ("output", pa.string()),
])  # fmt: skip
RECORD_KEYS = ("id", "messages", "prompt", "response", "responses")


class RewardScorer:
    """One engine per Ray actor (module docstring).

    model: engine directory or checkpoint, at a path every node can read.
    tensor_parallel_size: ranks of each replica's engine (give the actor as many GPUs).
    engine_options: RewardEngine.from_pretrained's keywords (max_num_batched_tokens,
    num_threads, kv_cache_dtype, verify, ...)."""

    def __init__(self, model: str, *, dtype: str = "auto", tensor_parallel_size: int = 1,
                 device: str | None = None, **engine_options):  # fmt: skip
        import torch

        from .. import RewardEngine

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if tensor_parallel_size != 1:
            engine_options["tensor_parallel_size"] = tensor_parallel_size
        self.engine = RewardEngine.from_pretrained(model, dtype=dtype, device=device,
                                                   **engine_options)  # fmt: skip
        if self.engine.chat is None:
            raise ValueError(f"{model} has no tokenizer.json: copy the model's tokenizer files "
                             "into it")  # fmt: skip

    def __call__(self, batch) -> pa.Table:
        items = [_input_line(row, k) for k, row in enumerate(_rows(batch), start=1)]
        return pa.Table.from_pylist(self.score_lines(items), schema=OUTPUT_SCHEMA)

    def score_lines(self, items: list[InputLine]) -> list[dict[str, Any]]:
        """Output rows of parsed input lines, as the local score command scores them:
        one engine call, and one line at a time only when the engine refuses the call."""
        from ..cli import _score_lines, _tokenize

        tokenized = [(item, _tokenize(self.engine, item)) for item in items]
        scored = [(item, ids) for item, ids in tokenized if item.error is None]
        results = _score_lines(self.engine, scored, _NoProgress())
        rewards = {id(item): r for (item, _), r in zip(scored, results, strict=True)}
        return [_output_row(item, rewards.get(id(item))) for item in items]


class _NoProgress:
    def update(self, n: int) -> None:
        pass


def _output_row(item: InputLine, rewards) -> dict[str, Any]:
    return {
        "line": item.line,
        "id": json.dumps(item.id, ensure_ascii=False) if item.has_id else None,
        "error": item.error,
        "output": json.dumps(item.output(rewards), ensure_ascii=False),
    }


def _input_line(row: dict[str, Any], position: int) -> InputLine:
    line = row.get("line")
    line = int(line) if line is not None else position
    if row.get("raw_error") is not None:  # a line that could not be read as text
        return InputLine(line, error=str(row["raw_error"]))
    if row.get("raw") is not None:
        item = parse_line(row["raw"], line)
        return item if item is not None else InputLine(line, error="the line is blank")
    # a table's absent values are nulls: a key that is null was not given
    record = {k: row[k] for k in RECORD_KEYS if row.get(k) is not None}
    return parse_record(record, line)


def _rows(batch) -> list[dict[str, Any]]:
    """The batch's rows as plain Python values, whatever the batch format."""
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):  # pandas
        batch = {c: batch[c].to_numpy() for c in batch.columns}
    columns = {k: list(v) for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: _plain(v[i]) for k, v in columns.items()} for i in range(n)]


def _plain(value):
    """numpy values (Ray's numpy batches nest object arrays) -> Python ones."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
