"""The CNN calibrated to the scene: its change probabilities shifted so that, in each scene, it calls as many
pixels changed as the classical evidence does.

**Why.**  The classical score is measured in noise units of each tile
(:mod:`detector.change`), so 0.5 means about the same in a desert, a dense
city and farmland.  The CNN's probabilities do not: across the OSCD cities,
scored by models that never saw them, the threshold that gives the CNN its
best F1 ranges from 0.004 (mumbai: the CNN collapses) to 0.84 (saclay_e).  A
fixed 0.5 therefore misses most change on some ground and floods on other.

**The rule.**  Over the whole scene, ``n`` is the number of pixels whose
classical score reaches the pixel threshold.  ``t`` is the CNN probability
that exactly ``n`` pixels reach, among the tiles where the classical
evidence could make a change (the fused score's prefilter,
:func:`detector.fusion.candidates`; the pixels of the other tiles count as
below it, so ``fused`` and ``cnn`` get the same shift).  Every CNN
probability ``p`` is then replaced by ``sigmoid(logit(p) + shift)``,
``shift = logit(0.5) - logit(t)`` limited to ``+-MAX_SHIFT``: at ``t`` the
calibrated CNN says 0.5.  So on those tiles the CNN calls as many pixels
changed as the classical evidence does (fewer where the limit cut the
shift), a collapsed CNN is lifted back to where it can vote, and where it
fires the order of its pixels is kept, which is what it is good at.  With
fewer than ``fusion.MIN_CHANGED_PX`` classically changed pixels there is no
scale to match and the shift is 0.  The domain check
(:func:`detector.fusion.domain_check`) judges the CNN before it is shifted:
a CNN that says nothing about the ground, once made to call ``n`` pixels,
would agree with the classical evidence by chance.

The scan gathers :func:`counts` over the scene's tiles, then
:func:`calibrate` gives the shift, and :func:`apply` applies it before the
two voters are combined (:mod:`detector.fusion`); ``run.json`` records it
(``fusion_applied.calibration``).  Measured across the five fold models,
run as users run it (README, model card), before the lift cap and the
greening gate: fused pooled F1 0.267 -> 0.292, the CNN's 0.273 -> 0.323.

Array contract: ``classical, cnn : ndarray, shape (N, H, W), float32`` in [0, 1], NaN = nodata;
``considered : (N,) bool``, the tiles the CNN is matched on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SHIFT = 4.0  # logits: a CNN at 0.018 can be lifted to 0.5, one at 0.982 lowered to it
LOGIT_RANGE = 16.0
BINS = 640  # histogram of logits over [-LOGIT_RANGE, LOGIT_RANGE]: 0.05 logit per bin
SIZE = 2 * BINS + 1  # the length of :func:`counts`
EPS = 1e-7


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` kept off 0 and 1; NaN stays NaN."""
    q = np.clip(p, EPS, 1 - EPS)
    return np.log(q / (1 - q)).astype(np.float32)


def counts(classical: np.ndarray, cnn: np.ndarray, near: np.ndarray, considered: np.ndarray, *,
           pixel_threshold: float) -> np.ndarray:
    """What a batch of tiles adds to the scene's calibration and domain check: shape (SIZE,), int64.

    ``considered`` (N,) are the tiles the CNN is matched on: those where the
    classical evidence could make a change (:func:`detector.fusion.candidates`,
    the fused score's prefilter), so ``fused`` and ``cnn`` get the same shift
    whichever tiles each ran the CNN on; the pixels of the others count as
    below every CNN probability.  ``[:BINS]`` the histogram of the CNN's
    logits over the valid pixels of the considered tiles; ``[BINS:2 * BINS]``
    that of ``near`` (:func:`detector.fusion.near` of the CNN) over their
    pixels whose classical score reaches ``pixel_threshold``; ``[-1]`` the
    pixels whose classical score reaches it, in every tile.
    """
    changed = np.nan_to_num(classical, nan=0.0) >= pixel_threshold
    scored = cnn[considered][np.isfinite(classical[considered])]
    mine = _hist(near[considered][changed[considered]])
    return np.concatenate([_hist(scored), mine, [changed.sum()]]).astype(np.int64)


def _hist(prob: np.ndarray) -> np.ndarray:
    return np.histogram(np.clip(logit(prob), -LOGIT_RANGE, LOGIT_RANGE), bins=BINS,
                        range=(-LOGIT_RANGE, LOGIT_RANGE))[0]


@dataclass(frozen=True, slots=True)
class Calibration:
    """The shift of the CNN's logits in a scene, and what it was matched on."""

    shift: float  # added to every CNN logit
    matched_px: int  # pixels the classical evidence counts as changed (n)
    cnn_at: float | None  # the CNN probability that n pixels reach (t); None when too few changed to match
    limited: bool  # the shift was cut to MAX_SHIFT

    def record(self) -> dict[str, Any]:
        """What ``run.json`` says of it."""
        return {"rule": RULE, "shift_logit": round(self.shift, 3), "classical_changed_px": self.matched_px,
                "cnn_probability_matched": None if self.cnn_at is None else float(f"{self.cnn_at:.3g}"),
                "counts_as_half": round(float(1 / (1 + np.exp(self.shift))), 6),
                "limited": self.limited, "max_shift_logit": MAX_SHIFT}


RULE = (f"CNN probabilities p -> sigmoid(logit(p) + shift) per scene, shift = logit(0.5) - logit(t), t the CNN "
        f"probability reached by as many pixels as the classical score counts as changed, |shift| <= {MAX_SHIFT:g}; "
        "no shift under the domain check's min_changed_px")
NONE = Calibration(0.0, 0, None, False)


def calibrate(total: np.ndarray, *, min_changed: int) -> Calibration:
    """The scene's calibration from :func:`counts` summed over its tiles."""
    hist, changed = total[:BINS], int(total[-1])
    if changed < min_changed or hist.sum() == 0:
        return Calibration(0.0, changed, None, False)
    at = _logit_reached_by(hist, changed)
    shift = float(np.clip(-at, -MAX_SHIFT, MAX_SHIFT))
    return Calibration(shift, changed, float(1 / (1 + np.exp(-at))), abs(at) > MAX_SHIFT)


def _logit_reached_by(hist: np.ndarray, n: int) -> float:
    """The logit that ``n`` of the pixels of ``hist`` reach (linear within a bin); the lowest edge where fewer
    than ``n`` were scored (the pixels of tiles the CNN skipped lie below every scored one)."""
    edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, BINS + 1)
    above = np.cumsum(hist[::-1])[::-1]  # pixels in each bin or higher
    if above[0] < n:
        return float(edges[0])
    i = int(np.flatnonzero(above >= n)[-1])
    higher = int(above[i + 1]) if i + 1 < BINS else 0
    inside = (n - higher) / max(int(hist[i]), 1)
    return float(edges[i + 1] - inside * (edges[i + 1] - edges[i]))


def agreement(total: np.ndarray, scale: Calibration, *, agrees_at: float) -> np.ndarray:
    """The domain check's counts (:func:`detector.fusion.domain_check`) from :func:`counts`: the classically
    changed pixels, and of those where the calibrated CNN near them reaches ``agrees_at``: shape (2,)."""
    edges = np.linspace(-LOGIT_RANGE, LOGIT_RANGE, BINS + 1)[:-1]
    near = total[BINS:2 * BINS]
    agreed = near[edges + scale.shift >= np.log(agrees_at / (1 - agrees_at)) - 1e-9].sum()
    return np.array([int(total[-1]), int(agreed)], np.int64)


def apply(prob: np.ndarray, calibration: Calibration) -> np.ndarray:
    """``prob`` with the scene's shift applied (NaN stays NaN); unchanged for a zero shift."""
    if calibration.shift == 0.0:
        return prob
    return (1 / (1 + np.exp(-(logit(prob) + np.float32(calibration.shift))))).astype(np.float32)
