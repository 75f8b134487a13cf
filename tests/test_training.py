"""Training data, the training loop and ``evaluate``: generated pairs and the real data in ../shared."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from conftest import SHARED, Scene

from detector import weights
from detector.cli import main
from detector.errors import InputError
from detector.model import MODEL_BANDS, build
from training.augment import augment_batch, paste_change
from training.datasets import cut_tiles, load_scenes, split
from training.evaluation import confusion, pixel_metrics, pr_curve
from training.train import TrainConfig, loss_fn, train


def write_png(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="PNG", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="uint8") as dst:
        dst.write(data.astype(np.uint8))


def make_pairs(folder: Path, count: int = 4, size: int = 64, seed: int = 0) -> Path:
    """LEVIR-style A/ B/ label/ PNGs: textured ground, a bright block built in B, labelled."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        ground = rng.uniform(60, 120, (3, size, size))
        after = ground + rng.normal(0, 4, ground.shape)
        label = np.zeros((1, size, size))
        r, c = rng.integers(4, size - 20, 2)
        after[:, r:r + 14, c:c + 14] = 230
        label[:, r:r + 14, c:c + 14] = 255
        write_png(folder / "A" / f"{i}.png", ground)
        write_png(folder / "B" / f"{i}.png", after)
        write_png(folder / "label" / f"{i}.png", label)
    return folder


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pairs(tmp_path_factory.mktemp("pairs"))


def test_pair_folders_become_scenes_and_block_split_tiles(pairs: Path) -> None:
    scenes = load_scenes(pairs)
    assert len(scenes) == 4 and scenes[0].names == ("red", "green", "blue")
    assert set(np.unique(scenes[0].target)) == {0.0, 1.0}
    tiles = cut_tiles(scenes, 32, scales=(1, 2))
    assert tiles.inputs.shape == (4 * (4 + 1), 12, 32, 32)
    train_idx, val_idx = split(tiles, val_fraction=0.25, rng=np.random.default_rng(0))
    assert len(val_idx) == 5 and set(tiles.block[train_idx]).isdisjoint(tiles.block[val_idx])


def test_unknown_folders_are_refused_with_the_layouts_expected(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(InputError, match="A/ B/ label/"):
        load_scenes(tmp_path / "nothing")


OSCD = SHARED / "oscd-dev"


@pytest.mark.real_data
@pytest.mark.skipif(not OSCD.is_dir(), reason="../shared/data/oscd-dev is not beside the checkout")
def test_an_oscd_city_reads_onto_the_date_1_grid_with_its_change_map() -> None:
    (scene,) = load_scenes(OSCD / "saclay_e")  # date 2 is on another grid there
    assert scene.names == MODEL_BANDS
    assert scene.before.shape == scene.after.shape and scene.target.shape == scene.before.shape[1:]
    assert 0.005 < np.nanmean(scene.target) < 0.03
    assert np.isfinite(scene.after).mean() > 0.99


def test_reviewed_sites_give_weakly_labelled_scenes(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["-q", "run", "--sites", str(scene.sites), "--before", str(scene.before), "--after",
                 str(scene.after), "--out", str(out), "--buffer-m", "250", "--method", "classical"]) == 0
    sites = gpd.read_file(out / "sites.geojson")
    sites["review_status"] = sites["site_id"].map({"compound": "confirmed", "quiet": "rejected"}).fillna("")
    sites.to_file(out / "sites.geojson", driver="GeoJSON")
    scenes = {s.name.split("/")[-1]: s for s in load_scenes(out)}
    assert set(scenes) == {"compound", "quiet"}
    assert scenes["compound"].weak == 1.0 and np.isnan(scenes["compound"].target).all()
    quiet = scenes["quiet"].target
    assert np.isnan(scenes["quiet"].weak) and np.nanmax(quiet) == 0 and np.isnan(quiet).any()
    tiles = cut_tiles(list(scenes.values()), 32)
    assert np.nansum(tiles.weak) > 0


def test_augmentation_keeps_shapes_and_labels_with_their_pixels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 12, 16, 16)).astype(np.float32)
    y = np.zeros((8, 16, 16), np.float32)
    y[:, :4, :6] = 1
    x[:, 2, :4, :6] = 5.0  # the before red band marks the changed corner
    ax, ay = augment_batch(x, y, rng, band_drop=0, max_shift=0, gain=0, offset=0, noise=0, zoom=1)
    assert ax.shape == x.shape and ay.shape == y.shape and ay.sum() == y.sum()
    marked = (ax[:, 2] == 5.0) | (ax[:, 8] == 5.0)  # the dates may be swapped
    assert np.array_equal(marked, ay == 1)
    assert not np.array_equal(ay, y)  # some tiles were turned or flipped
    dropped, _ = augment_batch(x, y, rng, band_drop=1.0)
    assert np.all(dropped[:, [3, 4, 5, 9, 10, 11]] == 0)
    zoomed, zy = augment_batch(x, y, rng, zoom=2.0, zoom_share=1.0)
    assert zoomed.shape == x.shape and zy.shape == y.shape
    assert set(np.unique(zy)) <= {0.0, 1.0} and not np.array_equal(zy, y)  # labels stay labels


def test_pasted_change_lands_in_the_after_date_only_with_its_label() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 12, 16, 16)).astype(np.float32)
    y = np.zeros((6, 16, 16), np.float32)
    y[0, 2:8, 3:7] = 1  # the one donor: 24 changed pixels
    x[0, 6:, 2:8, 3:7] = 9.0  # its after date there
    x[4, [9, 10, 11]] = 0.0  # SWIR and NIR missing in one tile
    y[5] = np.nan  # a tile without labels
    px, py = paste_change(x, y, rng, share=1.0)
    assert np.array_equal(px[:, :6], x[:, :6])  # the before dates stay their own
    for i in (1, 2, 3, 4):  # every other labelled tile got the donor's change, turned or flipped
        assert py[i].sum() == 24 and np.array_equal(px[i, 6] == 9.0, py[i] == 1)
    assert np.all(px[4, [9, 10, 11]] == 0)  # a band the tile lacks is not pasted in
    assert np.all(np.isnan(py[5])) and np.array_equal(px[5], x[5])  # nor onto ground of unknown label
    assert np.array_equal(py[0], y[0])  # the donor keeps its own change
    same, _ = paste_change(x, y, rng, share=0.0)
    assert np.array_equal(same, x)
    with pytest.raises(InputError, match="--paste"):
        TrainConfig(data=(), out=Path("m.pt"), paste=1.5)


def test_one_training_step_lowers_the_loss_on_a_tiny_batch() -> None:
    torch.manual_seed(0)
    net = build("ef-fpn-s")
    x = torch.randn(4, 12, 32, 32)
    y = torch.zeros(4, 32, 32)
    y[:, 8:16, 8:16] = 1
    x[:, 8, 8:16, 8:16] += 3
    weak = torch.full((4,), float("nan"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
    net.train()
    first = loss_fn(net(x), y, weak)
    first.backward()
    optimizer.step()
    with torch.no_grad():
        second = loss_fn(net(x), y, weak)
    assert second.item() < first.item()


def test_the_loss_ignores_unknown_pixels_and_uses_weak_labels() -> None:
    logits = torch.zeros(2, 1, 8, 8)
    unknown = torch.full((2, 8, 8), float("nan"))
    weak = torch.tensor([1.0, float("nan")])
    assert torch.isclose(loss_fn(logits, unknown, weak), torch.tensor(np.log(2.0), dtype=torch.float32))
    logits[0, 0, 3, 3] = 10.0  # the weak positive is met by one confident pixel
    assert loss_fn(logits, unknown, weak).item() < 1e-3


def tiny_config(pairs: Path, out: Path, seed: int) -> TrainConfig:
    return TrainConfig(data=(pairs,), out=out, tile_px=32, batch=4, epochs=2, steps_per_epoch=3, seed=seed,
                       val_fraction=0.25)


def test_the_same_seed_gives_the_same_weights(pairs: Path, tmp_path: Path) -> None:
    runs = [train(tiny_config(pairs, tmp_path / f"{i}.pt", seed)) for i, seed in enumerate((3, 3, 4))]
    states = [weights.load(tmp_path / f"{i}.pt", for_training=True).network.state_dict() for i in range(3)]
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])
    assert runs[0]["history"] == runs[1]["history"] and runs[0]["seed"] == 3


def test_metrics_on_a_hand_made_case() -> None:
    prob = np.array([0.9, 0.8, 0.3, 0.6, 0.1, np.nan, 0.7])
    target = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 1.0, np.nan])
    counts = confusion(prob, target)
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 1)
    m = pixel_metrics(prob, target)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["iou"] == pytest.approx(0.5)
    assert m["ap"] == pytest.approx((1 + 1 + 3 / 4) / 3)  # positives at ranks 1, 2, 4
    precision, recall = pr_curve(prob, target, points=11)
    assert recall[0] == 1 and precision[0] == pytest.approx(3 / 5) and recall[-1] == 0


def constant_model(path: Path, logit: float) -> Path:
    """A model whose output is ``logit`` everywhere: its metrics are known by hand."""
    net = build("ef-fpn-s")
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.fill_(logit)
        net.fine[-1].weight.zero_()
        net.fine[-1].bias.zero_()
    weights.save(net, {"name": f"constant {logit}", "architecture": "ef-fpn-s", "bands": list(MODEL_BANDS),
                       "tile_px": 64}, path)
    return path


def test_evaluate_gives_the_right_numbers_on_a_hand_made_case(pairs: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    share = float(np.mean([np.nanmean(s.target) for s in load_scenes(pairs)]))  # all scenes 64 x 64
    always = constant_model(tmp_path / "always.pt", 8.0)
    assert main(["-q", "evaluate", "--data", str(pairs), "--model", str(always), "--out", str(tmp_path / "a"),
                 "--tile-px", "64"]) == 0
    report = json.loads((tmp_path / "a" / "metrics.json").read_text())["overall"]
    assert report["recall"] == 1.0 and report["precision"] == pytest.approx(share)
    assert report["iou"] == pytest.approx(share) and report["pixels"] == 4 * 64 * 64
    assert (tmp_path / "a" / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    never = constant_model(tmp_path / "never.pt", -8.0)
    assert main(["-q", "evaluate", "--data", str(pairs), "--model", str(never), "--out", str(tmp_path / "n")]) == 0
    report = json.loads((tmp_path / "n" / "metrics.json").read_text())["overall"]
    assert report["recall"] == 0 and report["tp"] == 0 and report["fn"] == pytest.approx(report["pixels"] * share)
    assert "overall" in capsys.readouterr().out


def test_train_then_run_with_the_new_model_from_the_command_line(pairs: Path, scene: Scene, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "m.pt"
    args = ["-q", "train", "--data", str(pairs), "--out", str(model), "--epochs", "1", "--steps", "2",
            "--tile-px", "32", "--batch", "4"]
    assert main(args) == 0 and "best epoch 1" in capsys.readouterr().out
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    out = tmp_path / "run"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--model", str(model), "--method", "cnn", "--cell-m", "600"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["method"] == "cnn" and record["model"]["path"] == str(model)
    assert record["model"]["sha256"] == weights.load(model).sha256
    assert record["model"]["standardized_over_px"] == 64  # the ground of its 32-px tiles at scale 2


def test_bad_training_inputs_get_one_line_and_status_2(pairs: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    grey = tmp_path / "grey"
    for side in ("A", "B", "label"):
        write_png(grey / side / "0.png", np.zeros((1, 32, 32)))
    broken = make_pairs(tmp_path / "broken", count=1)
    (broken / "B" / "0.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "folder.pt").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "sites.geojson").write_text("a run's results")
    cases = [
        ["train", "--data", str(grey), "--out", str(tmp_path / "m.pt")],
        ["train", "--data", str(broken), "--out", str(tmp_path / "m.pt")],
        ["train", "--data", str(pairs), "--out", str(tmp_path / "folder.pt"), "--overwrite"],
        ["train", "--data", str(pairs), "--out", str(tmp_path / "m.pt"), "--steps", "0"],
        ["evaluate", "--data", str(pairs), "--out", str(tmp_path / "file")],
        ["evaluate", "--data", str(pairs), "--out", str(tmp_path / "e"), "--scale", "0"],
        ["evaluate", "--data", str(pairs), "--out", str(tmp_path / "results")],  # files not its own
    ]
    for args in cases:
        assert main(["-q", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("detector: error:"), (args, err)
    assert not (tmp_path / "m.pt").exists()
    assert [p.name for p in (tmp_path / "results").iterdir()] == ["sites.geojson"]


def test_fine_tuning_keeps_the_architecture_of_the_model_it_starts_from(pairs: Path, tmp_path: Path) -> None:
    first = TrainConfig(data=(pairs,), out=tmp_path / "m.pt", architecture="ef-fpn-m", tile_px=32, batch=4,
                        epochs=1, steps_per_epoch=1)
    train(first)
    tuned = TrainConfig(data=(pairs,), out=tmp_path / "tuned.pt", init=tmp_path / "m.pt", tile_px=32, batch=4,
                        epochs=1, steps_per_epoch=1, keep_worse=True)
    assert train(tuned)["architecture"] == "ef-fpn-m"
    assert weights.load(tmp_path / "tuned.pt").card["architecture"] == "ef-fpn-m"


def test_a_run_made_in_another_folder_is_read_by_its_absolute_paths(scene: Scene, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    work = tmp_path / "work"
    work.mkdir()
    for path in (scene.before, scene.after, scene.sites):
        shutil.copy(path, work / path.name)
    monkeypatch.chdir(work)  # relative paths, as a user types them
    assert main(["-q", "run", "--sites", scene.sites.name, "--before", scene.before.name, "--after",
                 scene.after.name, "--out", "run", "--buffer-m", "250", "--method", "classical"]) == 0
    sites = gpd.read_file(work / "run" / "sites.geojson")
    sites["review_status"] = sites["site_id"].map({"compound": "confirmed", "quiet": "rejected"}).fillna("")
    sites.to_file(work / "run" / "sites.geojson", driver="GeoJSON")
    monkeypatch.chdir(tmp_path)  # elsewhere
    assert {s.name.split("/")[-1] for s in load_scenes(work / "run")} == {"compound", "quiet"}


@pytest.mark.slow
def test_a_fine_tuned_model_worse_than_its_start_is_not_written_unless_asked(pairs: Path, tmp_path: Path) -> None:
    good = TrainConfig(data=(pairs,), out=tmp_path / "good.pt", tile_px=32, batch=4, epochs=4, steps_per_epoch=6)
    start_ap = train(good)["metrics"]["validation"]["ap"]
    ruined = TrainConfig(data=(pairs,), out=tmp_path / "ruined.pt", init=tmp_path / "good.pt", tile_px=32, batch=4,
                         epochs=1, steps_per_epoch=3, lr=5.0)  # a learning rate that wrecks it
    with pytest.raises(InputError, match=r"under the .* it started from: nothing written"):
        train(ruined)
    assert not (tmp_path / "ruined.pt").exists()
    card = train(replace(ruined, keep_worse=True))
    assert card["metrics"]["starting_model"]["ap"] == pytest.approx(start_ap, abs=1e-3)
    assert card["metrics"]["validation"]["ap"] < start_ap and (tmp_path / "ruined.pt").exists()


def test_training_on_an_unreviewed_run_says_no_site_was_reviewed(scene: Scene, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert main(["-q", "run", "--sites", str(scene.sites), "--before", str(scene.before), "--after",
                 str(scene.after), "--out", str(out), "--method", "classical"]) == 0
    assert main(["-q", "train", "--reviews", str(out / "sites.geojson"), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no confirmed or rejected site" in err[0]


def test_strong_radiometry_distorts_the_dates_and_keeps_missing_bands_zero() -> None:
    from training.augment import radiometry

    rng = np.random.default_rng(1)
    x = np.sort(rng.normal(size=(12, 8, 8)).astype(np.float32).ravel()).reshape(12, 8, 8)
    x[3:6] = 0.0  # NIR and SWIR missing
    out = radiometry(x, 6, rng)
    assert out.shape == x.shape and out.dtype == np.float32 and np.all(out[3:6] == 0)
    assert not np.allclose(out, x)
    plain, _ = augment_batch(x[None], np.zeros((1, 8, 8), np.float32), np.random.default_rng(2))
    strong, _ = augment_batch(x[None], np.zeros((1, 8, 8), np.float32), np.random.default_rng(2), strength="strong")
    assert not np.allclose(plain, strong)


def test_bands_names_the_bands_of_image_pairs_for_train_and_evaluate(pairs: Path, tmp_path: Path, capsys) -> None:
    scenes = load_scenes(pairs, bands="blue,green,-")
    assert scenes[0].names == ("blue", "green") and scenes[0].before.shape[0] == 2
    assert np.array_equal(scenes[0].before, load_scenes(pairs)[0].before[:2])
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", "--data", str(pairs), "--out", str(out), "--bands", "planet-4"]) == 2
    assert "--bands planet-4 describes 4 bands" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "evaluate", "--data", str(pairs), "--out", str(out), "--bands", "b,g,r"]) == 0
    assert main(["-q", "train", "--data", str(pairs), "--out", str(tmp_path / "m.pt"), "--epochs", "1", "--steps",
                 "1", "--tile-px", "32", "--bands", "blue,red,green"]) == 0
    assert weights.load(tmp_path / "m.pt").card["settings"]["bands"] == "blue,red,green"


def test_a_model_that_reads_the_classical_evidence_trains_and_runs(pairs: Path, scene: Scene, tmp_path: Path) -> None:
    tiles = cut_tiles(load_scenes(pairs), 32, evidence=("classical",))
    assert tiles.inputs.shape[1] == 2 * len(MODEL_BANDS) + 1
    evidence = tiles.inputs[:, -1]
    built = tiles.target >= 0.5
    assert evidence.min() >= 0 and evidence.max() <= 1
    assert evidence[built].mean() > 3 * evidence[tiles.target == 0].mean()  # the planted blocks stand out
    model = tmp_path / "m.pt"
    assert main(["-q", "train", "--data", str(pairs), "--out", str(model), "--epochs", "1", "--steps", "2",
                 "--tile-px", "32", "--batch", "4", "--evidence", "classical"]) == 0
    assert weights.load(model).evidence == ("classical",)
    tuned = TrainConfig(data=(pairs,), out=tmp_path / "tuned.pt", init=model, tile_px=32, batch=4, epochs=1,
                        steps_per_epoch=1, keep_worse=True)
    assert train(tuned)["evidence"] == ["classical"]  # the model fine-tuned keeps what it reads
    out = tmp_path / "run"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--model", str(model), "--method", "cnn", "--cell-m", "600"]) == 0
    assert json.loads((out / "run.json").read_text())["model"]["evidence"] == ["classical"]
    assert main(["-q", "evaluate", "--data", str(pairs), "--model", str(model), "--out", str(tmp_path / "e"),
                 "--tile-px", "32"]) == 0  # evaluated with the evidence it reads
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["model"]["evidence"] == ["classical"]


def test_cross_city_folds_stay_those_of_every_city_when_some_are_chosen(tmp_path: Path) -> None:
    """``scripts/eval_oscd.py --folds 5 --cities ...``: fold i is still sorted(all cities)[i::5], so a kept
    fold model is the one its name says (cut over four chosen cities, "fold 2" was trained on all but cupertino)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_oscd import fold_plan

    every = [tmp_path / name for name in ("a", "b", "c", "d", "e", "f", "g", "h", "i", "j")]
    models = tmp_path / "models"
    models.mkdir()
    for i in range(5):
        (models / f"fold{i}of5.pt").write_bytes(b"kept")  # present: nothing is trained
    plan = fold_plan(every, [every[0], every[4], every[5]], 5, models)
    assert [(c.name, m.name) for c, m in plan] == [("a", "fold0of5.pt"), ("f", "fold0of5.pt"), ("e", "fold4of5.pt")]
