"""Choosing the before/after scene of a site: the order of the rules, the limits, the reasons."""

from __future__ import annotations

import datetime as dt

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import masks
from detector.batch.pairing import (
    Candidates,
    PairingRule,
    choose_pair,
    days_outside,
    no_pair_reason,
    ordinal,
    season_gap,
    site_shares,
)

RULE = PairingRule(before=("2017-01-01", "2017-06-30"), after=("2018-07-01", "2018-12-31"))


def table(*rows: tuple[str, float, float]) -> Candidates:
    """Candidates from (date, valid, cloud) rows."""
    return Candidates(tuple(r[0] for r in rows), np.array([ordinal(r[0]) for r in rows]),
                      np.array([r[1] for r in rows], float), np.array([r[2] for r in rows], float))


def test_cloud_comes_before_season_and_season_before_the_middle() -> None:
    before = table(("2017-03-02", 1.0, 0.0), ("2017-06-20", 1.0, 0.3), ("2017-06-25", 1.0, 0.0))
    after = table(("2018-07-10", 1.0, 0.0))
    pair = choose_pair(before, after, RULE)
    assert pair is not None
    assert (pair.before, pair.after) == (2, 0)  # clear and nearest in season (15 days)
    assert "cloud 0% / 0%" in pair.reason and "15 days apart" in pair.reason
    cloudy_near = table(("2017-03-02", 1.0, 0.0), ("2017-06-25", 1.0, 0.2))
    assert choose_pair(cloudy_near, after, RULE).before == 0  # 20 % cloud loses to 127 days of season


def test_limits_exclude_scenes_and_no_pair_says_why() -> None:
    after = table(("2018-07-10", 1.0, 0.0))
    assert choose_pair(table(("2017-03-02", 0.9, 0.0)), after, RULE) is None  # 90 % of the site has data
    assert choose_pair(table(("2017-03-02", 1.0, 0.6)), after, RULE) is None  # over max_cloud
    assert choose_pair(table(("2018-08-02", 1.0, 0.0)), after, RULE) is None  # not before the after date
    reason = no_pair_reason(table(("2017-03-02", 1.0, 0.6)), after, RULE)
    assert "max_cloud" in reason and "1 before and 1 after" in reason
    assert "no after scene" in no_pair_reason(table(("2017-03-02", 1.0, 0.0)), table(), RULE)


def test_inside_the_windows_beats_the_tolerance() -> None:
    rule = PairingRule(before=RULE.before, after=RULE.after, tolerance_days=30)
    before = table(("2016-12-20", 1.0, 0.0), ("2017-01-05", 1.0, 0.0))
    pair = choose_pair(before, table(("2018-12-20", 1.0, 0.0)), rule)
    assert pair.before == 1 and "inside the date windows" in pair.reason
    pair = choose_pair(table(("2016-12-20", 1.0, 0.0)), table(("2018-12-20", 1.0, 0.0)), rule)
    assert "12 days outside" in pair.reason


def test_unknown_cloud_is_usable_but_loses_to_a_known_clear_scene() -> None:
    pair = choose_pair(table(("2017-03-02", 1.0, np.nan)), table(("2018-07-10", 1.0, 0.01)), RULE)
    assert pair is not None and "cloud unknown / 1%" in pair.reason
    before = table(("2017-06-25", 1.0, np.nan), ("2017-03-02", 1.0, 0.06))
    assert choose_pair(before, table(("2018-07-10", 1.0, 0.0)), RULE).before == 1  # 6 % known beats unknown


def test_season_gap_wraps_round_the_year() -> None:
    days = np.array([ordinal("2017-12-31"), ordinal("2017-07-01")])
    assert season_gap(days, np.array([ordinal("2019-01-01"), ordinal("2018-07-01")])).tolist() == [1, 0]
    assert days_outside(np.array([ordinal("2016-12-30"), ordinal("2017-03-01")]), RULE.before).tolist() == [2, 0]


def test_mask_classes_and_site_shares() -> None:
    scl = np.array([[0, 4, 9], [8, 4, 3]])
    valid, cloudy = masks.decode(scl, "scl")
    assert valid.tolist() == [[False, True, True], [True, True, True]]
    inside = np.ones_like(valid)
    share, cloud = site_shares(valid, cloudy, inside)
    assert share == 5 / 6 and cloud == 3 / 5
    assert np.isnan(site_shares(valid, None, inside)[1])
    _, plain = masks.decode(np.array([[0, 255]]), "cloud")
    assert plain.tolist() == [[False, True]]


dates = st.dates(dt.date(2016, 6, 1), dt.date(2019, 6, 1)).map(lambda d: d.isoformat())
rows = st.lists(st.tuples(dates, st.floats(0.9, 1.0), st.floats(0, 1)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(rows, rows)
def test_chosen_pair_is_usable_and_none_is_clearly_less_cloudy(before_rows: list, after_rows: list) -> None:
    before, after = table(*before_rows), table(*after_rows)
    rule = PairingRule(before=RULE.before, after=RULE.after, tolerance_days=400)
    pair = choose_pair(before, after, rule)
    usable = [(i, j) for i in range(len(before.ids)) for j in range(len(after.ids))
              if before.valid[i] >= rule.min_valid and after.valid[j] >= rule.min_valid
              and max(before.cloud[i], after.cloud[j]) <= rule.max_cloud and before.day[i] < after.day[j]]
    assert (pair is None) == (not usable)
    if pair is not None:
        assert (pair.before, pair.after) in usable
        worst = max(before.cloud[pair.before], after.cloud[pair.after])
        best = min(max(before.cloud[i], after.cloud[j]) for i, j in usable)
        assert np.ceil(round(worst / 0.05, 6)) == np.ceil(round(best / 0.05, 6))


def test_mask_kinds_decode_their_own_bits() -> None:
    qa = np.array([1, 0, 1 << 3, 1 << 4, 1 << 5, 1 << 6, (1 << 1) | (1 << 6)])
    valid, obscured = masks.decode(qa, "qa_pixel")
    assert valid.tolist() == [False, True, True, True, True, True, True]
    assert obscured.tolist() == [False, False, True, True, True, False, True]  # bit 6 is clear sky
    _, snow = masks.decode(np.array([11, 4, 5]), "scl")
    assert snow.tolist() == [True, False, False]
