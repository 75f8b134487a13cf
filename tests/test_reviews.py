"""Review fields carried over between runs, a reviewer's budget, and verdicts back into training."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from conftest import Scene

from detector import weights
from detector.cli import main
from detector.methods import default_model_path
from detector.scoring import threshold_for_max_flags, threshold_for_precision

UYGHUR, CHINESE = "ئۈرۈمچى", "乌鲁木齐"


def run(scene: Scene, out: Path, *extra: str | Path) -> int:
    return main(["-q", "run", "--sites", str(scene.sites), "--before", str(scene.before), "--after",
                 str(scene.after), "--out", str(out), "--buffer-m", "250", "--method", "classical",
                 *map(str, extra)])


def review(path: Path, verdicts: dict[str, tuple[str, str, str]]) -> None:
    sites = gpd.read_file(path)
    for site_id, (status, reviewer, notes) in verdicts.items():
        row = sites["site_id"] == site_id
        sites.loc[row, ["review_status", "reviewer", "notes"]] = [status, reviewer, notes]
    sites.to_file(path, driver="GeoJSON")


def test_verdicts_survive_a_rerun_and_sites_that_leave_are_kept(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run(scene, out) == 0
    first = gpd.read_file(out / "sites.geojson")
    assert set(first["review_status"]) == {"unreviewed"}
    review(out / "sites.geojson", {"compound": ("confirmed", "Ayşe", f"new walls, {UYGHUR} / {CHINESE}"),
                                   "quiet": ("rejected", "B", "")})
    assert run(scene, out, "--overwrite") == 0
    again = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert again.loc["compound", "review_status"] == "confirmed"
    assert again.loc["compound", "notes"] == f"new walls, {UYGHUR} / {CHINESE}"
    assert again.loc["quiet", "reviewer"] == "B" and again.loc["green field", "review_status"] == "unreviewed"
    fewer = tmp_path / "fewer.geojson"
    collection = json.loads(scene.sites.read_text())
    collection["features"] = [f for f in collection["features"] if f["properties"]["name"] != "quiet"]
    fewer.write_text(json.dumps(collection))
    assert main(["-q", "run", "--sites", str(fewer), "--before", str(scene.before), "--after", str(scene.after),
                 "--out", str(out), "--buffer-m", "250", "--method", "classical", "--overwrite"]) == 0
    kept = gpd.read_file(out / "reviews-kept.geojson")
    assert list(kept["site_id"]) == ["quiet"] and kept["review_status"].iloc[0] == "rejected"
    assert run(scene, out, "--overwrite") == 0  # quiet comes back with its verdict
    assert gpd.read_file(out / "sites.geojson").set_index("site_id").loc["quiet", "review_status"] == "rejected"
    assert len(gpd.read_file(out / "reviews-kept.geojson")) == 0  # nothing left to keep
    review(out / "sites.geojson", {"quiet": ("unsure", "B", "changed my mind")})
    assert run(scene, out, "--overwrite") == 0  # the newer verdict wins over the one once kept
    assert gpd.read_file(out / "sites.geojson").set_index("site_id").loc["quiet", "review_status"] == "unsure"
    other = tmp_path / "other.geojson"
    review_file = gpd.read_file(out / "sites.geojson")
    review_file.to_file(other, driver="GeoJSON")
    review(other, {"green field": ("rejected", "C", "")})
    assert run(scene, out, "--overwrite", "--reviews", other) == 0  # both the folder's and the file's verdicts
    merged = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert merged.loc["green field", "review_status"] == "rejected"
    assert merged.loc["compound", "review_status"] == "confirmed"


def test_a_cell_verdict_stays_with_its_ground(scene: Scene, tmp_path: Path) -> None:
    cells = ["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(tmp_path),
             "--method", "classical", "--chips", "0"]
    assert main([*cells, "--cell-m", "300"]) == 0
    review(tmp_path / "sites.geojson", {"r0c0": ("rejected", "D", "")})
    assert main([*cells, "--cell-m", "200", "--overwrite"]) == 0  # r0c0 now names a smaller square
    assert gpd.read_file(tmp_path / "sites.geojson").set_index("site_id").loc["r0c0", "review_status"] == "unreviewed"
    assert list(gpd.read_file(tmp_path / "reviews-kept.geojson")["site_id"]) == ["r0c0"]
    assert main([*cells, "--cell-m", "300", "--overwrite"]) == 0  # the same ground again: the verdict returns
    assert gpd.read_file(tmp_path / "sites.geojson").set_index("site_id").loc["r0c0", "review_status"] == "rejected"


def test_reviews_from_another_file_and_bad_statuses(scene: Scene, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert run(scene, tmp_path / "a") == 0
    review(tmp_path / "a" / "sites.geojson", {"compound": ("unsure", "C", "<script>alert(1)</script>")})
    assert run(scene, tmp_path / "b", "--reviews", tmp_path / "a" / "sites.geojson") == 0
    carried = gpd.read_file(tmp_path / "b" / "sites.geojson").set_index("site_id")
    assert carried.loc["compound", "notes"] == "<script>alert(1)</script>"
    review(tmp_path / "a" / "sites.geojson", {"compound": ("maybe", "C", "")})
    assert run(scene, tmp_path / "c", "--reviews", tmp_path / "a" / "sites.geojson") == 2
    err = capsys.readouterr().err
    assert "maybe" in err and "unreviewed, confirmed, rejected, unsure" in err and not (tmp_path / "c").exists()


def test_max_flags_and_target_precision_set_the_threshold(scene: Scene, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    assert run(scene, tmp_path / "none", "--max-flags", "0") == 0
    sites = gpd.read_file(tmp_path / "none" / "sites.geojson")
    record = json.loads((tmp_path / "none" / "run.json").read_text())
    assert not sites["flagged"].any() and record["threshold"]["chosen_by"] == "--max-flags 0"
    assert record["threshold"]["value"] > sites["score"].max()
    labels = tmp_path / "labels.geojson"
    frame = sites.copy()
    frame["label"] = frame["site_id"].map({"compound": 1, "quiet": 0, "green field": 0})
    frame.to_file(labels, driver="GeoJSON")
    assert run(scene, tmp_path / "p", "--target-precision", "1", "--labels", labels) == 0
    record = json.loads((tmp_path / "p" / "run.json").read_text())["threshold"]
    flagged = gpd.read_file(tmp_path / "p" / "sites.geojson").query("flagged")["site_id"].tolist()
    assert flagged == ["compound"] and record["precision"] == 1.0 and record["labelled_sites"] == 3
    assert "only 3 labelled sites (1 changed)" in record["warning"]  # and said on stderr
    assert run(scene, tmp_path / "both", "--max-flags", "1", "--target-precision", "0.9") == 2
    assert "give one" in capsys.readouterr().err
    strangers = tmp_path / "strangers.geojson"  # labels of other sites: refused before any scoring
    frame.assign(site_id=[f"other {i}" for i in range(len(frame))]).to_file(strangers, driver="GeoJSON")
    assert run(scene, tmp_path / "s", "--target-precision", "0.9", "--labels", strangers) == 2
    assert "labels none of the" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert run(scene, tmp_path / "n", "--target-precision", "0.9") == 2  # nothing labelled, nothing to carry over
    assert "needs labelled sites" in capsys.readouterr().err and not (tmp_path / "n").exists()
    frame["label"] = frame["site_id"].map({"compound": "yes", "quiet": "maybe", "green field": ""})
    frame.to_file(labels, driver="GeoJSON")  # a word that says neither is refused, not taken for unknown
    assert run(scene, tmp_path / "m", "--target-precision", "0.9", "--labels", labels) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has label 'maybe': give 1 or 0" in err and not (tmp_path / "m").exists()


def test_threshold_choices_on_hand_made_scores() -> None:
    score = np.array([0.9, 0.8, 0.8, 0.6, 0.3, np.nan])
    eligible = np.array([True, True, True, True, True, False])
    assert threshold_for_max_flags(score, eligible, 10, floor=0.5) == 0.5
    assert threshold_for_max_flags(score, eligible, 3, floor=0.5) == pytest.approx(0.605)
    assert threshold_for_max_flags(score, eligible, 2, floor=0.5) == pytest.approx(0.805)  # the tie stays out
    label = np.array([1.0, 1.0, 0.0, np.nan, 1.0, 1.0])
    assert threshold_for_precision(score, label, 1.0) == (0.9, 1.0, pytest.approx(1 / 3))
    value, precision, recall = threshold_for_precision(score, label, 0.7)
    assert (value, precision, recall) == (0.3, 0.75, 1.0)
    assert threshold_for_precision(score, np.zeros(6), 0.5) is None


def test_train_on_reviews_fine_tunes_the_current_weights(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run(scene, out) == 0
    review(out / "sites.geojson", {"compound": ("confirmed", "A", ""), "quiet": ("rejected", "A", "")})
    model = tmp_path / "tuned.pt"
    assert main(["-q", "train", "--reviews", str(out / "sites.geojson"), "--out", str(model), "--epochs", "1",
                 "--steps", "1", "--tile-px", "32", "--batch", "2"]) == 0
    card = weights.load(model).card
    assert card["trained_on"] and all(name.startswith("run/") for name in card["trained_on"])
    assert str(default_model_path()) in json.dumps(card["settings"]["init"])


def test_notes_that_look_like_dates_are_read_back_as_written(tmp_path: Path) -> None:
    """GDAL reads a GeoJSON text column of dates as datetimes unless told not to."""
    from shapely.geometry import box

    from detector.reviews import read_reviews

    notes = ["2024-05-01 10:30", "2024-05-02"]
    frame = gpd.GeoDataFrame({"site_id": ["a", "b"], "review_status": ["confirmed", "unreviewed"],
                              "reviewer": ["ana", ""], "notes": notes},
                             geometry=[box(0, 0, 1, 1), box(1, 1, 2, 2)], crs=4326)
    frame.to_file(tmp_path / "sites.geojson", driver="GeoJSON")
    assert read_reviews(tmp_path / "sites.geojson")["notes"].tolist() == notes
