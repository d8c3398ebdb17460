"""`reward-engine eval` end to end with the real engine on a tiny seeded checkpoint
(tests/conftest.py make_tiny_checkpoint, real Llama-3 tokenizer): the report's rewards
are the engine's own, its figures follow from them, shared prompts hit the prefix
cache, and usage errors exit 2 with one line that says what to fix."""

from __future__ import annotations

import io
import json
import sys

import pytest
from eval_stub import write_jsonl

from engine import RewardEngine
from engine.cli import main

PROMPTS = ["Name a prime number.", "What is the capital of France? Answer in one word."]
ROWS = [
    {"id": i, "prompt": PROMPTS[i % 2], "chosen": f"Answer {i}: seven.", "rejected": f"No {i}.",
     "subset": ["alpacaeval-easy", "hep-cpp", "donotanswer"][i % 3]}
    for i in range(9)
]  # fmt: skip


def run(*argv) -> tuple[int, str]:
    err = io.StringIO()
    real, sys.stderr = sys.stderr, err
    try:
        status = main(["eval", *map(str, argv), "--no-progress"])
    finally:
        sys.stderr = real
    return status, err.getvalue()


@pytest.fixture(scope="module")
def model_dir(tiny_checkpoint):
    return tiny_checkpoint


def test_rewardbench_report_from_the_real_engine(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "rb.jsonl", ROWS)
    out = tmp_path / "report"
    status, err = run("--model", model_dir, "--data", data, "--output", out, "--deterministic",
                      "--dtype", "float32", "--max-batch-tokens", "64")  # fmt: skip
    assert status == 0, err
    assert f"report in {out / 'report.md'}" in err
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "rewardbench" and report["rows"]["scored"] == 9
    assert report["options"]["deterministic"] is True and report["options"]["dtype"] == "float32"
    # the rewards are the engine's: in deterministic mode bit for bit the same as each
    # conversation scored alone
    eng = RewardEngine.from_pretrained(model_dir, dtype="float32", deterministic=True)
    scores = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    for row, got in zip(ROWS, scores, strict=True):
        chosen = eng.score([[{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": row["chosen"]}]])  # fmt: skip
        rejected = eng.score_responses(row["prompt"], [row["rejected"]])
        assert (got["chosen_rewards"], got["rejected_rewards"]) == (chosen, rejected)
        assert got["correct"] == (chosen[0] > rejected[0])
    # and the figures follow from them
    for subset, figures in report["metrics"]["subsets"].items():
        mine = [s for s in scores if s["subset"] == subset]
        assert figures["accuracy"] == sum(s["correct"] for s in mine) / len(mine)
    # nine rows over two prompts: every prompt after its first row comes from the cache
    assert report["engine"]["prefix_cache_hit_rate"] > 0.3
    assert report["engine"]["tokens_computed"] < report["engine"]["tokens_requested"]
    assert sorted(p.name for p in out.glob("*.png")) == ["accuracy.png", "margins.png"]


def test_parquet_and_auto_detected_rewardbench2(model_dir, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"id": f"{kind}:{i}", "prompt": PROMPTS[i], "subset": "Ties",
             "chosen": ["One.", "Two."][: 1 + (kind == "tied")], "rejected": ["Blue.", "Green."],
             "num_correct": 1 + (kind == "tied")}
            for i in range(2) for kind in ("ref", "tied")]  # fmt: skip
    rows.append({"id": "x", "prompt": "Hi", "subset": "Focus", "chosen": ["Hello!"],
                 "rejected": ["Go away.", "No."], "num_correct": 1})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rb2.parquet")
    status, err = run("--model", model_dir, "--data", tmp_path / "rb2.parquet",
                      "--output", tmp_path / "out", "--no-plots")  # fmt: skip
    assert status == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["format"] == "rewardbench2"
    assert report["metrics"]["subsets"]["Ties"]["prompts_with_both"] == 2
    assert set(report["metrics"]["subsets"]) == {"Ties", "Focus"}
    assert report["plots"] == []


def test_multi_attribute_heads_need_a_reward_index(make_tiny_checkpoint, tmp_path):
    ckpt = make_tiny_checkpoint(num_labels=3)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    status, err = run("--model", ckpt, "--data", data, "--output", tmp_path / "a")
    assert status == 2 and "returns 3 rewards per conversation" in err and "--reward-index" in err
    status, err = run("--model", ckpt, "--data", data, "--output", tmp_path / "b",
                      "--reward-index", "2", "--no-plots")  # fmt: skip
    assert status == 0, err


def test_usage_errors_exit_2(model_dir, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    status, err = run("--model", tmp_path / "nope", "--data", data)
    assert status == 2 and "model directory not found" in err
    status, err = run("--model", model_dir, "--data", tmp_path / "missing.jsonl")
    assert status == 2 and "data file not found" in err
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"text": "a"}])
    status, err = run("--model", model_dir, "--data", odd)
    assert status == 2 and "cannot tell the format" in err
    status, err = run("--model", model_dir, "--data", data, "--dtype", "int3")
    assert status == 2 and "invalid choice: 'int3'" in err
    broken = tmp_path / "broken"
    broken.mkdir()
    status, err = run("--model", broken, "--data", data)
    assert status == 2 and "cannot load the model from" in err
