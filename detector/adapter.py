"""The band adapter: two dates arranged as the change CNN's input, without torch.

Array contract: ``before, after : ndarray, shape (N, C, H, W), float32, NaN =
nodata`` with canonical band ``names``; the result is ``(N, 2 *
len(MODEL_BANDS) + E, H, W)`` float32.  See :mod:`detector.model` for why
each band is standardized on its own, and :func:`standardize` for the ground
it is standardized against.  Kept apart from the network so that a
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
          bands: tuple[str, ...] = MODEL_BANDS, *, evidence: np.ndarray | None = None,
          window: int | None = None) -> np.ndarray:
    """Arrange two dates as the network's input.

    Parameters
    ----------
    before, after : ndarray, shape (N, C, H, W), float32, NaN = nodata
    names : canonical names of the C bands
    bands : the bands the network expects, in order
    evidence : ndarray, shape (N, E, H, W), float32 in [0, 1], NaN = nodata, or None: per-pixel evidence
        the network also reads (a model whose card lists ``evidence``, see :data:`EVIDENCE`), as is
    window : side in pixels of the ground each pixel is standardized against (:func:`standardize`); None:
        the whole tile

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
            out[:, slot] = standardize(before[:, i], window)
            out[:, len(bands) + slot] = standardize(after[:, i], window)
    return out


def standardize(x: np.ndarray, window: int | None = None) -> np.ndarray:
    """Robust standardization of one band: ``(x - median) / (1.4826 MAD)``, NaN -> 0.

    The median and MAD are those of the ``window`` x ``window`` pixels around
    each pixel (:func:`local_stats`; the whole tile's where ``window`` is None
    or covers the tile), so a pixel's input hardly depends on how large a
    tile the run cut around it.

    Parameters
    ----------
    x : ndarray, shape (N, H, W), float32, NaN = nodata

    Returns
    -------
    ndarray, shape (N, H, W), float32 in [-CLIP, CLIP]
    """
    centre, spread = local_stats(x, window)
    z = x - centre  # in place from here: a third of the time of one expression per step
    z /= spread
    np.clip(z, -CLIP, CLIP, out=z)
    return np.nan_to_num(z, nan=0.0, copy=False).astype(np.float32, copy=False)


def local_stats(x: np.ndarray, window: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Median and spread (1.4826 MAD) of ``x`` (N, H, W) over windows of ``window`` px, from a lattice of
    pixels (:func:`_step`), each as a float32 array that broadcasts against ``x``: (N, 1, 1) for one window,
    else (N, H, W).

    The spread is floored at 1 % of the median, so a flat window (saturated, water) does not blow up.
    Windows of ``window`` px start at even steps from one edge of the tile to the other (overlapping where
    the tile is no multiple of it); their statistics hold at their centres and are interpolated
    bilinearly between them (held beyond the outer centres), so no seam runs along a window's border.
    A window without data takes the whole tile's statistics; a tile without data gets 0 and 0.01."""
    n, h, w = x.shape
    rows, cols = _starts(h, window), _starts(w, window)
    size_r, size_c = min(h, window or h), min(w, window or w)
    r = (rows[:, None] + np.arange(0, size_r, _step(size_r)))[:, None, :, None]
    c = (cols[:, None] + np.arange(0, size_c, _step(size_c)))[None, :, None, :]
    sample = x[:, r, c]  # (N, windows down, windows across, rows, cols)
    centre = tile_quantile(sample, 0.5)
    spread = 1.4826 * tile_quantile(np.abs(sample - centre), 0.5)
    centre, spread = centre[..., 0, 0], spread[..., 0, 0]  # (N, windows down, windows across)
    if np.isnan(centre).any():
        whole = sample.reshape(n, 1, -1)
        tile_centre = tile_quantile(whole, 0.5)  # (N, 1, 1)
        centre = np.where(np.isnan(centre), tile_centre, centre)
        spread = np.where(np.isnan(spread), 1.4826 * tile_quantile(np.abs(whole - tile_centre), 0.5), spread)
    centre, spread = np.nan_to_num(centre), np.nan_to_num(spread)
    spread = np.maximum(spread, 0.01 * (np.abs(centre) + 1.0))
    if centre.shape[1:] == (1, 1):
        return centre, spread
    down, across = _weights(rows + size_r / 2 - 0.5, h), _weights(cols + size_c / 2 - 0.5, w).T
    return (down @ centre.astype(np.float32) @ across), (down @ spread.astype(np.float32) @ across)


def _step(side: int) -> int:
    """Every how many pixels a window of ``side`` pixels is sampled: every 4th up to 128 px (a training
    tile: 32 x 32 samples), beyond that about 32 a side (sorting the samples is the cost)."""
    return max(4, side // 32)


def _starts(length: int, window: int | None) -> np.ndarray:
    """First pixels of the windows along one axis: as few as cover it, evenly spread."""
    if window is None or window >= length:
        return np.zeros(1, np.int64)
    count = -(-length // window)
    return np.round(np.linspace(0, length - window, count)).astype(np.int64)


def _weights(at: np.ndarray, length: int) -> np.ndarray:
    """(length, len(at)) float32: each pixel's linear interpolation weights between the points ``at`` (the
    window centres; held beyond the outer ones), so that ``rows @ grid @ cols.T`` is bilinear."""
    position = np.interp(np.arange(length), at, np.arange(len(at)))
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(at) - 1)
    out = np.zeros((length, len(at)), np.float32)
    out[np.arange(length), low] = 1 - (position - low)
    out[np.arange(length), high] += position - low
    return out


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
