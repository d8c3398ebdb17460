"""`reward-engine score` end to end on a tiny checkpoint with the real engine.

The CLI runs in-process through engine.cli.main(argv), which returns the exit status;
one test runs the installed console script (skipped when it is not installed).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from chat_messages import assistant, system, user

from engine.cli import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "conversations.jsonl"


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint) -> Path:
    return Path(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference(model_dir):
    """The same engine used directly: the rewards the CLI must write."""
    from engine import RewardEngine

    eng = RewardEngine.from_pretrained(model_dir, dtype="float32")

    def rewards(conversations):
        return eng.score_token_ids([eng.chat.encode(c) for c in conversations])

    rewards.engine = eng
    return rewards


def write_lines(path: Path, lines) -> Path:
    text = "".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines)
    path.write_text(text, encoding="utf-8")
    return path


def run(model_dir, tmp_path, lines, *extra) -> tuple[int, list[dict], str]:
    """Score `lines` (records or raw strings); returns (status, output records, stderr)."""
    src = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(model_dir), "--input", str(src), "--output", str(out)]
    argv += ["--dtype", "float32", "--no-progress", *extra]
    err = io.StringIO()
    real_stderr, sys.stderr = sys.stderr, err
    try:
        status = main(argv)
    finally:
        sys.stderr = real_stderr
    records = [json.loads(ln) for ln in out.read_text(encoding="utf-8").splitlines()]
    return status, records, err.getvalue()


def assert_close(got, expected, rel=1e-4):
    assert got == pytest.approx(expected, rel=rel, abs=1e-5)


# -- good lines --------------------------------------------------------------------------


def test_each_form_is_scored(model_dir, tmp_path, reference):
    prompt_messages = [system("Be brief."), user("Name a color.")]
    lines = [
        {"id": "m", "messages": [user("Hi"), assistant("Hello!")]},
        {"id": "p", "prompt": "What is 2+2?", "response": "4"},
        {"id": "pm", "prompt": prompt_messages, "response": "Blue."},
        {"id": "n", "prompt": "Pick a number.", "responses": ["7", "seven", "I won't."]},
    ]
    status, records, stderr = run(model_dir, tmp_path, lines)
    assert status == 0
    assert [r["id"] for r in records] == ["m", "p", "pm", "n"]
    assert [r["line"] for r in records] == [1, 2, 3, 4]
    assert set(records[0]) == {"id", "line", "reward"}
    assert set(records[3]) == {"id", "line", "rewards"}
    expected = reference(
        [
            [user("Hi"), assistant("Hello!")],
            [user("What is 2+2?"), assistant("4")],
            [*prompt_messages, assistant("Blue.")],
            *[[user("Pick a number."), assistant(r)] for r in ["7", "seven", "I won't."]],
        ]
    )
    assert all(isinstance(r["reward"], float) for r in records[:3])
    assert_close([r["reward"] for r in records[:3]], expected[:3])
    assert_close(records[3]["rewards"], expected[3:])
    assert stderr.strip().splitlines()[-1] == "scored 4 lines (6 conversations), 0 errors"


def test_fp8_kv_cache_scores_within_its_bound(model_dir, tmp_path, reference):
    """--kv-cache-dtype fp8: the bound of tests/engine/test_fp8_kv_rewards.py, relative to
    the largest |reward|, against the engine with a cache in the compute dtype."""
    from test_fp8_kv_rewards import FP8_KV_RTOL

    responses = ["7", "seven", "I won't.", "Forty-two, because it is the answer."]
    lines = [{"prompt": "Pick a number.", "responses": responses}]
    status, records, _ = run(model_dir, tmp_path, lines, "--kv-cache-dtype", "fp8")
    assert status == 0
    expected = reference([[user("Pick a number."), assistant(r)] for r in responses])
    scale = max(abs(x) for x in expected)
    worst = max(abs(a - b) for a, b in zip(records[0]["rewards"], expected, strict=True))
    assert worst <= FP8_KV_RTOL * scale


def test_examples_file_scores_cleanly(model_dir, tmp_path):
    out = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(model_dir), "--input", str(EXAMPLES), "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 0
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    inputs = [json.loads(ln) for ln in EXAMPLES.read_text().splitlines() if ln.strip()]
    assert len(records) == len(inputs) >= 8
    for rec, inp in zip(records, inputs, strict=True):
        assert rec["id"] == inp["id"]
        if "responses" in inp:
            assert len(rec["rewards"]) == len(inp["responses"])
        else:
            assert isinstance(rec["reward"], float)


def test_ids_of_any_json_type_are_carried(model_dir, tmp_path):
    ids = [0, "x", None, [1, "a"], {"k": 2}, 2.5, True]
    lines = [{"id": i, "prompt": "Q", "response": "A"} for i in ids]
    lines.append({"prompt": "no id", "response": "A"})
    status, records, _ = run(model_dir, tmp_path, lines)
    assert status == 0
    assert [r["id"] for r in records[:-1]] == ids
    assert "id" not in records[-1]


def test_order_and_line_numbers_across_chunks(model_dir, tmp_path, reference):
    # Tiny chunks and batches: many engine calls, output still in input order.
    lines, conversations = [], []
    for i in range(24):
        conversations.append(
            [user(f"Question {i}?" + " more" * (i % 7)), assistant(f"Answer {i}.")]
        )
        lines.append({"id": i, "messages": conversations[-1]})
        if i % 9 == 4:
            lines.append("")  # blank lines are skipped but counted
    status, records, stderr = run(
        model_dir, tmp_path, lines, "--chunk-tokens", "100", "--max-batch-tokens", "64"
    )
    assert status == 0
    assert [r["id"] for r in records] == list(range(24))
    physical = [n for n, ln in enumerate(lines, start=1) if ln != ""]
    assert [r["line"] for r in records] == physical
    assert_close([r["reward"] for r in records], reference(conversations))
    assert "scored 24 lines (24 conversations), 0 errors" in stderr


def test_deterministic_rewards_do_not_depend_on_the_file(model_dir, tmp_path):
    """--deterministic: a line's reward is the same bits scored in a big file with small
    steps as scored alone."""
    from engine import RewardEngine

    conversations = [[user(f"Question {i}?" + " more" * i), assistant(f"A{i}.")] for i in range(9)]
    lines = [{"messages": c} for c in conversations]
    status, records, _ = run(
        model_dir, tmp_path, lines, "--deterministic", "--max-batch-tokens", "40"
    )
    assert status == 0
    eng = RewardEngine.from_pretrained(model_dir, dtype="float32", deterministic=True)
    assert [r["reward"] for r in records] == [eng.score([c])[0] for c in conversations]


def test_multi_attribute_head_writes_lists(make_tiny_checkpoint, tmp_path):
    model_dir = make_tiny_checkpoint(num_labels=3)
    lines = [
        {"prompt": "Q", "response": "A"},
        {"prompt": "Q", "responses": ["A", "B"]},
    ]
    status, records, _ = run(model_dir, tmp_path, lines)
    assert status == 0
    assert len(records[0]["reward"]) == 3
    assert [len(r) for r in records[1]["rewards"]] == [3, 3]


# -- bad lines ---------------------------------------------------------------------------

BAD_LINES = [
    ("not json at all", "invalid JSON"),
    ("[1, 2, 3]", "a line must be a JSON object, got an array"),
    ('{"question": "Q", "answer": "A"}', "unknown input form (keys: 'question', 'answer')"),
    ('{"prompt": "Q"}', "'prompt' needs a 'response'"),
    ('{"messages": [{"role": "robot", "content": "x"}]}', "unknown role 'robot'"),
    ('{"messages": []}', "the conversation is empty"),
    ('{"prompt": "Q", "responses": ["A", 7]}', "'responses'[1] must be a string"),
]


def test_bad_lines_get_errors_and_good_lines_are_scored(model_dir, tmp_path, reference):
    good = {"id": "good", "prompt": "Q", "response": "A"}
    lines = [good]
    for text, _ in BAD_LINES:
        lines += [text, good]
    status, records, stderr = run(model_dir, tmp_path, lines)
    assert status == 1
    assert [r["line"] for r in records] == list(range(1, len(lines) + 1))
    (expected,) = reference([[user("Q"), assistant("A")]])
    for rec in records[::2]:
        assert rec["id"] == "good" and set(rec) == {"id", "line", "reward"}
        assert_close(rec["reward"], expected)
    for rec, (_, message) in zip(records[1::2], BAD_LINES, strict=True):
        assert set(rec) == {"line", "error"}
        assert message in rec["error"]
    bad = ", ".join(str(n) for n in range(2, len(lines), 2))
    assert stderr.strip().splitlines()[-1] == (
        f"scored {len(BAD_LINES) + 1} lines ({len(BAD_LINES) + 1} conversations), "
        f"{len(BAD_LINES)} errors: see lines {bad}"
    )


def test_too_long_conversation_reports_length_and_limit(model_dir, tmp_path, reference):
    limit = reference.engine.max_model_len
    long_text = "word " * (limit + 10)
    lines = [
        {"id": 1, "prompt": long_text, "response": "A"},
        {"id": 2, "prompt": "Q", "responses": ["fine", long_text]},
        {"id": 3, "prompt": "Q", "response": "A"},
    ]
    status, records, stderr = run(model_dir, tmp_path, lines)
    assert status == 1
    n = len(reference.engine.chat.encode([user(long_text), assistant("A")]))
    assert records[0] == {
        "id": 1,
        "line": 1,
        "error": f"the conversation is {n} tokens long, more than the model's maximum "
        f"length of {limit} tokens",
    }
    assert records[1]["error"].startswith("'responses'[1]: the conversation is ")
    assert f"maximum length of {limit} tokens" in records[1]["error"]
    assert "reward" in records[2]
    assert stderr.strip().endswith("2 errors: see lines 1, 2")


def test_invalid_utf8_line(model_dir, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"prompt": "\xff", "response": "A"}\n{"prompt": "Q", "response": "A"}\n')
    out = tmp_path / "out.jsonl"
    argv = ["score", "--model", str(model_dir), "--input", str(src), "--output", str(out)]
    assert main([*argv, "--no-progress"]) == 1
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert "not valid UTF-8" in records[0]["error"] and "reward" in records[1]


def test_summary_lists_the_first_error_lines(model_dir, tmp_path):
    status, records, stderr = run(model_dir, tmp_path, ["{}"] * 12)
    assert status == 1 and len(records) == 12
    assert stderr.strip().endswith("12 errors: see lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 ...")


def test_empty_input(model_dir, tmp_path):
    status, records, stderr = run(model_dir, tmp_path, ["", "  "])
    assert status == 0 and records == []
    assert "scored 0 lines (0 conversations), 0 errors" in stderr


# -- streams, progress, usage ------------------------------------------------------------


def test_stdin_to_stdout(model_dir, monkeypatch, capsys):
    data = json.dumps({"id": "s", "prompt": "Q", "response": "A"}) + "\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data.encode())))
    argv = ["score", "--model", str(model_dir), "--input", "-", "--output", "-", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    (record,) = [json.loads(ln) for ln in captured.out.splitlines()]
    assert record["id"] == "s" and record["line"] == 1 and isinstance(record["reward"], float)
    assert "scored 1 line (1 conversation), 0 errors" in captured.err


def test_progress_bar_counts_tokens(model_dir, tmp_path, capsys):
    src = write_lines(tmp_path / "in.jsonl", [{"prompt": "Q", "response": "A"}] * 3)
    out = tmp_path / "out.jsonl"
    assert (
        main(["score", "--model", str(model_dir), "--input", str(src), "--output", str(out)]) == 0
    )
    err = capsys.readouterr().err
    assert "tok/s" in err and "scoring" in err


def test_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "score" in out and "examples:" in out
    assert main(["score", "--help"]) == 0
    out = capsys.readouterr().out
    for text in ('"messages"', '"responses"', '"error"', "--max-batch-tokens", "exit status",
                 "--kv-cache-dtype {auto,fp8}"):  # fmt: skip
        assert text in out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "usage: reward-engine" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(model_dir, tmp_path, capsys):
    base = ["score", "--model", str(model_dir), "--input", str(EXAMPLES), "--output"]
    base.append(str(tmp_path / "out.jsonl"))
    assert main([*base, "--dtype", "int4"]) == 2
    assert "invalid choice: 'int4'" in capsys.readouterr().err
    assert main([*base, "--max-batch-tokens", "0"]) == 2
    assert "must be at least 1" in capsys.readouterr().err
    assert main([*base, "--kv-cache-dtype", "fp16"]) == 2
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
    assert main(["score", "--input", str(EXAMPLES), "--output", "-"]) == 2
    assert "--model" in capsys.readouterr().err


def test_usage_errors_are_reported_without_traceback(model_dir, tmp_path, capsys):
    out = str(tmp_path / "out.jsonl")
    not_a_checkpoint = tmp_path / "empty"
    not_a_checkpoint.mkdir()
    cases = [
        (["--model", str(tmp_path / "nope"), "--input", str(EXAMPLES), "--output", out],
         "model directory not found"),
        (["--model", str(not_a_checkpoint), "--input", str(EXAMPLES), "--output", out],
         "has no config.json"),
        (["--model", str(model_dir), "--input", str(tmp_path / "missing.jsonl"), "--output", out],
         "cannot read input"),
        (["--model", str(model_dir), "--input", str(tmp_path), "--output", out],
         "is a directory"),
        (["--model", str(model_dir), "--input", str(EXAMPLES), "--output",
          str(tmp_path / "no" / "such" / "dir.jsonl")],
         "cannot write output"),
        (["--model", str(model_dir), "--input", str(EXAMPLES), "--output", str(EXAMPLES)],
         "would be overwritten"),
    ]  # fmt: skip
    for args, message in cases:
        assert main(["score", *args, "--no-progress"]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("reward-engine score: error: ") and message in err
        assert "Traceback" not in err
    assert EXAMPLES.stat().st_size > 0


def test_python_dash_m_usage_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "score", "--model", str(tmp_path / "nope"),
         "--input", "-", "--output", "-"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "model directory not found" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script(model_dir, tmp_path):
    script = Path(sys.executable).parent / "reward-engine"
    if not script.exists():
        pytest.skip("the reward-engine console script is not installed (pip install -e .)")
    proc = subprocess.run(
        [str(script), "score", "--model", str(model_dir), "--input", "-", "--output", "-",
         "--dtype", "float32"],
        input='{"id": 1, "prompt": "Q", "responses": ["A", "B"]}\n\nnot json\n',
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    first, second = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert first["id"] == 1 and len(first["rewards"]) == 2
    assert second["line"] == 3 and "invalid JSON" in second["error"]
    assert "scored 1 line (2 conversations), 1 error: see line 3" in proc.stderr


def test_dtype_defaults_to_auto_on_every_model_command():
    from engine.cli import build_parser

    args = build_parser().parse_args(["score", "--model", "m", "--input", "-", "--output", "-"])
    assert args.dtype == "auto"
