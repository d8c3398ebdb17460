"""`reward-engine score --ray` and engine.ray.score_files on a local Ray (2 CPUs, one
cluster for the module): the replicas' records are the local command's, bad lines
included; a rerun replaces the output; a replica that dies mid-run is replaced and its
work redone without losing or duplicating a line.

Replicas get fractional CPUs: on 2 cores, whole-CPU actors would leave Ray Data's read
and write tasks no CPU and the run would hang."""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from ray_testing import ENGINE_FLAGS, local_records, write_input

from engine.cli import main
from engine.ray import RewardScorer, read_output, score_files

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


RAY_FLAGS = ["--ray", "--replicas", "2", "--cpus-per-replica", "0.5", "--batch-size", "8"]


def test_two_replicas_write_the_local_commands_records(tiny_checkpoint, tmp_path, capsys):
    src = write_input(tmp_path / "in.jsonl")
    want = local_records(tiny_checkpoint, src, tmp_path)
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out),
            *ENGINE_FLAGS, *RAY_FLAGS]  # fmt: skip
    assert main(argv) == 1  # some lines had errors, as locally
    assert "scored 20 lines, 3 errors" in capsys.readouterr().err
    assert read_output(out) == want
    parts = sorted(p.name for p in out.glob("part-*.jsonl"))
    assert parts and json.loads((out / "_SUCCESS").read_text())["lines"] == len(want)
    # the parts, concatenated in name order, are the local output file's lines
    assert "".join((out / p).read_text() for p in parts) == (tmp_path / "local.jsonl").read_text()
    # a rerun (here with a different split into parts) replaces, never adds
    assert main([*argv, "--batch-size", "5"]) == 1
    assert read_output(out) == want
    assert "".join(p.read_text() for p in sorted(out.glob("part-*"))).count("\n") == len(want)


def test_parquet_in_parquet_out(tiny_checkpoint, tmp_path):
    rows = [{"id": 1, "prompt": "2+2?", "responses": ["4", "5"], "messages": None},
            {"id": 2, "prompt": None, "responses": None,
             "messages": [{"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}]},
            {"id": 3, "prompt": "no response", "responses": None, "messages": None}]  # fmt: skip
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src, row_group_size=2)
    stats = score_files(str(tiny_checkpoint), src, tmp_path / "out", replicas=1, num_cpus=0.5,
                        engine_options={"dtype": "float32", "deterministic": True})  # fmt: skip
    assert (stats.lines, stats.error_lines) == (3, [3])
    table = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet"))[0])
    assert table.column_names == ["line", "id", "error", "output"]
    records = read_output(tmp_path / "out")
    scorer = RewardScorer(str(tiny_checkpoint), dtype="float32", deterministic=True)
    assert records[0] == {"id": 1, "line": 1,
                          "rewards": scorer.engine.score_responses("2+2?", ["4", "5"])}  # fmt: skip
    assert records[1]["reward"] == scorer.engine.score([rows[1]["messages"]])[0]
    assert records[2]["line"] == 3 and "needs a 'response'" in records[2]["error"]


class DiesOnce(RewardScorer):
    """A replica whose process dies in its first batch (once per run: a marker file)."""

    def __init__(self, model, marker, **kw):
        super().__init__(model, **kw)
        self.marker = marker

    def __call__(self, batch):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)  # the actor's process is gone, mid-task
        return super().__call__(batch)


def test_a_replica_killed_mid_run_loses_and_duplicates_nothing(tiny_checkpoint, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship DiesOnce by value
    src = write_input(tmp_path / "in.jsonl", n=30)
    want = local_records(tiny_checkpoint, src, tmp_path)
    marker = tmp_path / "died"
    stats = score_files(str(tiny_checkpoint), src, tmp_path / "out", replicas=2, num_cpus=0.5,
                        batch_size=6, lines_per_shard=6, scorer=DiesOnce,
                        engine_options={"dtype": "float32", "deterministic": True,
                                        "marker": str(marker)})  # fmt: skip
    assert marker.exists()  # a replica did die
    got = read_output(tmp_path / "out")
    assert [r["line"] for r in got] == [r["line"] for r in want]  # each line exactly once
    assert got == want
    assert stats.lines == len(want) and stats.error_lines == [5, 8, 14]
