"""Training augmentation of network-ready tiles (see :func:`detector.model.adapt`).

Array contract: ``inputs`` float32 ``(N, 2B + E, H, W)`` (B bands of the before
date, then B of the after date, standardized, then E evidence channels); ``target`` float32
``(N, H, W)``, NaN = unknown.  Randomness comes only from the ``rng`` passed in.

Per tile: a random 90-degree rotation and flip; the dates swapped (half the
time: change is change either way; never with evidence channels, whose
classical score reads the dates in order); the after date's bands jittered in gain
and offset (what per-tile standardization leaves of a radiometric difference)
plus noise; the after date shifted by up to ``max_shift`` px, bilinearly, in
half the tiles (a residual misregistration: at 10 m a whole pixel is the
size of the buildings to find, so the jitter stays sub-pixel); and NIR/SWIR dropped (``band_drop`` of the tiles that
have them), so RGB-only imagery is scored by the same weights (evidence
channels keep the score of all bands: on RGB-only imagery ``run``'s is of
three); and a share of
the tiles magnified by up to ``zoom`` (a random crop scaled back up), so
imagery finer than the training data, or upsampled from a coarser sensor, is
not foreign.

``strength="strong"`` (``scripts/train_default.py --augment strong``) also
distorts both dates' radiometry (:func:`radiometry`).  Measured across cities
(``scripts/eval_oscd.py --folds 5``, out-of-fold maps) it helped the CNN on
three cities and hurt it on four: it is not the shipped recipe.  Nor is
:func:`paste_change` (``--paste``: another tile's labelled change pasted into
the after date): across cities it lifted one city's CNN and lowered seven
(README, model card).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from detector.model import MODEL_BANDS

OPTIONAL = [i for i, b in enumerate(MODEL_BANDS) if b not in ("blue", "green", "red")]


STRENGTHS = ("standard", "strong")


def augment_batch(inputs: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, band_drop: float = 0.5,
                  max_shift: float = 0.5, gain: float = 0.15, offset: float = 0.15, noise: float = 0.05,
                  zoom: float = 2.0, zoom_share: float = 0.3, strength: str = "standard") -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
    """An augmented copy of a batch; see the module docstring.  ``strength`` "strong" also distorts both
    dates' radiometry (:func:`radiometry`), for ground unlike the training cities'."""
    bands = len(MODEL_BANDS)
    dates = slice(0, 2 * bands)  # the evidence channels after them move with the ground, nothing else
    xs, ys = [], []
    for x, y in zip(inputs, target, strict=True):
        if zoom > 1 and rng.random() < zoom_share:
            x, y = _zoom(x, y, float(rng.uniform(1.0, zoom)), rng)
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k)
        if flip:
            x, y = x[:, :, ::-1], y[:, ::-1]
        x = np.array(x, dtype=np.float32)
        if rng.random() < 0.5 and x.shape[0] == 2 * bands:  # evidence (directional) would not match swapped dates
            x[dates] = np.concatenate([x[bands:2 * bands], x[:bands]])
        after = x[bands:2 * bands]
        present = np.abs(after).reshape(bands, -1).max(axis=1) > 0
        nodata = np.all(after == 0, axis=0)
        after *= rng.uniform(1 - gain, 1 + gain, (bands, 1, 1)).astype(np.float32)
        after += rng.normal(0, offset, (bands, 1, 1)).astype(np.float32)
        after += rng.normal(0, noise, after.shape).astype(np.float32)
        after[~present] = 0.0
        after[:, nodata] = 0.0
        if max_shift and rng.random() < 0.5:
            dy, dx = rng.uniform(-max_shift, max_shift, 2)
            x[bands:2 * bands] = ndimage.shift(after, (0, dy, dx), order=1, mode="nearest")
        if strength == "strong":
            x[dates] = radiometry(x[dates], bands, rng)
        if rng.random() < band_drop:
            x[OPTIONAL] = 0.0
            x[[bands + i for i in OPTIONAL]] = 0.0
        xs.append(x)
        ys.append(np.array(y, dtype=np.float32))
    return np.stack(xs), np.stack(ys)


def paste_change(inputs: np.ndarray, target: np.ndarray, rng: np.random.Generator, *, share: float = 0.5,
                 min_px: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic construction on other ground: in a ``share`` of the tiles, another tile's labelled change
    (at least ``min_px`` changed pixels; turned and flipped at random) is pasted into this tile's after date,
    its pixels labelled changed, so the network sees new buildings on ground of every city of the batch.

    Only the after date's bands that both tiles have are pasted, only where this tile's label is known;
    the before date stays this tile's own.
    """
    bands = len(MODEL_BANDS)
    changed = np.nan_to_num(target, nan=0.0) >= 0.5
    donors = np.flatnonzero(changed.sum(axis=(1, 2)) >= min_px)
    x, y = inputs.copy(), target.copy()
    if share <= 0 or len(donors) == 0:
        return x, y
    present = np.abs(inputs[:, bands:2 * bands]).reshape(len(inputs), bands, -1).max(axis=2) > 0
    for i in np.flatnonzero(rng.random(len(x)) < share):
        j = int(rng.choice(donors))
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        if j == i:
            continue
        after, mask = np.rot90(inputs[j, bands:2 * bands], k, axes=(1, 2)), np.rot90(changed[j], k)
        if flip:
            after, mask = after[:, :, ::-1], mask[:, ::-1]
        mask = mask & np.isfinite(y[i])
        both = np.flatnonzero(present[i] & present[j])
        x[i, bands + both] = np.where(mask, after[both], x[i, bands + both])
        y[i][mask] = 1.0
    return x, y


def radiometry(x: np.ndarray, bands: int, rng: np.random.Generator) -> np.ndarray:
    """Each date on its own: a monotone contrast curve per band (``sign(v) |v| ** gamma``, gamma in 0.6..1.6:
    a brighter or flatter ground than the training cities'), a gain and offset per band, and in a third of
    the tiles a blur of up to one pixel (haze, another sensor's resolution).  Zeros (missing bands, nodata)
    stay zero."""
    out = x.copy()
    for date in (slice(0, bands), slice(bands, 2 * bands)):
        v = out[date]
        zero = v == 0
        gamma = rng.uniform(0.6, 1.6, (bands, 1, 1)).astype(np.float32)
        v = np.sign(v) * np.abs(v) ** gamma
        v = v * rng.uniform(0.7, 1.3, (bands, 1, 1)).astype(np.float32) + rng.normal(0, 0.2, (bands, 1, 1))
        if rng.random() < 1 / 3:
            v = ndimage.gaussian_filter(v, (0, *(2 * [float(rng.uniform(0.3, 1.0))])))
        v[zero] = 0.0
        out[date] = v
    return out.astype(np.float32)


def _zoom(x: np.ndarray, y: np.ndarray, factor: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random crop of 1/``factor`` of the tile, magnified back to the tile size (bilinear).

    Imagery upsampled from a coarser sensor (true-colour frames rendered at
    3.4 m from 10 m bands) looks like this.
    """
    size = x.shape[-1]
    crop = max(int(round(size / factor)), 8)
    r, c = rng.integers(0, size - crop + 1, 2)
    scale = size / crop
    x = ndimage.zoom(x[:, r:r + crop, c:c + crop], (1, scale, scale), order=1)[:, :size, :size]
    y = ndimage.zoom(np.nan_to_num(y[r:r + crop, c:c + crop], nan=-1.0), scale, order=0)[:size, :size]
    return x.astype(np.float32), np.where(y < 0, np.nan, y).astype(np.float32)
