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


def bilinear(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Each pixel of one (C, H, W) tile sampled at (y + dy, x + dx), pixel by pixel; NaN outside the tile."""
    _, h, w = image.shape
    out = np.full(image.shape, np.nan, np.float32)
    for y in range(h):
        for x in range(w):
            py, px = y + dy, x + dx
            if 0 <= py <= h - 1 and 0 <= px <= w - 1:
                y0, x0 = int(np.floor(py)), int(np.floor(px))
                y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                fy, fx = py - y0, px - x0
                out[:, y, x] = ((image[:, y0, x0] * (1 - fx) + image[:, y0, x1] * fx) * (1 - fy)
                                + (image[:, y1, x0] * (1 - fx) + image[:, y1, x1] * fx) * fy)
    return out


@pytest.mark.parametrize("shift", [(0.3, -0.7), (-2.5, 1.25), (3.0, -1.0), (0.0, 0.6), (-11.2, 12.9), (20.0, 0.0)])
def test_apply_shift_is_bilinear_sampling_pixel_by_pixel(shift: tuple[float, float]) -> None:
    image = np.random.default_rng(3).uniform(0, 100, (2, 3, 15, 13)).astype(np.float32)
    shifts = np.array([shift, (-shift[0], shift[1] / 2)])
    out = apply_shift(image, shifts)
    for tile, (dy, dx) in enumerate(shifts):
        expected = bilinear(image[tile], float(dy), float(dx))
        assert np.array_equal(np.isnan(out[tile]), np.isnan(expected))
        assert np.allclose(out[tile], expected, atol=1e-3, equal_nan=True)


@pytest.mark.parametrize("dy", [0.1 + 0.2 - 0.3, 1 + 2**-52, 3 + 2**-51, 1e-14, -(1 + 2**-52), 2.0])
def test_shifts_a_hair_off_a_whole_pixel_sample_like_bilinear(dy: float) -> None:
    image = np.random.default_rng(4).uniform(0, 100, (1, 2, 10, 9)).astype(np.float32)
    out = apply_shift(image, np.array([[dy, 0.5]]))[0]
    expected = bilinear(image[0], dy, 0.5)
    both = np.isfinite(out) & np.isfinite(expected)
    assert np.allclose(out[both], expected[both], atol=1e-3)
    # y + dy a hair past the last row is outside here; in float64 it rounds onto that row
    assert (np.isnan(out) != np.isnan(expected)).any(axis=(0, 2)).sum() <= 1


def test_a_whole_pixel_shift_takes_the_pixel_not_its_nodata_neighbour_and_a_nan_shift_gives_nodata() -> None:
    image = np.arange(2 * 6 * 5, dtype=np.float32).reshape(1, 2, 6, 5)
    image[0, :, 3, 2] = np.nan
    out = apply_shift(image, np.array([[1.0, 0.0]]))
    assert out[0, 0, 1, 2] == image[0, 0, 2, 2] and np.isnan(out[0, 0, 2, 2]) and np.isnan(out[0, :, 5]).all()
    assert np.isnan(apply_shift(image, np.array([[np.nan, 0.0]]))).all()
