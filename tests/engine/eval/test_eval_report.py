"""Every figure of an evaluation report, checked against a hand computation.

The fixtures are made here (no downloads); a stub engine scores them with rewards the
rows spell out ("r=0.9" in a response), so each expected figure below is worked out by
hand from the rows, not by the code under test.
"""

from __future__ import annotations

import json
import math

import pytest
from eval_stub import StubEngine, write_jsonl

from engine.eval.cli import run_eval
from engine.eval.rewardbench_data import EXAMPLE_COUNTS, SECTIONS

APPROX = dict(rel=1e-12, abs=1e-12)


def v1(subset, chosen, rejected, id=None):
    return {"id": id, "prompt": f"question for {subset}", "chosen": f"good r={chosen}",
            "rejected": f"bad r={rejected}", "subset": subset}  # fmt: skip


V1_ROWS = [
    v1("alpacaeval-easy", 1.0, 0.0),  # correct
    v1("alpacaeval-easy", 0.5, 0.7),  # wrong
    v1("alpacaeval-easy", 0.3, 0.3),  # tie: wrong
    v1("alpacaeval-easy", 2.0, -1.0),  # correct
    v1("mt-bench-med", 1.0, 0.5),
    v1("mt-bench-med", 0.25, 0.0),
    "{not json",  # line 7
    v1("llmbar-natural", 1.0, 0.0),
    v1("llmbar-natural", 0.0, 1.0),
    v1("llmbar-natural", 3.0, 2.0),
    {"prompt": "q", "chosen": "r=1", "rejected": "r=0"},  # line 11: no subset
    v1("xstest-should-refuse", 0.5, 0.0),
    v1("donotanswer", 0.0, 0.5),
    v1("math-prm", 1.0, 0.0),
    v1("math-prm", -1.0, 0.0),
    v1("hep-python", 0.75, 0.5),
    v1("my-own-subset", 0.0, 1.0),
    {**v1("hep-go", 1.0, 0.0), "chosen": ["r=1"]},  # line 18: chosen is not a string
]


@pytest.fixture
def v1_report(tmp_path):
    data = write_jsonl(tmp_path / "rb1.jsonl", V1_ROWS)
    engine = StubEngine()
    status, report = run_eval(engine, data, "rewardbench", tmp_path / "out", model="stub")
    return status, report, engine, tmp_path / "out"


def test_rewardbench_v1_every_figure(v1_report):
    status, report, _, _ = v1_report
    assert status == 1  # some rows had errors
    m = report["metrics"]
    accuracy = {name: s["accuracy"] for name, s in m["subsets"].items()}
    assert accuracy == {
        "alpacaeval-easy": 2 / 4, "mt-bench-med": 1.0, "llmbar-natural": 2 / 3,
        "xstest-should-refuse": 1.0, "donotanswer": 0.0, "math-prm": 0.5, "hep-python": 1.0,
        "my-own-subset": 0.0,
    }  # fmt: skip
    assert m["subsets"]["alpacaeval-easy"]["correct"] == 2
    assert m["subsets"]["alpacaeval-easy"]["count"] == 4
    assert m["subsets"]["alpacaeval-easy"]["mean_margin"] == pytest.approx((1 - 0.2 + 0 + 3) / 4)
    # sections: subset accuracies weighted by upstream's example counts
    chat = (0.5 * 100 + 1.0 * 40) / 140
    chat_hard = 2 / 3
    safety = (1.0 * 154 + 0.0 * 136) / 290
    reasoning = (0.5 * 984 + 1.0 * 164) / (984 + 164)
    sections = {name: s["score"] for name, s in m["sections"].items()}
    assert sections == pytest.approx(
        {"Chat": chat, "Chat Hard": chat_hard, "Safety": safety, "Reasoning": reasoning}, **APPROX
    )
    assert m["sections"]["Reasoning"]["weights"] == {"math-prm": 984, "hep-python": 164}
    assert "alpacaeval-hard" in m["sections"]["Chat"]["missing_subsets"]
    assert m["overall"] == pytest.approx((chat + chat_hard + safety + reasoning) / 4, **APPROX)
    assert m["missing_sections"] == []
    assert m["subsets_outside_sections"] == ["my-own-subset"]
    # all pairs: 9 correct of 15 scored rows (the positive margins below)
    assert m["pairs"]["correct"] == 9 and m["pairs"]["count"] == 15
    assert report["rows"] == {"total": 18, "scored": 15, "errors": 3}


def test_rewardbench_v1_margins_errors_engine_figures(v1_report):
    _, report, engine, out = v1_report
    margins = [1, -0.2, 0, 3, 0.5, 0.25, 1, -1, 1, 0.5, -0.5, 1, -1, 0.25, -1]
    g = report["margins"]
    assert g["count"] == 15
    assert g["mean"] == pytest.approx(sum(margins) / 15)
    assert (g["min"], g["median"], g["max"]) == (-1, 0.25, 3)
    assert (g["positive"], g["zero"], g["negative"]) == (9, 1, 5)
    assert sum(g["histogram"]["counts"]) == 15 and len(g["histogram"]["edges"]) == 41
    assert [(e["line"], e["error"][:24]) for e in report["errors"]] == [
        (7, "invalid JSON: Expecting "),
        (11, "a rewardbench row needs "),
        (18, "'chosen' must be a strin"),
    ]
    e = report["engine"]
    assert e["prefix_cache_hit_rate"] == 0.25 and e["tokens_computed"] == 75
    assert e["conversations"] == 30
    # every row's two responses were in the same engine call, next to each other
    for call in engine.calls:
        assert len(call) % 2 == 0
        for chosen, rejected in zip(call[::2], call[1::2], strict=True):
            assert chosen.split("\n")[0] == rejected.split("\n")[0]
    assert report["chance"] == 0.5


def test_report_files(v1_report):
    _, report, _, out = v1_report
    saved = json.loads((out / "report.json").read_text())
    assert saved["metrics"]["overall"] == pytest.approx(report["metrics"]["overall"])
    md = (out / "report.md").read_text()
    assert f"**overall {report['metrics']['overall']:.4f}**" in md
    assert "| Reasoning | 0.5714 | math-prm (984), hep-python (164) |" in md
    assert "| 7 | invalid JSON" in md and "![accuracy](accuracy.png)" in md
    lines = [json.loads(x) for x in (out / "scores.jsonl").read_text().splitlines()]
    assert len(lines) == 18
    assert lines[0] == {"line": 1, "subset": "alpacaeval-easy", "chosen_rewards": [1.0],
                        "rejected_rewards": [0.0], "margin": 1.0, "correct": True}  # fmt: skip
    assert lines[6]["line"] == 7 and "error" in lines[6]
    for name in report["plots"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["plots"] == ["accuracy.png", "margins.png"]


def test_the_weights_are_upstreams():
    """rewardbench/constants.py: every section subset has a count; math-prm upweighted."""
    assert sorted(s for members in SECTIONS.values() for s in members) == sorted(EXAMPLE_COUNTS)
    assert EXAMPLE_COUNTS["math-prm"] == 984 == 6 * EXAMPLE_COUNTS["hep-cpp"]
    assert sum(EXAMPLE_COUNTS[s] for s in SECTIONS["Chat"]) == 358


def v2(subset, chosen, rejected, id, num_correct=None):
    row = {"id": id, "prompt": f"prompt {id}", "subset": subset,
           "chosen": [f"c{i} r={r}" for i, r in enumerate(chosen)],
           "rejected": [f"w{i} r={r}" for i, r in enumerate(rejected)]}  # fmt: skip
    row["num_correct"] = num_correct or len(chosen)
    return row


V2_ROWS = [
    v2("Factuality", [0.9], [0.1, 0.2, 0.3], "f1"),  # 1
    v2("Factuality", [0.5], [0.5, 0.1, 0.5], "f2"),  # three share the top: 1/3
    v2("Factuality", [0.2], [0.9, 0.1, 0.1], "f3"),  # 0
    v2("Math", [1.0], [0.0, 0.0, 1.0], "m1"),  # 1/2
    v2("Ties", [2.0], [1.0, 0.5], "ref:1"),
    v2("Ties", [2.2, 2.1, 2.0], [1.5, 0.0], "tied:1"),
    v2("Ties", [1.0], [1.2], "ref:2"),
    v2("Ties", [1.0, 0.9], [0.95], "tied:2"),
    v2("Ties", [1.0], [0.0], "no-colon"),  # line 9: not a ref/tied id
    {**v2("Math", [1.0], [0.0], "m2"), "num_correct": 0},  # line 10
]


def test_rewardbench2_every_figure(tmp_path):
    data = write_jsonl(tmp_path / "rb2.jsonl", V2_ROWS)
    status, report = run_eval(StubEngine(), data, "rewardbench2", tmp_path / "out")
    assert status == 1
    m = report["metrics"]
    factuality = (1 + 1 / 3 + 0) / 3
    assert m["subsets"]["Factuality"]["score"] == pytest.approx(factuality, **APPROX)
    assert m["subsets"]["Factuality"]["ties_at_top"] == 1
    assert m["subsets"]["Math"]["score"] == 0.5
    ties = m["subsets"]["Ties"]
    # per prompt: (accurate, spread of the correct, worst correct - best incorrect)
    ref1_gap, tied1_gap, tied1_spread = 2.0 - 1.0, 2.0 - 1.5, 2.2 - 2.0
    ref2_gap, tied2_gap, tied2_spread = 1.0 - 1.2, 0.9 - 0.95, 1.0 - 0.9
    assert ties["ref_accuracy"] == 0.5 and ties["tied_accuracy"] == 0.5
    assert ties["correctness_preferred"] == 0.5  # prompt 1: 0.5 > 0.2; prompt 2: no
    assert ties["correctness_preferred_hard"] == 0.5  # min(1.0, 0.5) > 0.2; no
    margin = (
        math.tanh(min(ref1_gap, tied1_gap) / tied1_spread - 1)
        + math.tanh(min(ref2_gap, tied2_gap) / tied2_spread - 1)
    ) / 2
    assert ties["correctness_margin_score"] == pytest.approx(margin, **APPROX)
    ties_score = 0.3 * 0.5 + 0.3 * 0.5 + 0.2 * 0.5 + 0.2 * 0.5 + 0.01 * margin
    assert ties["score"] == pytest.approx(ties_score, **APPROX)
    assert m["overall"] == pytest.approx((factuality + 0.5 + ties_score) / 3, **APPROX)
    assert m["missing_subsets"] == ["Precise IF", "Safety", "Focus"]
    assert [e["line"] for e in report["errors"]] == [9, 10]
    assert "'ref:<n>' or 'tied:<n>'" in report["errors"][0]["error"]
    assert "'num_correct' must be an integer from 1 to 1" in report["errors"][1]["error"]
    # margin of a row: worst chosen - best rejected
    assert report["margins"]["count"] == 8
    assert report["margins"]["min"] == pytest.approx(-0.7)  # f3: 0.2 - 0.9
    assert report["margins"]["max"] == pytest.approx(1.0)  # ref:1: 2.0 - 1.0
    assert report["chance"] == 0.25
    lines = [json.loads(x) for x in (tmp_path / "out" / "scores.jsonl").read_text().splitlines()]
    assert lines[1]["credit"] == pytest.approx(1 / 3) and "credit" not in lines[4]


def test_pairs_every_figure_and_conversation_forms(tmp_path):
    rows = [
        {"prompt": "q1", "chosen": "a r=1", "rejected": "b r=0"},
        {"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q2"}],
         "chosen": "r=0.25", "rejected": "r=0.5"},
        {"chosen": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "r=2"}],
         "rejected": [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "r=1"}]},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello r=0.5\n\nHuman: more?\n\nAssistant: r=0.7",
         "rejected": "\n\nHuman: hi\n\nAssistant: hello r=0.5\n\nHuman: more?\n\nAssistant: r=0.7"},
        {"chosen": "not a transcript", "rejected": "r=0"},  # line 5
        {"prompt": "q6", "chosen": [{"role": "assistant", "content": "r=3"}], "rejected": "r=4"},
    ]  # fmt: skip
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    engine = StubEngine()
    status, report = run_eval(engine, data, "pairs", tmp_path / "out")
    m = report["metrics"]
    assert (m["count"], m["correct"], m["accuracy"]) == (5, 2, 2 / 5)
    assert m["mean_margin"] == pytest.approx((1 - 0.25 + 1 + 0 - 1) / 5)
    assert [e["line"] for e in report["errors"]] == [5] and status == 1
    texts = [t for call in engine.calls for t in call]
    assert texts[2] == "system: be brief\nuser: q2\nassistant: r=0.25"
    assert texts[6] == "user: hi\nassistant: hello r=0.5\nuser: more?\nassistant: r=0.7"
    assert texts[8] == "user: q6\nassistant: r=3"


def test_a_row_the_engine_refuses_fails_alone(tmp_path):
    rows = [v1("alpacaeval-easy", 1, 0), v1("alpacaeval-easy", 0, 1),
            {**v1("alpacaeval-easy", 1, 0), "chosen": "x" * 50 + " r=1"}]  # fmt: skip
    data = write_jsonl(tmp_path / "rb1.jsonl", rows)
    engine = StubEngine(refuse="bad r=1")
    status, report = run_eval(engine, data, "rewardbench", tmp_path / "a", plots=False)
    assert [e["line"] for e in report["errors"]] == [2]
    assert "the model cannot score it: sequence refused" in report["errors"][0]["error"]
    assert report["plots"] == [] and report["plots_skipped"] == "--no-plots"
    short = StubEngine(max_model_len=60)
    _, report = run_eval(short, data, "rewardbench", tmp_path / "b", plots=False)
    assert [e["line"] for e in report["errors"]] == [3]
    assert "the chosen conversation is 100 tokens long, more than the model's maximum length " \
        "of 60" in report["errors"][0]["error"]  # fmt: skip


def test_progress_bar_on_stderr(tmp_path, capsys):
    data = write_jsonl(tmp_path / "rb1.jsonl", V1_ROWS[:6])
    run_eval(StubEngine(), data, "rewardbench", tmp_path / "out", plots=False, progress=True)
    err = capsys.readouterr().err
    assert "evaluating" in err and "tok" in err
    assert "evaluated 6 of 6 rows (rewardbench)" in err
