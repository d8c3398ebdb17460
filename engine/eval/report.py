"""The evaluation report: report.json (every figure), report.md (the same, readable) and
scores.jsonl (each row's rewards or error), written into the report directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .formats import EvalRow
from .metrics import best_of_n_credit, margin, pair_correct
from .rewardbench_data import SECTION_OF, V2_TIES

MAX_ERRORS_IN_MARKDOWN = 20


def row_record(row: EvalRow, fmt: str) -> dict[str, Any]:
    """One line of scores.jsonl."""
    record: dict[str, Any] = {"line": row.line}
    if row.id is not None:
        record["id"] = row.id
    if row.subset is not None:
        record["subset"] = row.subset
    if row.error is not None:
        record["error"] = row.error
        return record
    record["chosen_rewards"] = row.chosen_rewards
    record["rejected_rewards"] = row.rejected_rewards
    record["margin"] = margin(row)
    if fmt == "rewardbench2":
        if str(row.subset).lower() != V2_TIES:
            record["credit"] = best_of_n_credit(row)
    else:
        record["correct"] = pair_correct(row)
    return record


def _finite(value):
    """JSON has no NaN or infinity: those become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write_report(report: dict, rows: list[EvalRow], out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(
        json.dumps(_finite(report), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out_dir / "report.md").write_text(render_markdown(report), encoding="utf-8")
    with open(out_dir / "scores.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(_finite(row_record(row, report["format"])), ensure_ascii=False))
            f.write("\n")


def _num(value, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(v) for v in row) + " |" for row in rows]
    return lines + [""]


def render_markdown(report: dict) -> str:
    m, fmt = report["metrics"], report["format"]
    rows = report["rows"]
    out = [
        f"# Reward model evaluation ({fmt})",
        "",
        f"- model: `{report['model']}`",
        f"- data: `{report['data']}`",
        f"- date: {report['date']}",
        f"- options: {', '.join(f'{k}={v}' for k, v in report['options'].items())}",
        f"- rows: {rows['total']} read, {rows['scored']} scored, {rows['errors']} with errors"
        + (
            " (interrupted: the figures cover the rows scored before)"
            if report["interrupted"]
            else ""
        ),
        "",
        "## Score",
        "",
    ]
    if fmt == "pairs":
        out += [f"**accuracy {_num(m['accuracy'])}** ({m['correct']} of {m['count']} pairs; "
                f"a tie counts as wrong), mean margin {_num(m['mean_margin'])}", ""]  # fmt: skip
    else:
        out += [f"**overall {_num(m['overall'])}** ({m['overall_is']})", ""]
    if fmt == "rewardbench":
        out += _table(
            ["section", "score", "subsets (weight)"],
            [[name, s["score"], ", ".join(f"{k} ({w})" for k, w in s["weights"].items())]
             for name, s in m["sections"].items()],
        )  # fmt: skip
        if m["missing_sections"]:
            out += [f"Missing sections (no rows): {', '.join(m['missing_sections'])}", ""]
        out += ["## Subsets", ""]
        out += _table(
            ["subset", "section", "rows", "correct", "accuracy", "mean margin"],
            [[name, SECTION_OF.get(name, "(none)"), s["count"], s["correct"], s["accuracy"],
              s["mean_margin"]] for name, s in m["subsets"].items()],
        )  # fmt: skip
    if fmt == "rewardbench2":
        out += ["## Subsets", ""]
        out += _table(
            ["subset", "rows", "score", "detail"],
            [[name, s["count"], s["score"], _v2_detail(s)] for name, s in m["subsets"].items()],
        )
        if m["missing_subsets"]:
            out += [f"Missing subsets (no rows): {', '.join(m['missing_subsets'])}", ""]
    g = report["margins"]
    out += ["## Margins: reward(chosen) - reward(rejected)", ""]
    if g["count"]:
        out += _table(
            ["rows", "mean", "std", "min", "median", "max", "> 0", "= 0", "< 0"],
            [[g["count"], g["mean"], g["std"], g["min"], g["median"], g["max"], g["positive"],
              g["zero"], g["negative"]]],
        )  # fmt: skip
        if fmt == "rewardbench2":
            out += ["(a row's margin: its worst chosen reward minus its best rejected one)", ""]
    e = report["engine"]
    out += ["## Engine", ""]
    out += _table(
        ["conversations", "tokens", "seconds", "tokens/s", "prefix-cache hit rate",
         "tokens computed"],
        [[e["conversations"], e["tokens"], e["seconds"], e["tokens_per_second"],
          e.get("prefix_cache_hit_rate"), e.get("tokens_computed")]],
    )  # fmt: skip
    if report["errors"]:
        shown = report["errors"][:MAX_ERRORS_IN_MARKDOWN]
        out += [f"## Errors ({len(report['errors'])} rows; every one is in report.json)", ""]
        out += _table(["line", "error"], [[x["line"], x["error"]] for x in shown])
    out += ["## Plots", ""]
    if report["plots"]:
        out += [f"![{Path(p).stem}]({p})" for p in report["plots"]] + [""]
    else:
        out += [f"Not drawn: {report['plots_skipped']}", ""]
    return "\n".join(out)


def _v2_detail(s: dict) -> str:
    if "tied_accuracy" in s:
        keys = ("tied_accuracy", "ref_accuracy", "correctness_preferred",
                "correctness_preferred_hard", "correctness_margin_score")  # fmt: skip
        return ", ".join(f"{k} {_num(s[k])}" for k in keys)
    return f"credit {_num(s['credit'], 2)}, rows with a tie at the top {s['ties_at_top']}"
