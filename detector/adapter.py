"""The band adapter: two dates arranged as the change CNN's input, without torch.

Array contract: ``before, after : ndarray, shape (N, C, H, W), float32, NaN =
nodata`` with canonical band ``names``; the result is ``(N, 2 *
len(MODEL_BANDS) + E, H, W)`` float32.  See :mod:`detector.model` for why
each band is standardized per tile.  Kept apart from the network so that a
model run in ONNX Runtime never imports torch (:mod:`detector.inference`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from detector.change import tile_quantile

MODEL_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
STRIDE = 8  # the network's coarsest level is 1/8 of the input
CLIP = 6.0  # standardized values are clipped to +-CLIP spreads
EVIDENCE = ("classical",)  # evidence a network may read beside the bands: the classical change score


def adapt(before: np.ndarray, after: np.ndarray, names: tuple[str, ...],
          bands: tuple[str, ...] = MODEL_BANDS, *, evidence: np.ndarray | None = None) -> np.ndarray:
    """Arrange two dates as the network's input.

    Parameters
    ----------
    before, after : ndarray, shape (N, C, H, W), float32, NaN = nodata
    names : canonical names of the C bands
    bands : the bands the network expects, in order
    evidence : ndarray, shape (N, E, H, W), float32 in [0, 1], NaN = nodata, or None: per-pixel evidence
        the network also reads (a model whose card lists ``evidence``, see :data:`EVIDENCE`), as is

    Returns
    -------
    ndarray, shape (N, 2 * len(bands) + E, H, W), float32, no NaN
    """
    n, _, h, w = before.shape
    extra = 0 if evidence is None else evidence.shape[1]
    out = np.zeros((n, 2 * len(bands) + extra, h, w), dtype=np.float32)
    if evidence is not None:
        out[:, 2 * len(bands):] = np.nan_to_num(evidence, nan=0.0)
    for slot, band in enumerate(bands):
        if band in names:
            i = names.index(band)
            out[:, slot] = standardize(before[:, i])
            out[:, len(bands) + slot] = standardize(after[:, i])
    return out


def standardize(x: np.ndarray) -> np.ndarray:
    """Per-tile robust standardization of one band: ``(x - median) / (1.4826 MAD)``, NaN -> 0.

    Statistics come from every 4th pixel; the spread is floored at 1 % of the
    median so a flat tile (saturated, water, all nodata) does not blow up.

    Parameters
    ----------
    x : ndarray, shape (N, H, W), float32, NaN = nodata

    Returns
    -------
    ndarray, shape (N, H, W), float32 in [-CLIP, CLIP]
    """
    sample = x[:, ::4, ::4]
    centre = np.nan_to_num(tile_quantile(sample, 0.5)[:, 0, 0])
    spread = np.nan_to_num(1.4826 * tile_quantile(np.abs(sample - centre[:, None, None]), 0.5)[:, 0, 0])
    spread = np.maximum(spread, 0.01 * (np.abs(centre) + 1.0))
    z = x - centre[:, None, None]  # in place from here: a third of the time of one expression per step
    z /= spread[:, None, None]
    np.clip(z, -CLIP, CLIP, out=z)
    return np.nan_to_num(z, nan=0.0, copy=False).astype(np.float32, copy=False)


def in_batches(inputs: np.ndarray, run: Callable[[np.ndarray], np.ndarray], *, batch: int) -> np.ndarray:
    """``run`` (a network's probabilities of tiles whose sides are multiples of :data:`STRIDE`) over
    ``inputs`` ``batch`` tiles at a time, the edges of any other size replicated and cut off again.

    Parameters
    ----------
    inputs : ndarray, shape (N, C, H, W), float32, as made by :func:`adapt`
    run : maps (n, C, H', W') float32 to (n, H', W') float32

    Returns
    -------
    ndarray, shape (N, H, W), float32
    """
    n, _, h, w = inputs.shape
    ph, pw = -h % STRIDE, -w % STRIDE
    out = np.empty((n, h, w), dtype=np.float32)
    for start in range(0, n, batch):
        x = np.ascontiguousarray(inputs[start:start + batch], dtype=np.float32)
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
        out[start:start + batch] = run(x)[:, :h, :w]
    return out
