"""`make demo`: scores the shipped examples and prints a table."""

from __future__ import annotations

import json
from pathlib import Path

from engine.demo import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "conversations.jsonl"


def test_demo_prints_one_row_per_example(tiny_checkpoint, capsys):
    assert main(["--model", str(tiny_checkpoint), "--input", str(EXAMPLES), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    examples = [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    for ex in examples:
        if "id" in ex:
            assert str(ex["id"]) in out
    rows = [line for line in out.splitlines() if line[:1] not in ("", "-", "(") and "reward" not in line
            and not line.startswith("model:")]
    expected = sum(len(ex.get("responses", [None])) for ex in examples)  # a row per response
    assert len(rows) == expected
