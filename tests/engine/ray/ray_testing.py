"""Shared by the Ray tests: an input file with good and bad lines, and the local CLI's
output for it (the oracle)."""

from __future__ import annotations

import json

from engine.cli import main

# deterministic mode makes a reward the same bits whatever batch it is scored in, so
# the replicas' rewards equal the local command's exactly
ENGINE_FLAGS = ["--dtype", "float32", "--deterministic", "--no-progress"]


def input_lines(n: int = 24) -> list[str]:
    lines = []
    for i in range(n):
        if i % 3 == 0:
            lines.append(json.dumps({"id": i, "prompt": f"What is {i} + {i}?",
                                     "responses": [str(2 * i), "I do not know."]}))  # fmt: skip
        elif i % 3 == 1:
            lines.append(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Name {i} colours."},
                {"role": "assistant", "content": "Red, green and blue. " * (i % 4 + 1)}]}))  # fmt: skip
        else:
            lines.append(json.dumps({"prompt": "Hello!", "response": f"Hi number {i}."}))
    lines[4] = "{not json"  # per-line errors, kept in place
    lines[7] = json.dumps({"id": 7, "prompt": "no response"})
    lines[10] = ""  # blank lines are skipped, line numbers are physical
    lines[13] = json.dumps({"id": 13, "messages": [{"role": "robot", "content": "beep"}]})
    return lines


def write_input(path, n: int = 24):
    path.write_text("\n".join(input_lines(n)) + "\n")
    return path


def local_records(model, src, tmp_path) -> list[dict]:
    """What `reward-engine score` (no Ray) writes for ``src``."""
    out = tmp_path / "local.jsonl"
    status = main(["score", "--model", str(model), "--input", str(src), "--output", str(out),
                   *ENGINE_FLAGS])  # fmt: skip
    assert status == 1  # the bad lines
    return [json.loads(line) for line in out.read_text().splitlines()]
