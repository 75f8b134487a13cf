"""Per-zone histograms, site scores, ranks and change components."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detector.metrics import average_precision, tie_precision
from detector.scoring import BINS, ScoreRule, change_components, flags, rank, site_table, zone_histograms


def test_histograms_count_every_pixel_of_each_zone() -> None:
    score = np.array([[0.0, 0.5, 0.99], [np.nan, 0.25, 1.0]], dtype=np.float32)
    labels = np.array([[1, 1, 2], [1, 0, 2]])
    hist = zone_histograms(score, labels, 2)
    assert hist.shape == (2, BINS + 1)
    assert hist[0].sum() == 3 and hist[0, BINS] == 1 and hist[0, 0] == 1 and hist[0, BINS // 2] == 1
    assert hist[1].sum() == 2 and hist[1, BINS - 2] == 1 and hist[1, BINS - 1] == 1


@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_histograms_match_a_pixel_by_pixel_count(seed: int, zones: int) -> None:
    rng = np.random.default_rng(seed)
    score = rng.uniform(-0.1, 1.1, size=(2, 7, 9)).astype(np.float32)
    score[rng.random(score.shape) < 0.2] = np.nan
    labels = rng.integers(0, zones + 1, size=score.shape)
    expected = np.zeros((zones, BINS + 1), np.int64)
    for value, label in zip(score.ravel(), labels.ravel(), strict=True):
        if label:
            expected[label - 1, BINS if np.isnan(value) else min(max(int(value * BINS), 0), BINS - 1)] += 1
    assert np.array_equal(zone_histograms(score, labels, zones), expected)


def test_site_table_scores_flags_and_reports_coverage() -> None:
    rng = np.random.default_rng(0)
    busy = np.r_[rng.uniform(0, 0.2, 800), rng.uniform(0.8, 1.0, 200)]
    quiet = rng.uniform(0, 0.2, 1000)
    score = np.r_[busy, quiet, np.full(10, np.nan)].reshape(1, -1).astype(np.float32)
    labels = np.r_[np.full(1000, 1), np.full(1000, 2), np.full(10, 3)].reshape(1, -1)
    hist = zone_histograms(score, labels, 4)
    table = site_table(hist, np.array([1000, 1000, 10, 50]), np.full(4, 100.0), rule=ScoreRule())
    assert table["score"][0] >= 0.8 and table["score"][1] <= 0.2
    assert table["flagged"].tolist() == [True, False, False, False]
    assert table["status"].tolist() == ["ok", "ok", "no_coverage", "no_coverage"]
    assert table["changed_area_m2"][0] == 200 * 100.0
    assert table["rank"].tolist()[:2] == [1, 2] and table["rank"].isna().tolist() == [False, False, True, True]


def test_partial_coverage_is_not_flagged() -> None:
    score = np.full((1, 100), 0.9, dtype=np.float32)
    hist = zone_histograms(score, np.ones((1, 100), int), 1)
    table = site_table(hist, np.array([400]), np.array([1.0]), rule=ScoreRule())
    assert table["status"][0] == "partial_coverage" and not table["flagged"][0]
    assert table["valid_fraction"][0] == 0.25


def test_rank_breaks_ties_by_changed_pixels() -> None:
    assert rank(np.array([0.5, 0.9, 0.5, np.nan]), np.array([10, 1, 20, 0])).tolist() == [3, 1, 2, None]


def test_components_split_at_zone_borders_and_carry_mean_score() -> None:
    score = np.zeros((6, 6), dtype=np.float32)
    score[1:4, 1:5] = 0.8
    score[1, 1] = 1.0
    labels = np.ones((6, 6), int)
    labels[:, 3:] = 2
    components, zone, mean = change_components(score, labels, pixel_threshold=0.5)
    assert components.max() == 2 and sorted(zone.tolist()) == [0, 1]
    left = zone.tolist().index(0)
    assert np.isclose(mean[left], (0.8 * 5 + 1.0) / 6)


def test_average_precision_on_a_hand_made_case() -> None:
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, np.nan])
    truth = np.array([True, False, True, False, False, True])
    # ranked: T F T F F -> precision at the two hits 1/1 and 2/3, recall steps 1/2 each
    assert np.isclose(average_precision(score, truth), 0.5 * 1.0 + 0.5 * 2 / 3)
    assert np.isclose(average_precision(np.array([0.5, 0.5]), np.array([True, False])), 0.5)
    assert np.isnan(average_precision(score, np.zeros(6, bool)))


def test_one_flag_rule_needs_data_and_the_threshold() -> None:
    score = np.array([0.9, 0.9, np.nan, 0.4, 0.5])
    status = np.array(["ok", "partial_coverage", "no_coverage", "ok", "ok"])
    assert flags(score, status, 0.5).tolist() == [True, False, False, False, True]
    table = site_table(np.array([[0] * (BINS - 1) + [10, 0]]), np.array([10]), np.array([1.0]), rule=ScoreRule())
    assert table["flagged"].tolist() == flags(table["score"], table["status"], 0.5).tolist() == [True]


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=40))
def test_precision_at_ties_counts_tied_scores_together(pairs: list) -> None:
    score = np.array([s / 5 for s, _ in pairs])
    truth = np.array([t for _, t in pairs])
    at, precision, hits = tie_precision(score, truth)
    assert at.tolist() == sorted(set(score.tolist()), reverse=True)
    for t, p, h in zip(at, precision, hits, strict=True):
        assert p == pytest.approx(truth[score >= t].mean()) and h == truth[score >= t].sum()
