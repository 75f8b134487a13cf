"""How the classical evidence and the CNN make one change score.

``fused = sqrt(classical * cnn_near)``, per pixel: the geometric mean of the
classical score (:func:`detector.change.change_score`) and ``cnn_near``, the
CNN's highest change probability within ``SUPPORT_M`` (15 m) of the pixel.
A pixel scores high only where both agree: the CNN says that construction
is there or right beside it (it fires on buildings, not on the yards, walls
and roads between them that belong to the same compound), the classical score
says how far the change extends, with its own checks (change in noise units
of the tile, greening suppressed, registration checked).  Both are in [0, 1],
so the fused score is too, and the thresholds of
:class:`detector.scoring.ScoreRule` keep their meaning.  The 15 m reach was
chosen on the development data (the seven training cities and the Dabancheng
sample), never on the held-out cities.

The rule makes a cheap prefilter exact where it matters: the fused score is
at most ``sqrt(classical)``, so where the classical score is under ``t ** 2``
(``t`` the lower of the pixel and site thresholds) the fused score is under
``t`` whatever the CNN says.  A tile with no pixel at ``t ** 2`` skips the
CNN and its fused scores are 0: which pixels count as changed and which
sites are flagged stay exactly as without the prefilter; scores under the
thresholds (and so the order of unflagged sites) may be lower.

Array contract: ``classical, cnn : ndarray, shape (N, H, W), float32``, NaN = nodata.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

SUPPORT_M = 15.0
RULE = ("fused = sqrt(classical * cnn_near) per pixel, cnn_near = the CNN probability's maximum within 15 m; "
        "CNN skipped (fused = 0) on tiles with no classical score >= min(pixel_threshold, threshold)**2")


def reach_px(pixel_m: float) -> int:
    """``SUPPORT_M`` in whole pixels of ``pixel_m`` metres."""
    return int(SUPPORT_M // pixel_m)


def fuse(classical: np.ndarray, cnn: np.ndarray, *, reach: int = 0) -> np.ndarray:
    """Geometric mean of the classical score and the CNN's maximum within ``reach`` pixels; NaN where either is NaN."""
    near = cnn
    if reach > 0:
        size = (1, 2 * reach + 1, 2 * reach + 1)
        near = np.where(np.isnan(cnn), np.nan, ndimage.maximum_filter(np.nan_to_num(cnn, nan=0.0), size=size))
    return np.sqrt(np.maximum(classical, 0) * np.maximum(near, 0)).astype(np.float32)


def candidates(classical: np.ndarray, *, threshold: float) -> np.ndarray:
    """Tiles where the fused score could reach ``threshold``: shape (N,), bool."""
    flat = np.nan_to_num(classical.reshape(len(classical), -1), nan=0.0)
    return flat.max(axis=1) >= threshold ** 2
