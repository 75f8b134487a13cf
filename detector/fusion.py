"""How the classical evidence and the CNN make one change score.

``fused = sqrt(classical * cnn)``, per pixel: the geometric mean of the
classical score (:func:`detector.change.change_score`) and the CNN's change
probability.  A pixel scores high only where both agree: the CNN brings what
it learned of change from labelled tiles, the classical score brings its
checks that a trained model may not have (in noise units of the tile, with
greening suppressed and registration checked).  Both are in [0, 1], so the
fused score is too, and the thresholds of :class:`detector.scoring.ScoreRule`
keep their meaning.

The rule makes a cheap prefilter exact: where the classical score is under
``pixel_threshold ** 2`` the fused score is under ``pixel_threshold`` whatever
the CNN says, so a tile with no such pixel skips the CNN (its CNN
probability counts as 0) without changing which pixels are counted as
changed, nor which sites are flagged.

Array contract: ``classical, cnn : ndarray, shape (N, H, W), float32``, NaN = nodata.
"""

from __future__ import annotations

import numpy as np

METHODS = ("classical", "cnn", "fused")
RULE = "fused = sqrt(classical * cnn) per pixel; CNN skipped on tiles with no classical score >= pixel_threshold**2"


def fuse(classical: np.ndarray, cnn: np.ndarray) -> np.ndarray:
    """Geometric mean of the two scores, per pixel; NaN where either is NaN."""
    return np.sqrt(np.maximum(classical, 0) * np.maximum(cnn, 0)).astype(np.float32)


def candidates(classical: np.ndarray, *, pixel_threshold: float) -> np.ndarray:
    """Tiles where the fused score could reach ``pixel_threshold``: shape (N,), bool."""
    flat = np.nan_to_num(classical.reshape(len(classical), -1), nan=0.0)
    return flat.max(axis=1) >= pixel_threshold ** 2
