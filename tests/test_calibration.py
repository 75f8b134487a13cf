"""The CNN calibrated to the scene (detector/calibration.py): pure arrays, then a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector import calibration
from detector.calibration import MAX_SHIFT, NONE, agreement, apply, calibrate, counts
from detector.fusion import near


def squeezed(seed: int, *, scale: float, changed: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """Classical scores with ``changed`` pixels over 0.5, and a CNN that ranks the same pixels highest but whose
    probabilities are squeezed by ``scale`` (a collapsed CNN: small ``scale``)."""
    rng = np.random.default_rng(seed)
    classical = rng.uniform(0, 0.4, (4, 64, 64)).astype(np.float32)
    flat = classical.reshape(-1)
    hot = rng.choice(flat.size, changed, replace=False)
    flat[hot] = rng.uniform(0.6, 1.0, changed)
    cnn = (scale * (0.1 + 0.8 * classical)).astype(np.float32)
    return classical, cnn


def matched(classical: np.ndarray, cnn: np.ndarray) -> calibration.Calibration:
    every = np.ones(len(classical), bool)
    return calibrate(counts(classical, cnn, near(cnn, reach=1), every, pixel_threshold=0.5), min_changed=200)


@pytest.mark.parametrize("scale", [0.05, 0.3, 1.0])
def test_the_cnn_is_shifted_to_call_as_many_pixels_changed_as_the_classical_evidence(scale: float) -> None:
    classical, cnn = squeezed(0, scale=scale)
    found = matched(classical, cnn)
    called = (apply(cnn, found) >= 0.5).sum()
    assert found.matched_px == (classical >= 0.5).sum() == 400
    assert not found.limited and abs(called - 400) <= 0.02 * 400
    assert found.shift > 0 if scale < 0.5 else found.shift < 2.0  # a collapsed CNN is lifted


def test_too_little_change_to_match_leaves_the_cnn_as_it_is() -> None:
    classical, cnn = squeezed(1, scale=0.05, changed=150)
    found = matched(classical, cnn)
    assert found.shift == 0.0 and found.cnn_at is None and found.matched_px == 150
    assert apply(cnn, found) is cnn and apply(cnn, NONE) is cnn


def test_the_shift_is_limited_and_says_so() -> None:
    classical, cnn = squeezed(2, scale=1e-4)  # far beyond what the shift may lift
    found = matched(classical, cnn)
    assert found.shift == MAX_SHIFT and found.limited
    assert (apply(cnn, found) >= 0.5).sum() == 0  # a silent CNN stays silent: the domain check sees it
    assert found.record()["limited"] and found.record()["max_shift_logit"] == MAX_SHIFT


@settings(max_examples=30, deadline=None)
@given(st.floats(-MAX_SHIFT, MAX_SHIFT), st.integers(0, 2**16))
def test_the_shift_keeps_the_order_of_pixels_and_nodata(shift: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, 200).astype(np.float32)
    prob[:5] = np.nan
    out = apply(prob, calibration.Calibration(shift, 1000, 0.5, False))
    assert np.isnan(out[:5]).all() and np.all((out[5:] >= 0) & (out[5:] <= 1))
    order = np.argsort(prob[5:], kind="stable")
    assert np.all(np.diff(out[5:][order]) >= -1e-6)


def test_agreement_counts_the_calibrated_cnn_near_the_classically_changed_pixels() -> None:
    classical, cnn = squeezed(3, scale=0.2)
    nearby = near(cnn, reach=1)
    total = counts(classical, cnn, nearby, np.ones(len(cnn), bool), pixel_threshold=0.5)
    found = calibrate(total, min_changed=200)
    changed, agreed = agreement(total, found, agrees_at=0.5)
    direct = ((classical >= 0.5) & (apply(nearby, found) >= 0.5)).sum()
    assert changed == 400 and abs(int(agreed) - int(direct)) <= 0.02 * 400


def test_tiles_not_considered_count_below_every_cnn_probability() -> None:
    classical, cnn = squeezed(4, scale=0.3)
    considered = np.array([True, True, False, False])
    classical[2:] = np.minimum(classical[2:], 0.2)  # no change there: the prefilter would skip them
    total = counts(classical, cnn, near(cnn, reach=1), considered, pixel_threshold=0.5)
    assert total[:calibration.BINS].sum() == classical[:2].size


def test_a_run_records_the_calibration_and_fused_and_cnn_share_it(scene, tmp_path) -> None:
    from detector.cli import main

    shifts = {}
    for method in ("cnn", "fused"):
        out = tmp_path / method
        assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                     "--method", method, "--cell-m", "300"]) == 0
        applied = json.loads((out / "run.json").read_text())["fusion_applied"]
        shifts[method] = applied["calibration"]["shift_logit"]
        assert applied["calibration"]["classical_changed_px"] >= 200
        assert "the CNN calibrated to the scene by" in applied["why"]
        assert "the CNN calibrated to the scene by" in (out / "report.html").read_text(encoding="utf-8")
    assert shifts["cnn"] == shifts["fused"]
