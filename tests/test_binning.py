"""Block averaging and back, against a plain loop over blocks."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.binning import bin_any, bin_mean, unbin


def blocks(h: int, w: int, factor: int) -> list[tuple[slice, slice]]:
    return [(slice(r, r + factor), slice(c, c + factor))
            for r in range(0, h // factor * factor, factor) for c in range(0, w // factor * factor, factor)]


@settings(max_examples=40)
@given(st.integers(1, 4), st.integers(1, 23), st.integers(1, 23), st.integers(0, 2**31))
def test_bin_mean_and_bin_any_are_the_block_mean_and_any(factor: int, h: int, w: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, h, w)).astype(np.float32)
    x[:, rng.random((h, w)) < 0.05] = np.nan
    mask = rng.random((h, w)) < 0.1
    mean, anyof = bin_mean(x, factor), bin_any(mask, factor)
    assert mean.shape == (2, h // factor, w // factor) and mean.dtype == np.float32
    for rows, cols in blocks(h, w, factor):
        r, c = rows.start // factor, cols.start // factor
        np.testing.assert_allclose(mean[:, r, c], x[:, rows, cols].mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
        assert anyof[r, c] == mask[rows, cols].any()


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 9), st.integers(0, 3), st.integers(0, 3))
def test_unbin_repeats_each_value_over_its_block_and_edge_pads(factor: int, h: int, w: int, extra_r: int,
                                                               extra_c: int) -> None:
    x = np.arange(h * w, dtype=np.float32).reshape(h, w)
    shape = (h * factor + extra_r, w * factor + extra_c)
    full = unbin(x, factor, shape)
    assert full.shape == shape
    rows = np.minimum(np.arange(shape[0]) // factor, h - 1)
    cols = np.minimum(np.arange(shape[1]) // factor, w - 1)
    np.testing.assert_array_equal(full, x[rows[:, None], cols[None, :]])
