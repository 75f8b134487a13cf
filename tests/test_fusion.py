"""The fusion rule and its prefilter."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.fusion import candidates, fuse, near


def test_fused_needs_both_voters_above_its_floor_and_passes_nodata_through() -> None:
    from detector.fusion import EXPONENT, FLOOR

    classical = np.array([[[0.81, 0.0, np.nan, 1.0, 0.9]]], dtype=np.float32)
    cnn = np.array([[[0.25, 1.0, 0.9, np.nan, 0.0]]], dtype=np.float32)
    fused = fuse(classical, cnn)
    assert np.allclose(fused[0, 0, :2], [max((0.81 * 0.25) ** EXPONENT, FLOOR * 0.81), 0.0])
    assert np.isnan(fused[0, 0, 2:4]).all()
    assert np.isclose(fused[0, 0, 4], FLOOR * 0.9)  # a silent CNN lowers strong classical evidence, no more


def test_a_silent_cnn_vetoes_no_overwhelming_classical_evidence_and_takes_no_score_to_nothing() -> None:
    from detector.fusion import FLOOR

    classical = np.array([[[0.3, 0.6, 0.85, 0.9, 0.92, 0.99]]], dtype=np.float32)
    fused = fuse(classical, np.zeros_like(classical))
    np.testing.assert_allclose(fused, FLOOR * classical)
    assert ((fused >= 0.5) == (classical >= 0.5 / FLOOR)).all() and 0.85 < 0.5 / FLOOR < 0.95
    assert (fused[0, 0, -2:] >= 0.5).all() and (fused[0, 0, :4] < 0.5).all()


def test_a_confident_cnn_lifts_weak_classical_evidence_by_lift_at_most() -> None:
    from detector.fusion import LIFT

    classical = np.array([[[0.0, 0.2, 0.3, 0.34, 0.6]]], dtype=np.float32)
    fused = fuse(classical, np.ones_like(classical))
    assert np.allclose(fused, np.minimum(np.sqrt(classical), classical + LIFT))
    assert (fused[0, 0, :4] < 0.5).all() and fused[0, 0, 4] > 0.7  # the CNN alone flags nothing


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
    # one pixel either side of a tile's edge: there the run's 15 m maximum saw the tile's own margin, the
    # raster holds the next tile's prediction (tiles are whole 30-px cells of the analysed area)
    rows, cols = np.indices(clear.shape)
    clear &= (rows % 30 > 0) & (rows % 30 < 29) & (cols % 30 > 0) & (cols % 30 < 29)
    assert np.array_equal((rasters["fused"] >= 0.5)[clear], (unfiltered >= 0.5)[clear])
    assert (rasters["fused"] >= 0.5).sum() > 50


def test_agreement_counts_and_the_domain_check() -> None:
    from detector.calibration import NONE, agreement, counts
    from detector.fusion import MIN_AGREEMENT, MIN_CHANGED_PX, domain_check

    classical = np.zeros((2, 10, 10), np.float32)
    classical[0, :5] = 0.9  # 50 changed pixels in tile 0
    cnn = np.zeros_like(classical)
    cnn[0, 0, :4] = 0.8  # the CNN sees change at 4 of them
    found = counts(classical, cnn, near(cnn, reach=1), np.array([True, False]), pixel_threshold=0.5)
    assert agreement(found, NONE, agrees_at=0.5).tolist() == [50, 2 * 5]  # within one pixel: rows 0-1, cols 0-4
    assert domain_check(np.array([MIN_CHANGED_PX - 1, 0]))["in_domain"]  # too little change to tell
    low = domain_check(np.array([1000, int(1000 * MIN_AGREEMENT) - 1]))
    assert not low["in_domain"] and low["agreement"] < MIN_AGREEMENT
    assert domain_check(np.array([1000, int(1000 * MIN_AGREEMENT) + 1]))["in_domain"]


def silent_model(path) -> None:
    """The shipped network with its output biases pushed down: it says "no change" everywhere, as a CNN far
    out of its domain does."""
    import torch

    from detector import weights
    from detector.methods import default_model_path

    loaded = weights.load(default_model_path(), for_training=True)
    with torch.no_grad():
        loaded.network.head.bias -= 40.0
        loaded.network.fine[1].bias -= 40.0
    weights.save(loaded.network, {**loaded.card, "name": "silent"}, path)


def test_a_silent_cnn_falls_back_to_the_classical_evidence_and_says_so(scene, tmp_path) -> None:
    import json

    import geopandas as gpd

    from detector.cli import main

    silent_model(tmp_path / "silent.pt")
    runs = {}
    for name, extra in (("classical", ["--method", "classical"]), ("fused", []),
                        ("silent", ["--model", str(tmp_path / "silent.pt")])):
        assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--sites",
                     str(scene.sites), "--out", str(tmp_path / name), *extra]) == 0
        runs[name] = (json.loads((tmp_path / name / "run.json").read_text()),
                      gpd.read_file(tmp_path / name / "sites.geojson").set_index("site_id"))
    record, sites = runs["silent"]
    assert record["fusion_applied"]["rule"] == "classical" and not record["fusion_applied"]["in_domain"]
    assert record["fusion_applied"]["agreement"] == 0.0 and record["method"] == "fused"
    assert (sites["method"] == "classical").all()
    assert "classical: the CNN agrees on 0.0% of the classically changed pixels" in (
        tmp_path / "silent" / "report.html").read_text(encoding="utf-8")
    assert sites["flagged"].equals(runs["classical"][1]["flagged"])  # the classical evidence is not vetoed
    assert sites["flagged"].any()
    fused_record, fused_sites = runs["fused"]
    assert fused_record["fusion_applied"]["rule"] == "fused" and (fused_sites["method"] == "fused").all()
