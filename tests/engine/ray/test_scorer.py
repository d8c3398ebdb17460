"""RewardScorer as Ray Data calls it, without a cluster: every batch format Ray hands a
callable class gives the local command's records, bad rows included."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from ray_testing import input_lines, local_records, write_input

from engine.ray import OUTPUT_SCHEMA, RewardScorer


@pytest.fixture(scope="module")
def scorer(tiny_checkpoint):
    return RewardScorer(str(tiny_checkpoint), dtype="float32", deterministic=True,
                        num_kv_blocks=256)  # fmt: skip


def test_raw_lines_give_the_local_commands_records(scorer, tiny_checkpoint, tmp_path):
    src = write_input(tmp_path / "in.jsonl")
    want = local_records(tiny_checkpoint, src, tmp_path)
    rows = [{"line": k, "raw": text} for k, text in enumerate(input_lines(), start=1) if text]
    out = scorer(pa.Table.from_pylist(rows))
    assert out.schema == OUTPUT_SCHEMA
    assert [json.loads(r) for r in out.column("output").to_pylist()] == want
    errors = {r["line"]: r["error"] for r in out.to_pylist() if r["error"]}
    assert sorted(errors) == [5, 8, 14] and errors[5].startswith("invalid JSON")
    assert out.column("id").to_pylist()[0] == "0"  # ids as JSON text


def test_record_columns_in_numpy_and_pandas_batches(scorer, tiny_checkpoint):
    """Ray's default batches are dicts of numpy arrays (object arrays for nested
    values); a null column value means the key was not given."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    batch = {
        "id": np.array([1, 2, 3]),
        "messages": np.array([np.array(messages, dtype=object), None, None], dtype=object),
        "prompt": np.array([None, "2+2?", "2+2?"], dtype=object),
        "responses": np.array([None, np.array(["4", "5"], dtype=object), None], dtype=object),
    }
    out = scorer(batch).to_pylist()
    records = [json.loads(r["output"]) for r in out]
    want = scorer.engine.score([messages])[0]
    assert records[0] == {"id": 1, "line": 1, "reward": want}
    assert records[1]["rewards"] == scorer.engine.score_responses("2+2?", ["4", "5"])
    assert "needs a 'response'" in records[2]["error"]  # row 3 has neither response key
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame({"line": [41], "prompt": ["2+2?"], "response": ["4"]})
    assert json.loads(scorer(frame).to_pylist()[0]["output"]) == {
        "line": 41, "reward": scorer.engine.score_responses("2+2?", ["4"])[0]}  # fmt: skip
