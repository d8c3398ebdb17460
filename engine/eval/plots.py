"""PNG plots of an evaluation report (matplotlib, an optional dependency: the `eval`
extra). Drawn with matplotlib's object API on the Agg canvas, so no display and no
global pyplot state are involved. Every value drawn is also in report.json.

- accuracy.png: the score of each section and subset (RewardBench), each subset
  (RewardBench 2) or the accuracy (pairs), with the overall score and chance level;
- margins.png: the histogram of reward(chosen) - reward(rejected) per row, the bins
  of report.json's margins.histogram.
"""

from __future__ import annotations

from pathlib import Path

INSTALL_HINT = "pip install 'reward-engine[eval]'"


def write_plots(report: dict, out_dir: Path) -> tuple[list[str], str | None]:
    """Files written (names inside out_dir), and why plots were skipped (or None)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return [], f"matplotlib is not installed ({INSTALL_HINT})"
    files = []
    bars = _bars(report)
    if bars:
        fig = Figure(figsize=(8, 0.8 + 0.32 * len(bars)), layout="constrained")
        ax = fig.subplots()
        labels = [label for label, _, _ in bars][::-1]
        values = [value for _, value, _ in bars][::-1]
        colors = [color for _, _, color in bars][::-1]
        ax.barh(labels, values, color=colors)
        for y, v in enumerate(values):
            ax.text(min(v, 1.0) + 0.01, y, f"{v:.3f}", va="center", fontsize=8)
        chance = report.get("chance")
        if chance is not None:
            ax.axvline(chance, color="grey", linestyle=":", label=f"chance ({chance:g})")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlim(0, 1.1)
        ax.set_xlabel("score")
        ax.set_title(f"{report['format']}: {report['data']}", fontsize=9)
        fig.savefig(out_dir / "accuracy.png", dpi=110)
        files.append("accuracy.png")
    hist = report["margins"].get("histogram")
    if hist:
        fig = Figure(figsize=(8, 4), layout="constrained")
        ax = fig.subplots()
        ax.stairs(hist["counts"], hist["edges"], fill=True, alpha=0.7)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel("reward(chosen) - reward(rejected)")
        ax.set_ylabel("rows")
        m = report["margins"]
        ax.set_title(
            f"margins: {m['positive']} > 0, {m['zero']} = 0, {m['negative']} < 0; "
            f"mean {m['mean']:.4g}",
            fontsize=9,
        )
        fig.savefig(out_dir / "margins.png", dpi=110)
        files.append("margins.png")
    return files, None


def _bars(report: dict) -> list[tuple[str, float, str]]:
    """(label, value, color) from top to bottom; NaN scores are left out."""
    m = report["metrics"]
    bars = []
    if m.get("overall") is not None:
        bars.append(("overall", m["overall"], "black"))
    for name, section in m.get("sections", {}).items():
        bars.append((f"[{name}]", section["score"], "tab:blue"))
    for name, subset in m.get("subsets", {}).items():
        value = subset.get("accuracy", subset.get("score"))
        if value is not None and value == value:
            bars.append((name, value, "tab:orange"))
    if report["format"] == "pairs" and m.get("accuracy") is not None:
        bars.append(("accuracy", m["accuracy"], "tab:orange"))
    return bars
