"""`reward-engine build` on the command line, and scoring with what it built."""

from __future__ import annotations

import json

from engine.cli import main


def test_build_then_score_with_the_engine(tiny_checkpoint, calibration_file, tmp_path, capsys):
    out = tmp_path / "engine"
    argv = ["build", str(tiny_checkpoint), "-o", str(out), "--quantization", "int8",
            "--calibration", str(calibration_file), "--dtype", "float32", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "accuracy: int8 W8A8 (dynamic activation scales)" in err and f"built {out}" in err
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 7, "prompt": "2+2?", "responses": ["4", "5"]}\n')
    dst = tmp_path / "out.jsonl"
    assert main(["score", "--model", str(out), "--input", str(src), "--output", str(dst),
                 "--no-progress"]) == 0  # fmt: skip
    row = json.loads(dst.read_text())
    assert row["id"] == 7 and len(row["rewards"]) == 2
    assert "quantization int8 W8A8" in capsys.readouterr().err  # the load summary line
    assert main(["score", "--model", str(out), "--input", str(src), "--output", str(dst),
                 "--no-progress", "--no-verify"]) == 0  # fmt: skip


def test_build_errors_exit_2_with_one_line(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "engine"
    assert main(["build", str(tiny_checkpoint), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["build", str(tiny_checkpoint), "-o", str(out)]) == 2
    assert "already exists: remove it, choose another -o, or pass --force" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "nothing"), "-o", str(tmp_path / "x")]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert main(["build", str(tiny_checkpoint), "-o", str(tmp_path / "x"), "--format",
                 "modelopt"]) == 2  # fmt: skip
    assert "--quantization fp8" in capsys.readouterr().err
    assert main(["build", str(tiny_checkpoint), "-o", str(tmp_path / "x"), "--quantization",
                 "int4"]) == 2  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_build_help_teaches(capsys):
    assert main(["build", "--help"]) == 0
    text = capsys.readouterr().out
    for part in ("--quantization", "int8", "AMX", "--activation-scales", "calibration",
                 "accuracy report", "pairwise", "--format", "modelopt", "examples:", "--force"):  # fmt: skip
        assert part in text, part
