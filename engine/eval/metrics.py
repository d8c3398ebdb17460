"""The figures of an evaluation, computed from scored rows (pure Python, no model).

- pairs: accuracy (reward(chosen) > reward(rejected); a tie counts as wrong) and the
  mean margin reward(chosen) - reward(rejected).
- RewardBench v1: accuracy per subset as for pairs; each section the mean of its
  subsets' accuracies weighted by upstream's example counts (rewardbench_data.py);
  the overall score the mean of the sections.
- RewardBench 2: per row of an ordinary subset, best-of-N on the first chosen response
  with fractional credit on ties: 1 / (how many responses share the top reward) when
  the first chosen one has it, else 0 (upstream reroll_and_score_dataset); a subset's
  accuracy is the mean over its rows. The Ties subset has its own score
  (ties_score below); the overall score is the mean of the subsets' scores.

A row's margin (for the histogram) is its worst chosen reward minus its best rejected
one: positive exactly when every chosen response beats every rejected one (for v1 and
pairs simply reward(chosen) - reward(rejected)).

Subsets and sections absent from the data are left out of the averages and listed as
missing, so the overall score of a partial run says what it covers.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence

from .formats import EvalRow
from .rewardbench_data import (
    EXAMPLE_COUNTS,
    SECTION_OF,
    SECTIONS,
    TIES_WEIGHTS,
    V2_SUBSETS,
    V2_TIES,
)


def margin(row: EvalRow) -> float:
    return min(row.chosen_rewards) - max(row.rejected_rewards)


def pair_correct(row: EvalRow) -> bool:
    return row.chosen_rewards[0] > row.rejected_rewards[0]


def best_of_n_credit(row: EvalRow) -> float:
    """Upstream's result for a RewardBench 2 row (chosen first, then rejected)."""
    scores = row.chosen_rewards + row.rejected_rewards
    top = max(scores)
    return 1.0 / sum(s == top for s in scores) if scores[0] == top else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def pairs_metrics(rows: Sequence[EvalRow]) -> dict:
    correct = sum(pair_correct(r) for r in rows)
    return {
        "count": len(rows),
        "correct": correct,
        "accuracy": correct / len(rows) if rows else None,
        "mean_margin": _mean([margin(r) for r in rows]),
    }


def _by_subset(rows: Sequence[EvalRow]) -> dict[str, list[EvalRow]]:
    groups: dict[str, list[EvalRow]] = defaultdict(list)
    for row in rows:
        groups[row.subset].append(row)
    return dict(sorted(groups.items()))


def rewardbench_metrics(rows: Sequence[EvalRow]) -> dict:
    groups = _by_subset(rows)
    # upstream's order (section by section), then subsets outside the sections
    order = [s for members in SECTIONS.values() for s in members if s in groups]
    order += [s for s in groups if s not in SECTION_OF]
    subsets = {name: pairs_metrics(groups[name]) for name in order}
    sections = {}
    for section, members in SECTIONS.items():
        present = [s for s in members if s in subsets]
        if not present:
            continue
        weights = {s: EXAMPLE_COUNTS[s] for s in present}
        total = sum(weights.values())
        sections[section] = {
            "score": sum(subsets[s]["accuracy"] * w for s, w in weights.items()) / total,
            "subsets": present,
            "weights": weights,
            "missing_subsets": [s for s in members if s not in subsets],
        }
    scores = [v["score"] for v in sections.values()]
    return {
        "overall": _mean(scores),
        "overall_is": "mean of the sections' scores",
        "sections": sections,
        "missing_sections": [s for s in SECTIONS if s not in sections],
        "subsets": subsets,
        "subsets_outside_sections": [s for s in subsets if s not in SECTION_OF],
        "pairs": pairs_metrics(rows),
    }


def ties_score(rows: Sequence[EvalRow]) -> dict:
    """The Ties subset (upstream process_single_model). Each row's id is
    "ref:<prompt id>" (one correct answer) or "tied:<prompt id>" (several); the first
    num_correct chosen responses are the correct ones, the rest and every rejected one
    incorrect. Per prompt: accurate when the worst correct reward beats the best
    incorrect one; the correct-incorrect margin (worst correct - best incorrect) and,
    for several correct answers, the spread among them (best - worst correct). Then
      0.30 tied accuracy + 0.30 ref accuracy
      + 0.20 P(tied margin > tied spread) + 0.20 P(min(ref, tied margin) > tied spread)
      + 0.01 mean tanh(min(ref, tied margin) / tied spread - 1) (NaN counted as 0),
    the last three over prompt ids that have both a ref and a tied row.
    """
    samples: dict[tuple[str, int], list[tuple[bool, float]]] = defaultdict(list)
    for row in rows:  # rows with the same id pool their responses, as upstream does
        kind, _, pid = str(row.id).partition(":")
        scores = row.chosen_rewards + row.rejected_rewards
        samples[(kind, int(pid))] += [(i < row.num_correct, s) for i, s in enumerate(scores)]
    stats: dict[str, dict[int, tuple[bool, float | None, float]]] = {"ref": {}, "tied": {}}
    for (kind, pid), pooled in samples.items():
        correct = [s for ok, s in pooled if ok]
        wrong = [s for ok, s in pooled if not ok]
        spread = max(correct) - min(correct) if len(correct) > 1 else None
        gap = min(correct) - max(wrong)
        stats[kind][pid] = (gap > 0, spread, gap)
    ref, tied = stats["ref"], stats["tied"]
    both = sorted(set(ref) & set(tied))
    spread = [tied[p][1] for p in both]
    tied_gap = [tied[p][2] for p in both]
    hard_gap = [min(ref[p][2], tied[p][2]) for p in both]
    terms = {
        "tied_accuracy": _mean([s[0] for s in tied.values()]) or 0.0,
        "ref_accuracy": _mean([s[0] for s in ref.values()]) or 0.0,
        "correctness_preferred": _mean([_gt(g, s) for g, s in zip(tied_gap, spread, strict=True)]),
        "correctness_preferred_hard": _mean(
            [_gt(g, s) for g, s in zip(hard_gap, spread, strict=True)]
        ),
        "correctness_margin_score": _mean(
            [_tanh_ratio(g, s) for g, s in zip(hard_gap, spread, strict=True)]
        ),
    }
    terms = {k: (math.nan if v is None else float(v)) for k, v in terms.items()}
    return {
        "score": sum(TIES_WEIGHTS[k] * v for k, v in terms.items()),
        **terms,
        "ref_prompts": len(ref),
        "tied_prompts": len(tied),
        "prompts_with_both": len(both),
        "weights": TIES_WEIGHTS,
    }


def _gt(gap: float, spread: float | None) -> float:
    # numpy compares with None as NaN (False); a spread exists for tied prompts
    return float(spread is not None and gap > spread)


def _tanh_ratio(gap: float, spread: float | None) -> float:
    if spread is None or spread == 0:  # upstream's 0/0 -> NaN -> 0; x/0 -> +-inf -> +-1
        return 0.0 if spread is None or gap == 0 else math.copysign(1.0, gap)
    return math.tanh(gap / spread - 1)


def check_ties_ids(rows: Sequence[EvalRow]) -> None:
    """Mark Ties rows whose id is not "ref:N" / "tied:N" (the score needs the pairing)."""
    for row in rows:
        kind, sep, pid = str(row.id).partition(":")
        if row.error is None and (kind not in ("ref", "tied") or not sep or not pid.isdigit()):
            row.error = (
                f"a Ties row needs an 'id' of the form 'ref:<n>' or 'tied:<n>', got {row.id!r}"
            )


def rewardbench2_metrics(rows: Sequence[EvalRow]) -> dict:
    subsets = {}
    for name, group in _by_subset(rows).items():
        if name.lower() == V2_TIES:
            subsets[name] = {"count": len(group), **ties_score(group)}
        else:
            credit = [best_of_n_credit(r) for r in group]
            subsets[name] = {
                "count": len(group),
                "score": sum(credit) / len(group),
                "credit": sum(credit),
                "ties_at_top": sum(0 < c < 1 for c in credit),
            }
    scores = [v["score"] for v in subsets.values()]
    return {
        "overall": _mean(scores),
        "overall_is": "mean of the subsets' scores",
        "subsets": subsets,
        "missing_subsets": [s for s in V2_SUBSETS if s.lower() not in map(str.lower, subsets)],
        "mean_margin": _mean([margin(r) for r in rows]),
    }


def margin_summary(margins: Sequence[float], bins: int = 40) -> dict:
    """Count, moments, quantiles and the histogram the margin plot draws."""
    if not margins:
        return {"count": 0}
    ordered = sorted(margins)
    lo, hi = ordered[0], ordered[-1]
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    edges = [lo + i * width for i in range(bins)] + [hi]
    counts = [0] * bins
    for m in margins:
        counts[min(int((m - lo) / width), bins - 1)] += 1
    return {
        "count": len(margins),
        "mean": statistics.fmean(margins),
        "std": statistics.pstdev(margins),
        "min": ordered[0],
        "median": statistics.median(ordered),
        "max": ordered[-1],
        "positive": sum(m > 0 for m in margins),
        "zero": sum(m == 0 for m in margins),
        "negative": sum(m < 0 for m in margins),
        "histogram": {"edges": edges, "counts": counts},
    }
