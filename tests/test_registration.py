"""Batched phase correlation and shift correction."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from detector.registration import apply_shift, estimate_shift


def textured(n: int, size: int = 200, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, 2, 2)).astype(np.float32)


@pytest.mark.parametrize("true", [(1.5, -2.25), (0.0, 0.0), (-3.3, 0.7), (6.6, -4.4)])
def test_recovers_sub_pixel_shifts(true: tuple[float, float]) -> None:
    before = textured(1)
    after = ndimage.shift(before[0], (-true[0], -true[1]), order=3)[None]  # after(y) = before(y + true)
    shift, peak = estimate_shift(before, after)
    assert np.allclose(-shift[0], true, atol=0.1)
    assert peak[0] > 50


def test_a_shared_nodata_area_does_not_pull_the_shift_to_zero() -> None:
    before = textured(1, seed=1)
    after = ndimage.shift(before[0], (-2.0, 1.0), order=3)[None].astype(np.float32)
    before[:, 50:110, 40:120] = np.nan  # a third of the central window the estimate uses
    after[:, 50:110, 40:120] = np.nan
    shift, _ = estimate_shift(before, after)
    assert np.allclose(-shift[0], (2.0, -1.0), atol=0.25)


def test_each_tile_of_a_batch_gets_its_own_shift() -> None:
    before = textured(3, seed=2)
    truth = np.array([[1.0, 0.0], [0.0, -2.0], [0.5, 0.5]])
    after = np.stack([ndimage.shift(before[i], -truth[i], order=3) for i in range(3)])
    shift, _ = estimate_shift(before, after)
    assert np.allclose(-shift, truth, atol=0.1)


def test_apply_shift_undoes_the_shift_and_marks_outside_as_nan() -> None:
    before = textured(2, seed=3)
    truth = np.array([[2.0, -1.0], [0.5, 1.5]])
    after = np.stack([ndimage.shift(before[i], truth[i], order=3) for i in range(2)])[:, None]
    back = apply_shift(after, truth)
    inner = (slice(None), 0, slice(5, -5), slice(5, -5))
    assert np.nanmax(np.abs(back[inner] - before[:, 5:-5, 5:-5])) < 0.05 < 0.5 * before.std()
    assert np.isnan(back[0, 0, -1]).all() and np.isnan(back[0, 0, :, 0]).all()
    assert back.dtype == np.float32
