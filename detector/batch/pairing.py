"""Choosing the before and after scene of a site: pure arithmetic on candidate tables.

A candidate is a scene whose footprint covers the site and whose date lies in
its window (give or take ``tolerance_days``).  Its ``valid`` share is the part
of the site with data, its ``cloud`` share the part of that under cloud (NaN:
the scene says nothing).  Pairs are ranked, best first, by:

1. usable at all: ``valid >= min_valid`` and ``cloud <= max_cloud`` on both dates, before earlier than after;
2. cloud, in steps of 5 %: the cloudier of the two dates (unknown cloud counts as ``max_cloud``);
3. days outside the date windows (0 inside);
4. season, in steps of 30 days: the gap between the two days of the year (when ``same_season``);
5. then exact cloud, exact season gap, distance to the windows' middles, and the scene ids.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import shapely

CLOUD_STEP = 0.05
SEASON_STEP_DAYS = 30
EPOCH = dt.date(1970, 1, 1).toordinal()


@dataclass(frozen=True, slots=True)
class PairingRule:
    """Date windows (ISO dates) and the limits a scene must meet over a site."""

    before: tuple[str, str]
    after: tuple[str, str]
    tolerance_days: int = 0
    same_season: bool = True
    max_cloud: float = 0.5
    min_valid: float = 0.99


@dataclass(frozen=True, slots=True)
class Candidates:
    """The candidate scenes of one date for one site.

    ``day`` : ndarray (n,), int, proleptic ordinal of the acquisition date;
    ``valid``, ``cloud`` : ndarray (n,), float, shares of the site (cloud NaN = unknown).
    """

    ids: tuple[str, ...]
    day: np.ndarray
    valid: np.ndarray
    cloud: np.ndarray


@dataclass(frozen=True, slots=True)
class Pair:
    """The chosen scenes (indexes into the candidates) and why."""

    before: int
    after: int
    reason: str
    season_gap_days: int


def ordinal(date: str) -> int:
    return dt.date.fromisoformat(date).toordinal()


def in_windows(days: np.ndarray, window: tuple[str, str], *, tolerance_days: int) -> np.ndarray:
    """Which days (ordinals, any shape) fall in the window widened by the tolerance."""
    return days_outside(days, window) <= tolerance_days


def days_outside(days: np.ndarray, window: tuple[str, str]) -> np.ndarray:
    """Days between each day and the window; 0 inside it."""
    start, end = ordinal(window[0]), ordinal(window[1])
    return np.maximum(start - days, 0) + np.maximum(days - end, 0)


def season_gap(day_a: np.ndarray, day_b: np.ndarray) -> np.ndarray:
    """Days between two dates' days of the year, round the year (0 to 182)."""
    gap = np.abs(day_of_year(day_a) - day_of_year(day_b))
    return np.minimum(gap, 365 - gap).clip(0)


def day_of_year(days: np.ndarray) -> np.ndarray:
    """0-based day of the year of proleptic ordinals."""
    dates = (np.asarray(days, dtype=np.int64) - EPOCH).astype("datetime64[D]")
    return (dates - dates.astype("datetime64[Y]")).astype(np.int64)


def covering(sites: np.ndarray, footprints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which footprints cover which sites, as (site index, footprint index) pairs sorted by site, then footprint.

    Both arrays hold EPSG:4326 geometries; an R-tree keeps this near-linear
    when each site has few scenes.
    """
    if len(sites) == 0 or len(footprints) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    site_of, scene_of = shapely.STRtree(footprints).query(sites, predicate="covered_by")
    order = np.lexsort((scene_of, site_of))
    return site_of[order], scene_of[order]


def site_shares(valid: np.ndarray, cloudy: np.ndarray | None, inside: np.ndarray) -> tuple[float, float]:
    """The valid share of a site and the cloudy share of its valid part.

    ``valid``, ``cloudy``, ``inside`` : bool (H, W) on one small grid over the
    site; ``cloudy`` None when the scene has no mask (cloud NaN).
    """
    total = int(inside.sum())
    if total == 0:
        return 0.0, float("nan")
    seen = valid & inside
    share = float(seen.sum() / total)
    if cloudy is None:
        return share, float("nan")
    return share, float((cloudy & seen).sum() / max(int(seen.sum()), 1))


def choose_pair(before: Candidates, after: Candidates, rule: PairingRule, *, what: str = "site") -> Pair | None:
    """The best (before, after) pair by the order in the module docstring; None when no pair is usable.

    ``what`` names the place in the reason (a site, or a region's block).
    """
    grid_b, grid_a = np.meshgrid(np.arange(len(before.ids)), np.arange(len(after.ids)), indexing="ij")
    b, a = grid_b.ravel(), grid_a.ravel()
    # unknown cloud is usable but ranks as the most cloud allowed: a scene that says it is clear wins
    cloud_b = np.nan_to_num(before.cloud[b], nan=rule.max_cloud)
    cloud_a = np.nan_to_num(after.cloud[a], nan=rule.max_cloud)
    usable = ((before.valid[b] >= rule.min_valid) & (after.valid[a] >= rule.min_valid)
              & (cloud_b <= rule.max_cloud) & (cloud_a <= rule.max_cloud) & (before.day[b] < after.day[a]))
    if not usable.any():
        return None
    b, a, cloud_b, cloud_a = b[usable], a[usable], cloud_b[usable], cloud_a[usable]
    outside = days_outside(before.day[b], rule.before) + days_outside(after.day[a], rule.after)
    gap = season_gap(before.day[b], after.day[a])
    season = gap if rule.same_season else np.zeros(len(b), np.int64)
    middle = (np.abs(before.day[b] - (ordinal(rule.before[0]) + ordinal(rule.before[1])) / 2)
              + np.abs(after.day[a] - (ordinal(rule.after[0]) + ordinal(rule.after[1])) / 2))
    names = np.array([f"{before.ids[i]}\n{after.ids[j]}" for i, j in zip(b, a, strict=True)])
    order = np.lexsort((names, middle, season, cloud_b + cloud_a, season // SEASON_STEP_DAYS, outside,
                        np.ceil(np.round(np.maximum(cloud_b, cloud_a) / CLOUD_STEP, 6))))
    k = order[0]
    reason = pair_reason(before, after, int(b[k]), int(a[k]), outside=int(outside[k]), gap=int(gap[k]),
                         usable=len(order), total=len(before.ids) * len(after.ids), what=what)
    return Pair(int(b[k]), int(a[k]), reason, int(gap[k]))


def pair_reason(before: Candidates, after: Candidates, b: int, a: int, *, outside: int, gap: int, usable: int,
                total: int, what: str = "site") -> str:
    """One sentence saying why this pair was chosen."""
    cloud = " / ".join("unknown" if np.isnan(c) else f"{c:.0%}" for c in (before.cloud[b], after.cloud[a]))
    where = "inside the date windows" if outside == 0 else f"{outside} days outside the date windows"
    return (f"covers the {what} ({before.valid[b]:.0%} / {after.valid[a]:.0%} with data); cloud {cloud}; {where}; "
            f"{gap} days apart in the year; best of {usable} usable of {total} candidate pairs")


def no_pair_reason(before: Candidates, after: Candidates, rule: PairingRule, *, what: str = "site") -> str:
    """Why no pair was usable, with what to change."""
    if not before.ids or not after.ids:
        which = "before" if not before.ids else "after"
        window = rule.before if which == "before" else rule.after
        return (f"no {which} scene in the catalog covers the {what} within {window[0]}..{window[1]} "
                f"(±{rule.tolerance_days} days): add scenes or widen [dates] {which} / tolerance_days")
    return (f"no usable pair among {len(before.ids)} before and {len(after.ids)} after scenes: none has "
            f">= {rule.min_valid:.0%} of the {what} with data and <= {rule.max_cloud:.0%} cloud on both dates: "
            "add scenes or relax [imagery] max_cloud / min_valid")
