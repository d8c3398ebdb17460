"""The accuracy report's figures against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from engine.build.report import (
    accuracy_report,
    average_ranks,
    pairwise_agreement,
    pearson,
    spearman,
)


def test_correlations():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pearson(a, 2 * a + 1) == pytest.approx(1.0)
    assert pearson(a, -a) == pytest.approx(-1.0)
    # ranks of [10, 20, 20, 5] are [2, 3.5, 3.5, 1]
    assert average_ranks(torch.tensor([10.0, 20.0, 20.0, 5.0])).tolist() == [2.0, 3.5, 3.5, 1.0]
    # monotonic but not linear: spearman 1, pearson below 1
    b = a**3
    assert spearman(a, b) == pytest.approx(1.0) and pearson(a, b) < 0.99
    assert math.isnan(pearson(torch.ones(3), a[:3]))


def test_pairwise_agreement_counts_pairs_within_groups():
    ref = torch.tensor([[1.0], [2.0], [3.0], [5.0], [5.0]])
    # group 1 (rows 0-2): pairs (0,1) agree, (0,2) agree, (1,2) flipped; group 2: a tie in ref
    cand = torch.tensor([[1.0], [2.5], [2.4], [9.0], [1.0]])
    assert pairwise_agreement(ref, cand, [3, 2]) == (2, 3)
    # a tie in the candidate where the reference orders them is a disagreement
    assert pairwise_agreement(torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [3.0]]), [2]) == (0, 1)
    # multi-attribute rewards: each column's ordering counts
    two = torch.tensor([[1.0, 5.0], [2.0, 4.0]])
    assert pairwise_agreement(two, torch.tensor([[1.0, 4.0], [2.0, 5.0]]), [2]) == (1, 2)


def test_report_figures():
    ref = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    cand = ref + torch.tensor([[0.1], [-0.1], [0.0], [0.2]])
    r = accuracy_report(ref, cand, [2, 2], "int8 W8A8", "test")
    scale = float(ref.double().std())  # sample standard deviation: 1.29099
    assert r.reward_scale == pytest.approx(scale)
    assert r.max_abs_diff == pytest.approx(0.2 / scale) and r.mean_abs_diff == pytest.approx(0.1 / scale)
    assert (r.pairs, r.pairwise_agreement) == (2, 1.0) and r.prompts == 2 and r.conversations == 4
    assert not r.agreement_is_low and "100.00% of 2 response pairs" in r.summary()
    low = accuracy_report(ref, -ref, [4], "x", "t")
    assert low.pairwise_agreement == 0.0 and low.agreement_is_low
    assert "Warning" in low.markdown()
    assert accuracy_report(ref[:1], ref[:1], [1], "x", "t").to_json()["pairwise_agreement"] is None
