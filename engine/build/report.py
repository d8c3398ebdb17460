"""The accuracy report of a quantized build: the built model against the unquantized
one on the same conversations.

- pearson, spearman: correlation of the two sets of rewards (every output of every
  conversation; spearman on average ranks, so ties are fair);
- max / mean |diff| relative to the reward scale: the scale is the standard deviation
  of the unquantized rewards, so the figures read as fractions of the spread that
  separates good responses from bad ones;
- pairwise agreement: for every pair of responses to the same prompt (per output
  column for multi-attribute heads) that the unquantized model does not tie, whether
  the built model orders them the same way (a tie counts as disagreement). This is
  what best-of-N and RLHF advantages depend on.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

AGREEMENT_WARNING = 0.99


@dataclass(frozen=True, slots=True)
class AccuracyReport:
    conversations: int
    prompts: int
    pairs: int
    pearson: float
    spearman: float
    reward_scale: float
    max_abs_diff: float  # relative to reward_scale
    mean_abs_diff: float
    pairwise_agreement: float  # NaN when there is no pair
    quantization: str
    source: str

    @property
    def agreement_is_low(self) -> bool:
        return self.pairs > 0 and self.pairwise_agreement < AGREEMENT_WARNING

    def to_json(self) -> dict:
        out = asdict(self)
        if math.isnan(out["pairwise_agreement"]):
            out["pairwise_agreement"] = None
        return out

    def summary(self) -> str:
        agree = (f"{self.pairwise_agreement:.2%} of {self.pairs} response pairs"
                 if self.pairs else "no response pairs")  # fmt: skip
        return (
            f"{self.quantization} vs unquantized on {self.conversations} conversations "
            f"({self.source}): pairwise agreement {agree}; pearson {self.pearson:.5f}, "
            f"spearman {self.spearman:.5f}; |diff| max {self.max_abs_diff:.4f}, mean "
            f"{self.mean_abs_diff:.4f} of the reward scale ({self.reward_scale:.4g})"
        )

    def markdown(self) -> str:
        rows = [
            ("conversations", self.conversations),
            ("prompts (groups)", self.prompts),
            ("response pairs compared", self.pairs),
            ("pairwise preference agreement", _pct(self.pairwise_agreement)),
            ("pearson", f"{self.pearson:.6f}"),
            ("spearman", f"{self.spearman:.6f}"),
            ("reward scale (std of unquantized rewards)", f"{self.reward_scale:.6g}"),
            ("max abs diff / scale", f"{self.max_abs_diff:.6f}"),
            ("mean abs diff / scale", f"{self.mean_abs_diff:.6f}"),
        ]
        lines = [f"# Accuracy of the {self.quantization} build", "",
                 f"Calibration set: {self.source}.", "", "| figure | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {v} |" for k, v in rows]
        if self.agreement_is_low:
            lines += ["", f"**Warning**: agreement below {AGREEMENT_WARNING:.0%}."]
        return "\n".join(lines) + "\n"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.4%}"


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum()) / denom if denom > 0 else float("nan")


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks, ties sharing the mean of their positions."""
    x = x.double().flatten()
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    sorted_x = x[order]
    i, n = 0, len(x)
    while i < n:
        j = i
        while j + 1 < n and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return pearson(average_ranks(a), average_ranks(b))


def pairwise_agreement(reference, candidate, groups: list[int]) -> tuple[int, int]:
    """(agreeing pairs, pairs compared) over the pairs within each group; groups are
    the sizes of consecutive runs of rows."""
    agree = total = 0
    start = 0
    for size in groups:
        ref, cand = reference[start : start + size], candidate[start : start + size]
        for i in range(size):
            for j in range(i + 1, size):
                d_ref = ref[i] - ref[j]
                d_cand = cand[i] - cand[j]
                for col in range(ref.shape[1]):
                    if d_ref[col] == 0:
                        continue
                    total += 1
                    agree += int(bool(torch.sign(d_ref[col]) == torch.sign(d_cand[col])))
        start += size
    return agree, total


def accuracy_report(
    reference: torch.Tensor, candidate: torch.Tensor, groups: list[int], quantization: str,
    source: str,
) -> AccuracyReport:  # fmt: skip
    """reference and candidate: [conversations, num_labels] rewards, rows in group order."""
    ref, cand = reference.double(), candidate.double()
    scale = float(ref.flatten().std()) if ref.numel() > 1 else 0.0
    unit = scale if scale > 0 else 1.0
    diff = (ref - cand).abs() / unit
    agree, pairs = pairwise_agreement(ref, cand, groups)
    return AccuracyReport(
        conversations=ref.shape[0],
        prompts=len(groups),
        pairs=pairs,
        pearson=pearson(ref, cand),
        spearman=spearman(ref, cand),
        reward_scale=scale,
        max_abs_diff=float(diff.max()) if diff.numel() else 0.0,
        mean_abs_diff=float(diff.mean()) if diff.numel() else 0.0,
        pairwise_agreement=agree / pairs if pairs else float("nan"),
        quantization=quantization,
        source=source,
    )


def write_report(report: AccuracyReport, directory: Path) -> list[str]:
    """accuracy.json and accuracy.md in ``directory``; returns the file names."""
    (directory / "accuracy.json").write_text(json.dumps(report.to_json(), indent=2) + "\n")
    (directory / "accuracy.md").write_text(report.markdown())
    return ["accuracy.json", "accuracy.md"]
