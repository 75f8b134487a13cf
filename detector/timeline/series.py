"""The persistence fit: from per-date change maps to one onset per pixel, and per-site onsets and kind.

Array contract: ``changed`` float32 ``(T, H, W)``, date 0 the reference (the
earliest usable date), 1 where the pixel reads as built-up change against the
reference, 0 where it does not, NaN where that date has no usable data
(cloud, outside the scene).  Dates are in time order.  Pure numpy.

Construction, once present, persists.  So each pixel gets the one onset
``k`` (the first date it is built) that best explains its whole series, not
a threshold of each date alone: the cost of ``k`` is the number of dates
before ``k`` that read as changed plus the dates from ``k`` on that read as
unchanged (NaN dates cost nothing), and ``k = T`` ("never") is the
alternative.  An onset must be confirmed by at least ``min_persistence``
usable changed dates from ``k`` on (``k`` among them: the onset is a date that
shows the construction, never one under cloud), and must cost less than "never"; ties go
to "never" and then to the earlier onset (a misread date inside a run of
built dates is as likely as one before it), so one bad date (haze, a
residual cloud, a misregistered frame) can neither create nor erase
construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.options import check, option

NEVER = -1  # onset of a pixel never built


@dataclass(frozen=True, slots=True)
class KindRule:
    """How a site's series becomes its kind; recorded in every output.

    A site is built when its own score (as ``run`` scores a site against the
    reference) persists above the threshold (:func:`onsets` on the site's
    series) and its built area grew by at least ``min_built_m2``.  Then
    ``new``: the area already built at the earliest date is under
    ``min_built_m2`` or under ``min_existing_share`` of the last; else
    ``expanded`` when it grew by at least ``min_growth_share`` of itself.
    ``unchanged`` otherwise; ``insufficient_data``: fewer than ``min_dates``
    usable dates.
    """

    min_dates: int = option(3, int, low=2, low_closed=True)
    min_persistence: int = option(2, int, low=1, low_closed=True)
    min_built_m2: float = option(2000.0, float, low=0)
    min_growth_share: float = option(0.25, float, low=0, low_closed=True)
    min_existing_share: float = option(0.1, float, low=0, high=1, low_closed=True)

    def __post_init__(self) -> None:
        check(self)

    def describe(self) -> str:
        m2 = f"{self.min_built_m2:g} m2"
        return (f"onset: the first date from which the site's score, and each pixel's change, persists on >= "
                f"{self.min_persistence} usable dates (least-mismatch fit, ties to no onset, then to the earlier); "
                f"built: the site's onset exists and its built area grew by >= {m2}; new: built, with < {m2} or "
                f"< {self.min_existing_share:.0%} of the last built area already there at the earliest date; "
                f"expanded: built, from at least that, grown by >= {self.min_growth_share:.0%} of it; "
                f"insufficient_data: fewer than {self.min_dates} usable dates")


def onsets(changed: np.ndarray, *, min_persistence: int = 2) -> np.ndarray:
    """The onset date index of every pixel (:data:`NEVER` where none); see the module docstring.

    Parameters
    ----------
    changed : ndarray, shape (T, H, W), float, 1 / 0 / NaN

    Returns
    -------
    ndarray, shape (H, W), int64: the first built date index in 1..T-1, or NEVER.
    """
    t = changed.shape[0]
    ones = np.nan_to_num(changed, nan=0.0) > 0.5
    zeros = np.isfinite(changed) & ~ones
    ones_before = np.concatenate([np.zeros((1, *ones.shape[1:]), np.int64), np.cumsum(ones, axis=0)])
    zeros_from = np.cumsum(zeros[::-1], axis=0)[::-1]
    ones_from = np.cumsum(ones[::-1], axis=0)[::-1]
    cost = ones_before[:t] + zeros_from  # (T, H, W): onset at k = 0..T-1
    cost[0] = np.iinfo(np.int64).max  # the reference date is unbuilt by definition
    cost[(ones_from < min_persistence) | ~ones] = np.iinfo(np.int64).max  # the onset date itself shows it
    never = ones_before[t]
    best = np.argmin(cost, axis=0)  # the earliest of the least-cost onsets
    lowest = np.take_along_axis(cost, best[None], axis=0)[0]
    return np.where(lowest < never, best, NEVER).astype(np.int64)


def built_series(onset: np.ndarray, inside: np.ndarray, dates: int, pixel_area_m2: float) -> np.ndarray:
    """Built area (m²) inside the site at each date: pixels whose onset is at or before it.  Shape (T,)."""
    first = onset[inside & (onset != NEVER)]
    counts = np.bincount(first, minlength=dates)[:dates]
    return np.cumsum(counts) * pixel_area_m2


def kind(built_first_m2: float, built_last_m2: float, usable: int, rule: KindRule, *,
         onset: bool) -> tuple[str, str]:
    """The site's kind and why (one line); ``onset``: whether the site's own score has a persistent onset."""
    if usable < rule.min_dates:
        return "insufficient_data", f"{usable} usable date(s), fewer than {rule.min_dates}"
    growth = built_last_m2 - built_first_m2
    if not onset:
        return "unchanged", "the site's score never stays over the threshold"
    if growth < rule.min_built_m2:
        return "unchanged", f"built area grew by {growth:.0f} m2 only"
    if built_first_m2 < max(rule.min_built_m2, rule.min_existing_share * built_last_m2):
        return "new", f"{built_first_m2:.0f} m2 built at the earliest date, {built_last_m2:.0f} m2 at the last"
    if growth >= rule.min_growth_share * built_first_m2:
        return "expanded", (f"{built_first_m2:.0f} m2 built at the earliest date, grown by {growth:.0f} m2 "
                            f"({growth / built_first_m2:.0%})")
    return "unchanged", f"{built_first_m2:.0f} m2 built at the earliest date, grown by {growth:.0f} m2 only"
