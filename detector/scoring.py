"""From per-pixel scores to per-site numbers: histograms, scores, threshold, rank.

Zones (sites or cells) are numbered 0..Z-1; a label raster holds zone + 1 and 0
outside every zone.  Each tile adds a histogram of its pixel scores per zone,
so a site's percentile score and changed area come from one ``bincount``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from detector.metrics import tie_precision
from detector.options import check, option

BINS = 200


@dataclass(frozen=True, slots=True)
class ScoreRule:
    """How a site's score and flag are derived from its pixels.

    ``score`` is the ``quantile`` of the site's valid pixel scores (0.95: a
    change over at least a twentieth of the site drives the score); a pixel is
    *changed* at ``pixel_threshold``; a site is flagged when its score is at or
    above ``threshold`` and at least ``min_valid`` of it has data in both dates.
    """

    quantile: float = 0.95
    pixel_threshold: float = option(0.5, float, low=0, high=1)
    threshold: float = option(0.5, float, low=0, high=1)
    min_valid: float = 0.5

    def __post_init__(self) -> None:
        check(self)

    @property
    def lowest(self) -> float:
        """The lower of the two thresholds: a pixel under it neither changes nor lifts a site to a flag."""
        return min(self.pixel_threshold, self.threshold)

    def describe(self, threshold: float) -> str:
        """The flagging rule in words at ``threshold``, for ``run.json``, ``batch.json`` and the report."""
        return (f"flagged = score >= {threshold} and valid_fraction >= {self.min_valid}; score = {self.quantile:g} "
                f"quantile of the site's pixel scores; a pixel is changed at score >= {self.pixel_threshold}")


def flags(score: np.ndarray, status: np.ndarray, threshold: float) -> np.ndarray:
    """The one flag rule: a site with enough data (status ``ok``, see :func:`site_table`) scoring at least
    ``threshold``.  Shapes (Z,) in, (Z,) bool out."""
    return (np.asarray(status) == "ok") & (np.nan_to_num(np.asarray(score, dtype=float)) >= threshold)


def zone_histograms(score: np.ndarray, labels: np.ndarray, zones: int) -> np.ndarray:
    """Count pixels per zone and score bin.

    Parameters
    ----------
    score : ndarray, shape (..., H, W), float32 in [0, 1], NaN = nodata
    labels : ndarray, same shape, int; zone + 1, 0 = no zone
    zones : number of zones Z

    Returns
    -------
    ndarray, shape (Z, BINS + 1), int64: column BINS counts nodata pixels.
    """
    scaled = score * np.float32(BINS)
    nodata = ~np.isfinite(scaled)
    np.clip(scaled, 0, BINS - 1, out=scaled)
    scaled[nodata] = BINS
    # every pixel counted, those outside every zone under "zone -1" (row 0, dropped): no masked copies
    keys = labels.astype(np.intp) * (BINS + 1) + scaled.astype(np.intp)
    return np.bincount(keys.ravel(), minlength=(zones + 1) * (BINS + 1)).reshape(zones + 1, BINS + 1)[1:]


def site_table(hist: np.ndarray, expected_px: np.ndarray, pixel_area_m2: np.ndarray, *,
               rule: ScoreRule, obscured_px: np.ndarray | None = None) -> pd.DataFrame:
    """Score, changed area and status of every zone from its histogram (flags: :func:`flags`).

    Parameters
    ----------
    hist : ndarray, shape (Z, BINS + 1), from :func:`zone_histograms`
    expected_px : ndarray, shape (Z,): pixels the zone covers on the grid
        (from its area), so parts outside the imagery count as missing.
    pixel_area_m2 : ndarray, shape (Z,): ground area of one pixel at the zone.
    obscured_px : ndarray, shape (Z,): pixels of the zone under cloud, shadow
        or snow in either date (not scored, so missing from ``hist``).

    ``status``: ``ok``; ``cloudy`` where more of the zone is obscured than
    ``1 - rule.min_valid`` (so less than ``min_valid`` can have data, and it
    is never flagged); ``no_coverage`` where nothing has data;
    ``partial_coverage`` where less than ``min_valid`` has.
    """
    valid = hist[:, :BINS].sum(axis=1)
    cumulative = np.cumsum(hist[:, :BINS], axis=1)
    target = np.ceil(rule.quantile * valid)[:, None]
    bin_index = (cumulative < np.maximum(target, 1)).sum(axis=1)
    score = np.where(valid > 0, (bin_index + 1) / BINS, np.nan)
    changed = hist[:, int(round(rule.pixel_threshold * BINS)):BINS].sum(axis=1)
    valid_fraction = np.clip(valid / np.maximum(expected_px, 1), 0.0, 1.0)
    obscured = np.zeros(len(hist)) if obscured_px is None else obscured_px
    cloud_fraction = np.clip(obscured / np.maximum(expected_px, 1), 0.0, 1.0)
    status = np.where(cloud_fraction > 1 - rule.min_valid, "cloudy", np.where(
        valid == 0, "no_coverage", np.where(valid_fraction < rule.min_valid, "partial_coverage", "ok")))
    return pd.DataFrame({
        "score": np.round(score, 4),
        "changed_area_m2": np.round(changed * pixel_area_m2, 1),
        "changed_fraction": np.round(np.where(valid > 0, changed / np.maximum(valid, 1), np.nan), 4),
        "valid_fraction": np.round(valid_fraction, 4),
        "cloud_fraction": np.round(cloud_fraction, 4),
        "status": status,
        "flagged": flags(score, status, rule.threshold),
        "rank": pd.array(rank(score, changed), dtype="Int64"),
    })


def threshold_for_max_flags(score: np.ndarray, eligible: np.ndarray, max_flags: int, *, floor: float) -> float:
    """The lowest threshold, not under ``floor``, at which at most ``max_flags`` eligible sites are flagged.

    Scores are multiples of ``1 / BINS``, so the threshold is the next bin
    above the first score left out; ties at that score all stay unflagged.
    """
    ranked = np.sort(np.nan_to_num(score[eligible], nan=-1.0))[::-1]
    if len(ranked) <= max_flags or ranked[max_flags] < floor:
        return floor
    return round(float(ranked[max_flags]) + 1.0 / BINS, 4)


def threshold_for_precision(score: np.ndarray, label: np.ndarray,
                            target: float) -> tuple[float, float, float] | None:
    """The lowest threshold at which the labelled sites reach precision ``target``.

    Parameters
    ----------
    score : ndarray, shape (Z,); label : ndarray, shape (Z,), 1 / 0 / NaN (unlabelled)

    Returns
    -------
    (threshold, precision, recall) on the labelled sites, or None when no
    threshold reaches ``target``.
    """
    keep = np.isfinite(score) & np.isfinite(label)
    if not label[keep].any():
        return None
    at, precision, hits = tie_precision(score[keep], label[keep].astype(bool))
    good = np.flatnonzero(precision >= target)
    if len(good) == 0:
        return None
    best = good[-1]  # the lowest threshold that still reaches the target
    return float(at[best]), float(precision[best]), float(hits[best] / label[keep].sum())


def rank(score: np.ndarray, changed: np.ndarray) -> np.ndarray:
    """1-based rank by score, ties broken by changed pixels; NaN scores get no rank.

    Returns
    -------
    ndarray of object: int ranks, None where the score is NaN.
    """
    order = np.lexsort((-changed, -np.nan_to_num(score, nan=-1.0)))
    ranks = np.empty(len(score), dtype=object)
    ranks[order] = np.arange(1, len(score) + 1)
    ranks[~np.isfinite(score)] = None
    return ranks


def change_components(score: np.ndarray, labels: np.ndarray, *,
                      pixel_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Connected changed regions inside zones, split at zone borders.

    Parameters
    ----------
    score, labels : ndarray, shape (H, W)

    Returns
    -------
    components : ndarray, shape (H, W), int32, 0 = none, k = region k
    zone : ndarray, shape (K,), zone of each region
    mean_score : ndarray, shape (K,), mean pixel score of each region
    """
    changed = (np.nan_to_num(score) >= pixel_threshold) & (labels > 0)
    blobs, count = ndimage.label(changed)
    if count == 0:
        return blobs.astype(np.int32), np.zeros(0, np.int64), np.zeros(0)
    keys = blobs.astype(np.int64) * (int(labels.max()) + 1) + labels
    unique, inverse = np.unique(keys[changed], return_inverse=True)
    components = np.zeros(score.shape, dtype=np.int32)
    components[changed] = inverse + 1
    sums = np.bincount(inverse, weights=score[changed])
    sizes = np.bincount(inverse)
    zone = (unique % (int(labels.max()) + 1)) - 1
    return components, zone, sums / sizes
