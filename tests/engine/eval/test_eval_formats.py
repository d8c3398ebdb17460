"""Evaluation input (engine/eval/formats.py): the format told from a row's fields, JSONL
and Parquet read alike, and a row's conversations in every accepted layout."""

from __future__ import annotations

import builtins

import pytest
from eval_stub import StubEngine, write_jsonl

from engine.eval.cli import EvalUsageError, resolve_format, run_eval
from engine.eval.formats import DataError, detect_format, parse_row, read_records

V1 = {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "donotanswer", "id": 3}
V2 = {"prompt": "p", "chosen": ["a"], "rejected": ["b", "c"], "subset": "Math", "num_correct": 1}
PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}


@pytest.mark.parametrize(
    "record,fmt",
    [
        (V1, "rewardbench"),
        (V2, "rewardbench2"),
        ({**V2, "num_correct": None}, "rewardbench2"),
        (PAIR, "pairs"),
        ({"chosen": [{"role": "user", "content": "q"}], "rejected": []}, "pairs"),
        ({"prompt": "p", "response": "a"}, None),
        ([1, 2], None),
    ],
)
def test_format_from_fields(record, fmt):
    assert detect_format(record) == fmt


def test_the_first_readable_row_decides(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", ["{bad", "", V2])
    assert resolve_format(data, None) == "rewardbench2"
    assert resolve_format(data, "pairs") == "pairs"
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "x"}])
    with pytest.raises(EvalUsageError, match="line 1, fields 'text'.*pass --format"):
        resolve_format(odd, None)
    with pytest.raises(DataError, match="no readable rows"):
        resolve_format(write_jsonl(tmp_path / "e.jsonl", ["", "{bad"]), None)
    with pytest.raises(DataError, match="data file not found"):
        resolve_format(tmp_path / "missing.jsonl", None)


def test_parquet_reads_like_jsonl(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [
        {**V1, "chosen": "x r=1", "rejected": "y r=0", "id": i, "subset": s}
        for i, s in enumerate(["donotanswer", "hep-go", "hep-go"])
    ]
    rows[2]["chosen"] = "x r=-1"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rb.parquet")
    assert resolve_format(tmp_path / "rb.parquet", None) == "rewardbench"
    _, from_parquet = run_eval(StubEngine(), tmp_path / "rb.parquet", "rewardbench",
                               tmp_path / "a", plots=False)  # fmt: skip
    _, from_jsonl = run_eval(StubEngine(), write_jsonl(tmp_path / "rb.jsonl", rows),
                             "rewardbench", tmp_path / "b", plots=False)  # fmt: skip
    assert from_parquet["metrics"] == from_jsonl["metrics"]
    assert from_parquet["metrics"]["subsets"]["hep-go"]["accuracy"] == 0.5


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "d.parquet").write_bytes(b"PAR1")
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'reward-engine\[eval\]'"):
        list(read_records(tmp_path / "d.parquet"))


def test_bad_lines_are_numbered(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"a": 1}\n\n\xff\xfe\n[1]\n')
    got = [(line, error) for line, _, error in read_records(data)]
    assert got == [(1, None), (3, "the line is not valid UTF-8 (byte 1)"), (4, None)]
    assert parse_row([1], 4, "pairs").error == "a row must be an object, got an array"


@pytest.mark.parametrize(
    "record,error",
    [
        ({**V2, "chosen": []}, "'chosen' must be a non-empty array of strings, got an empty array"),
        ({**V2, "num_correct": 2}, "'num_correct' must be an integer from 1 to 1"),
        ({**V1, "subset": 5}, "'subset' must be a string, got a number"),
        ({**PAIR, "prompt": [{"role": "robot", "content": "x"}]}, "'prompt': message 0 has unknown role"),
        ({"chosen": "plain text", "rejected": "b"}, "not an HH-RLHF transcript"),
        ({"chosen": "\n\nHuman: hi", "rejected": "b"}, "must end with an Assistant turn"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "rejected": "\n\nHuman: a\n\nAssistant: b"},
         "must end with an Assistant turn"),
        ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "there is no 'prompt'"),
        ({**PAIR, "chosen": [{"role": "user", "content": "q"}]}, "the last message must be the assistant"),
    ],
)  # fmt: skip
def test_row_errors_say_what_to_fix(record, error):
    fmt = detect_format(record) or "pairs"
    got = parse_row(record, 7, fmt).error
    assert got is not None and error in got, got


def test_conversation_layouts():
    system = {"role": "system", "content": "s"}
    full = [system, {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    row = parse_row(
        {"prompt": "ignored for formatting", "chosen": full, "rejected": "b"}, 1, "pairs"
    )
    assert row.chosen == [full]
    assert row.rejected == [[{"role": "user", "content": "ignored for formatting"},
                             {"role": "assistant", "content": "b"}]]  # fmt: skip
    v2 = parse_row(V2, 1, "rewardbench2")
    assert [c[-1]["content"] for c in v2.conversations] == ["a", "b", "c"]
    assert (v2.subset, v2.num_correct, v2.id) == ("Math", 1, None)
