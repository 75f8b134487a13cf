"""Accuracy measures of a per-pixel score against a reference change mask."""

from __future__ import annotations

import numpy as np


def average_precision(score: np.ndarray, truth: np.ndarray) -> float:
    """Average precision of ``score`` ranking the pixels where ``truth`` is set.

    The area under the precision-recall curve as a step function
    (scikit-learn's definition); ties in score are ranked together.  Pixels
    with a NaN score are left out.

    Parameters
    ----------
    score : ndarray, float, any shape
    truth : ndarray, bool, same shape

    Returns
    -------
    float in [0, 1]; NaN when ``truth`` has no positive pixel.
    """
    keep = np.isfinite(score)
    s, t = score[keep].ravel(), truth[keep].ravel().astype(bool)
    positives = t.sum()
    if positives == 0:
        return float("nan")
    _, precision, true_pos = tie_precision(s, t)
    recall = true_pos / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def tie_precision(score: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision at every distinct score, from the highest down, with tied scores counted together.

    Parameters
    ----------
    score : ndarray, shape (n,), finite
    truth : ndarray, shape (n,), bool

    Returns
    -------
    thresholds : ndarray, shape (k,): the distinct scores, descending
    precision : ndarray, shape (k,): precision of ``score >= threshold``
    true_pos : ndarray, shape (k,): positives at or above each threshold
    """
    order = np.argsort(-score, kind="stable")
    s, t = score[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    true_pos = np.cumsum(t)[last_of_tie]
    return s[last_of_tie], true_pos / (last_of_tie + 1), true_pos
