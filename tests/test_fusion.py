"""The fusion rule and its prefilter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.fusion import candidates, fuse


def test_fused_is_the_geometric_mean_and_passes_nodata_through() -> None:
    classical = np.array([[[0.81, 0.0, np.nan, 1.0]]], dtype=np.float32)
    cnn = np.array([[[0.25, 1.0, 0.9, np.nan]]], dtype=np.float32)
    fused = fuse(classical, cnn)
    assert np.allclose(fused[0, 0, :2], [0.45, 0.0]) and np.isnan(fused[0, 0, 2:]).all()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), threshold=st.floats(0.05, 0.95))
def test_tiles_skipped_by_the_prefilter_could_not_reach_the_threshold(seed: int, threshold: float) -> None:
    rng = np.random.default_rng(seed)
    classical = (rng.uniform(0, 1, (6, 8, 8)) ** rng.uniform(1, 8, (6, 1, 1))).astype(np.float32)
    cnn = rng.uniform(0, 1, (6, 8, 8)).astype(np.float32)
    skipped = ~candidates(classical, pixel_threshold=threshold)
    assert np.all(fuse(classical[skipped], np.ones_like(cnn[skipped])) < threshold)
    assert np.all(candidates(classical, pixel_threshold=threshold) | skipped)
