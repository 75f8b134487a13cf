"""The change CNN: shapes, parameter budget, band adapter, prediction and safe loading."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from detector import weights
from detector.adapter import local_stats, standardize
from detector.cli import main
from detector.errors import InputError, MissingFileError
from detector.methods import default_model_path
from detector.model import ARCHITECTURES, MODEL_BANDS, STRIDE, adapt, build, fuse_batchnorm, parameter_count, predict


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_logits_have_the_input_size_and_the_net_is_small(name: str) -> None:
    net = build(name).eval()
    x = torch.randn(2, 2 * len(MODEL_BANDS), 64, 96)
    assert net(x).shape == (2, 1, 64, 96)
    assert parameter_count(net) <= 1_500_000


def test_predict_pads_any_tile_size_and_returns_probabilities() -> None:
    net = build("ef-fpn-s")
    inputs = np.random.default_rng(0).normal(size=(3, 12, 50, 37)).astype(np.float32)
    prob = predict(net, inputs, batch=2)
    assert prob.shape == (3, 50, 37) and prob.dtype == np.float32
    assert np.all((prob >= 0) & (prob <= 1))
    assert 50 % STRIDE != 0  # the case that needs padding


def test_folding_batch_norm_keeps_the_output() -> None:
    torch.manual_seed(0)
    net = build("ef-fpn-s")
    net.train()
    net(torch.randn(4, 12, 32, 32))  # moves the running statistics off their defaults
    net.eval()
    x = torch.randn(2, 12, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(net(x), fuse_batchnorm(net)(x.contiguous(memory_format=torch.channels_last)),
                              atol=1e-4)


def test_adapter_places_bands_and_fills_missing_ones_with_zero() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.uniform(0, 255, (2, 3, 32, 32)).astype(np.float32)
    rgb[0, :, :4] = np.nan
    out = adapt(rgb, rgb * 1.7 + 20, ("red", "green", "blue"))
    assert out.shape == (2, 12, 32, 32) and np.isfinite(out).all()
    assert np.all(out[:, [3, 4, 5, 9, 10, 11]] == 0)  # nir, swir16, swir22 of both dates
    assert np.allclose(out[:, 2], out[:, 8], atol=1e-4)  # red: a gain and offset between dates is not change
    assert np.all(out[0, :, :4] == 0)  # nodata
    assert not np.allclose(out[:, 0], out[:, 2])  # blue and red land in their own slots


def test_adapter_survives_flat_and_empty_tiles() -> None:
    flat = np.full((1, 1, 16, 16), 7.0, dtype=np.float32)
    empty = np.full((1, 1, 16, 16), np.nan, dtype=np.float32)
    for tile in (flat, empty):
        assert np.all(adapt(tile, tile, ("red",)) == 0)


def test_a_window_as_large_as_the_tile_standardizes_as_the_whole_tile() -> None:
    x = np.random.default_rng(2).normal(100, 10, (2, 96, 80)).astype(np.float32)
    x[0, :10, :20] = np.nan
    whole = standardize(x)
    assert np.array_equal(standardize(x, 96), whole) and np.array_equal(standardize(x, 500), whole)


def test_each_pixel_is_standardized_against_the_ground_around_it() -> None:
    """A tile of dark fields and a bright town: with windows of the training tiles' size each part is
    centred on its own median and keeps its texture, which the whole tile's spread squashes; no seam
    along the windows' borders."""
    rng = np.random.default_rng(3)
    x = rng.normal(100, 5, (1, 512, 512)).astype(np.float32)
    x[:, :, 256:] += 400
    local, whole = standardize(x, 128), standardize(x)
    assert abs(np.median(local[0, :, :128])) < 0.2 and abs(np.median(local[0, :, 384:])) < 0.2
    assert 0.8 < local[0, :, :128].std() < 1.2 and whole[0, :, :128].std() < 0.05
    ramp = np.broadcast_to(np.linspace(0, 50, 512, dtype=np.float32), (1, 512, 512)).copy()
    assert np.abs(np.diff(standardize(ramp, 128)[0], axis=1)).max() < 0.2  # smooth: no step at 128, 256...


def test_a_window_without_data_takes_the_tiles_statistics() -> None:
    x = np.full((1, 300, 300), np.nan, np.float32)
    x[0, :, :60] = np.random.default_rng(4).normal(50, 2, (300, 60))
    centre, spread = local_stats(x, 100)
    assert np.allclose(centre[0, :, 200:], centre[0, 150, 30], atol=1.0)
    assert np.isfinite(spread).all() and (spread > 0).all()
    assert np.all(standardize(np.full((1, 300, 300), np.nan, np.float32), 100) == 0)


def saved_model(path: Path, **card_changes: object) -> Path:
    card = {"name": "t", "architecture": "ef-fpn-s", "bands": list(MODEL_BANDS), "tile_px": 64, **card_changes}
    weights.save(build("ef-fpn-s"), card, path)
    return path


def test_a_saved_model_loads_with_its_card_and_hash(tmp_path: Path) -> None:
    loaded = weights.load(saved_model(tmp_path / "m.pt"))
    assert loaded.card["tile_px"] == 64 and len(loaded.sha256) == 64
    assert loaded.record()["architecture"] == "ef-fpn-s"
    assert not list(tmp_path.glob(".*tmp"))


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": weights.FORMAT, "version": 1, "card": "{}", "state_dict": RunsCode(marker)}, evil)
    with pytest.raises(InputError, match="refused"):
        weights.load(evil)
    assert not marker.exists()
    with evil.open("wb") as f:  # a plain pickle, not even a torch file
        pickle.dump(RunsCode(marker), f)
    with pytest.raises(InputError):
        weights.load(evil)
    assert not marker.exists()


def test_files_that_are_not_our_models_are_refused(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model at all")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="refused"):
        weights.load(junk)
    with pytest.raises(InputError, match="not a site-change-detector"):
        weights.load(other)
    with pytest.raises(MissingFileError):
        weights.load(tmp_path / "absent.pt")
    with pytest.raises(InputError, match="expects bands"):
        weights.load(saved_model(tmp_path / "bands.pt", bands=["red", "green", "blue"]))
    with pytest.raises(InputError, match="architecture"):
        weights.load(saved_model(tmp_path / "arch.pt", architecture="resnet50"))


def test_bands_and_tile_size_are_checked_against_the_imagery(tmp_path: Path) -> None:
    loaded = weights.load(saved_model(tmp_path / "m.pt"))
    loaded.check_bands(("red", "green", "blue"))
    with pytest.raises(InputError, match="needs bands red"):
        loaded.check_bands(("blue", "green", "nir"))
    loaded.check_tile(32)
    with pytest.raises(InputError, match="too small"):
        loaded.check_tile(16)


def test_run_refuses_a_bad_model_with_one_line_and_status_2(scene, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"x": RunsCode(marker)}, evil)
    out = tmp_path / "out"
    code = main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--model", str(evil)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(evil) in err
    assert not marker.exists() and not out.exists()
    small = saved_model(tmp_path / "m.pt", tile_px=512)
    code = main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--model", str(small), "--tile-px", "128"])
    assert code == 2 and "too small" in capsys.readouterr().err
    # 10 m pixels are scored one by one by default: tiles of 256 px are 256 px for the model, on blocks 128
    args = ["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--model", str(small),
            "--tile-px", "256", "--sites", str(scene.sites)]
    assert main([*args, "--out", str(out)]) == 0
    assert main([*args, "--out", str(tmp_path / "blocks"), "--bin", "2"]) == 2
    assert "tiles of 128 px are too small" in capsys.readouterr().err


def test_the_shipped_weights_load_and_say_what_they_are() -> None:
    loaded = weights.load(default_model_path())
    card = loaded.card
    assert card["name"] == "default" and card["parameters"] <= 1_500_000
    assert set(card["held_out"]["cities"]).isdisjoint(card["trained_on"])
    assert card["metrics"]["validation"]["ap"] > 0


def test_a_model_with_the_classical_method_is_refused(scene, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out",
                 str(tmp_path / "out"), "--method", "classical", "--model", str(default_model_path())])
    assert code == 2 and "--model" in capsys.readouterr().err


def test_a_folder_given_as_model_is_named_a_folder(scene, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out",
                 str(tmp_path / "out"), "--model", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
