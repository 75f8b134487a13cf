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
    picked = candidates(classical, threshold=threshold)
    best_case = fuse(classical, np.ones_like(cnn), reach=2)  # the CNN at its most confident
    assert np.all(best_case[~picked] < threshold)
    reachable = (best_case >= threshold).reshape(len(classical), -1).any(axis=1)
    assert np.array_equal(picked, reachable)


def test_the_prefilter_changes_no_changed_pixel_in_a_real_run(scene, tmp_path) -> None:
    import json

    import rasterio

    from detector.cli import main

    rasters = {}
    for method in ("classical", "cnn", "fused"):
        out = tmp_path / method
        assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                     "--method", method, "--cell-m", "300", "--tile-px", "64", "--bin", "1"]) == 0
        with rasterio.open(out / "change.tif") as src:
            rasters[method] = src.read(1)
    counts = json.loads((tmp_path / "fused" / "run.json").read_text())["counts"]
    assert 0 < counts["cnn_tiles"] < counts["tiles"]  # some tiles skipped the CNN
    unfiltered = fuse(rasters["classical"][None], rasters["cnn"][None], reach=1)[0]  # 15 m at 10 m pixels
    clear = np.abs(unfiltered - 0.5) > 1e-4
    clear[:2], clear[-2:], clear[:, :2], clear[:, -2:] = False, False, False, False  # the filter's edge mode
    assert np.array_equal((rasters["fused"] >= 0.5)[clear], (unfiltered >= 0.5)[clear])
    assert (rasters["fused"] >= 0.5).sum() > 50
