"""``detector batch``: configuration, pairing from a catalog, durable results, kill -9 and resume, Dask."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import psutil
import pyogrio
import pytest
import rasterio
from batch_cli import batch, sites_of
from catalog_data import make_catalog
from conftest import SHARED
from shapely.geometry import box

from detector.batch.store import Outcome, ResultStore
from detector.cli import main

ALL_SITES = 4  # the conftest sites; "far away" lies outside every scene


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished batch over the conftest sites (exit 1: "far away" has no scene)."""
    config = make_catalog(tmp_path_factory.mktemp("batch"))
    assert batch(config, "--workers", "2") == 1
    return config


def test_each_site_gets_the_clearest_nearest_season_pair(small: Path) -> None:
    sites = gpd.read_file(small.parent / "results" / "sites.geojson").set_index("site_id")
    # the 2017-06-20 scene is nearer the after date's season but cloudy over the compound
    assert sites.loc["compound", "before_scene"] == "S2_2017-03-02.tif"
    assert sites.loc["compound", "season_gap_days"] == 142
    assert sites.loc["quiet", "before_scene"] == "S2_2017-06-20.tif"
    assert sites.loc["quiet", "before_cloud"] == 0 and sites.loc["quiet", "season_gap_days"] == 113
    assert (sites["after_scene"] == "S2_2018-10-11.tif").all()  # 2019-07-01 is outside the after window
    assert "cloud 0% / unknown" in sites.loc["quiet", "pairing"]
    assert sites.loc["compound", "flagged"] and not sites.loc["quiet", "flagged"]
    assert sorted(sites["rank"]) == [1, 2, 3]


def test_results_are_durable_files_with_runs_properties(small: Path, tmp_path: Path) -> None:
    out = small.parent / "results"
    manifest = pd.read_csv(out / "manifest.csv")
    assert dict(zip(manifest["site_id"], manifest["status"], strict=True)) == {
        "compound": "done", "green field": "done", "quiet": "done", "far away": "failed"}
    assert "no before scene" in manifest.set_index("site_id").loc["far away", "reason"]
    record = json.loads((out / "batch.json").read_text())
    assert record["counts"] == {"sites": 4, "done": 3, "failed": 1, "flagged": 1, "ran_this_time": 4}
    assert record["complete"]
    gpkg = sites_of(out)
    assert gpkg["rank"].tolist() == [1, 2, 3] or sorted(gpkg["rank"]) == [1, 2, 3]
    # the same properties as `detector run`'s sites.geojson, plus the pairing
    run_out = tmp_path / "run"
    source = small.parent / "scenes"
    assert main(["-q", "run", "--before", str(source / "S2_2017-03-02.tif"), "--after",
                 str(source / "S2_2018-10-11.tif"), "--sites", str(small.parent / "sites.geojson"),
                 "--buffer-m", "250", "--method", "classical", "--out", str(run_out)]) == 0
    ran = gpd.read_file(run_out / "sites.geojson")
    assert set(ran.columns) <= set(gpkg.columns)
    assert set(gpkg.columns) - set(ran.columns) == {"before_scene", "after_scene", "before_cloud", "after_cloud",
                                                    "before_valid", "after_valid", "season_gap_days", "pairing",
                                                    "bin_applied"}
    assert (gpkg["bin_applied"] == json.loads((run_out / "run.json").read_text())["bin_applied"]).all()
    compound = ran.set_index("site_id").loc["compound"]
    assert gpkg.set_index("site_id").loc["compound", "score"] == compound["score"]  # same pair, same score
    with rasterio.open(out / "change" / next(p.name for p in (out / "change").iterdir()
                                             if p.name.startswith("compound"))) as src:
        assert src.crs is not None and np.nanmax(src.read(1)) > 0.5
    changes = pyogrio.read_dataframe(out / "sites.gpkg", layer="changes")
    assert set(changes["site_id"]) <= {"compound", "green field", "quiet"} and len(changes)


def test_finished_batch_runs_nothing_again(small: Path) -> None:
    before = (small.parent / "results" / "manifest.csv").read_text()
    assert batch(small) == 1
    record = json.loads((small.parent / "results" / "batch.json").read_text())
    assert record["counts"]["ran_this_time"] == 1  # only the failed site is tried again
    lines = (small.parent / "results" / "manifest.csv").read_text().splitlines()
    assert lines[:len(before.splitlines())] == before.splitlines() and lines[-1].startswith("far away,failed")
    assert len(sites_of(small.parent / "results")) == 3


def test_end_of_batch_writes_the_review_outputs_of_run(small: Path) -> None:
    out = small.parent / "results"
    sites = gpd.read_file(out / "sites.geojson").set_index("site_id")
    stored = sites_of(out).set_index("site_id")
    for column in ("rank", "flagged", "threshold", "review_status", "chip_before", "chip_after", "chip_change"):
        assert stored[column].tolist() == sites.loc[stored.index, column].tolist(), column
    for site in sites.itertuples():  # all three rank in the default top 20: each has its chips
        for path in (site.chip_before, site.chip_after, site.chip_change):
            assert path.startswith("chips/") and (out / path).stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "compound" in page and "S2_2017-03-02.tif" in page and 'src="chips/' in page
    assert len(gpd.read_file(out / "changes.geojson")) == len(pyogrio.read_dataframe(out / "sites.gpkg",
                                                                                       layer="changes"))
    assert (out / "sites.qml").exists() and (out / "changes.qml").exists()
    record = json.loads((out / "batch.json").read_text())
    assert record["method"] == "classical" and record["model"] is None
    assert record["threshold"]["value"] == 0.5 and record["threshold"]["chosen_by"] == "[run] threshold"


@pytest.mark.slow
def test_reviews_labels_and_budget_apply_without_scoring_again(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = make_catalog(tmp_path)
    assert batch(config) == 1
    out = tmp_path / "results"
    manifest = (out / "manifest.csv").read_text().splitlines()
    # a reviewer rejects the compound in sites.geojson and confirms "quiet" in sites.gpkg (QGIS edits either)
    edited = gpd.read_file(out / "sites.geojson")
    edited.loc[edited["site_id"] == "compound", ["review_status", "reviewer"]] = ["rejected", "ana"]
    edited.to_file(out / "sites.geojson", driver="GeoJSON")
    with sqlite3.connect(out / "sites.gpkg") as db:
        db.execute("UPDATE sites SET review_status = 'Confirmed', notes = 'seen' WHERE site_id = 'quiet'")
    db.close()
    config.write_text(config.read_text().replace("[run]\n", "[run]\nmax_flags = 0\nchips = 1\n"))
    assert batch(config) == 1  # a budget and chips may change: nothing is scored again but the failed site
    assert json.loads((out / "batch.json").read_text())["counts"]["ran_this_time"] == 1
    assert (out / "manifest.csv").read_text().splitlines()[:len(manifest)] == manifest
    for sites in (gpd.read_file(out / "sites.geojson"), sites_of(out)):
        sites = sites.set_index("site_id")
        assert (sites.loc["compound", "review_status"], sites.loc["compound", "reviewer"]) == ("rejected", "ana")
        assert (sites.loc["quiet", "review_status"], sites.loc["quiet", "notes"]) == ("confirmed", "seen")
        assert not sites["flagged"].any() and (sites["threshold"] > sites["score"]).all()
        assert sites["chip_before"].notna().sum() == 1  # chips = 1 and nothing flagged: the first ranked only
    assert len(list((out / "chips").glob("*.png"))) == 3
    assert json.loads((out / "batch.json").read_text())["threshold"]["chosen_by"] == "[run] max_flags 0"
    # labels that the compound changed: the threshold that keeps precision 1 flags it alone
    labels = gpd.read_file(out / "sites.geojson")[["site_id", "geometry"]]
    labels["label"] = np.where(labels["site_id"] == "compound", 1, 0)
    labels.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    config.write_text(config.read_text().replace("max_flags = 0", "target_precision = 1.0\nlabels = 'labels.geojson'"))
    assert batch(config) == 1
    sites = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert sites["flagged"].tolist() == (sites.index == "compound").tolist()
    # labels the rule cannot meet: one line, exit 2, and the results stay as they were
    labels["label"] = np.where(labels["site_id"] == "compound", 0, 1)
    labels.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    kept = (out / "sites.geojson").read_bytes()
    capsys.readouterr()
    assert batch(config) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no threshold reaches precision 1.0" in err
    assert (out / "sites.geojson").read_bytes() == kept and not list(out.glob(".*.tmp*"))


def set_verdict(out: Path, site_id: str, **fields: str) -> None:
    """A reviewer's edit of one row of sites.gpkg, as QGIS makes it."""
    with sqlite3.connect(out / "sites.gpkg") as db:
        db.execute(f"UPDATE sites SET {', '.join(f'{k} = ?' for k in fields)} WHERE site_id = ?",
                   [*fields.values(), site_id])
    db.close()


def verdicts(frame: gpd.GeoDataFrame) -> dict[str, tuple[str, str, str]]:
    return {r.site_id: (r.review_status, r.reviewer or "", r.notes or "") for r in frame.itertuples()}


@pytest.mark.slow
def test_the_latest_edit_in_either_file_wins_and_a_reviews_file_left_in_the_config_undoes_none(
        tmp_path: Path) -> None:
    config = make_catalog(tmp_path)
    assert batch(config) == 1
    out = tmp_path / "results"
    old = gpd.read_file(out / "sites.geojson")
    old.loc[old["site_id"] == "compound", ["review_status", "reviewer"]] = ["rejected", "old"]
    old.to_file(tmp_path / "old.geojson", driver="GeoJSON")
    config.write_text(config.read_text().replace("[run]\n", "[run]\nreviews = 'old.geojson'\nmax_flags = 0\n"))
    assert batch(config) == 1
    assert verdicts(gpd.read_file(out / "sites.geojson"))["compound"] == ("rejected", "old", "")
    # the compound confirmed in sites.geojson, a note on a site still unreviewed in sites.gpkg; no budget now
    edited = gpd.read_file(out / "sites.geojson")
    edited.loc[edited["site_id"] == "compound", ["review_status", "reviewer"]] = ["confirmed", "ana"]
    edited.to_file(out / "sites.geojson", driver="GeoJSON")
    set_verdict(out, "quiet", notes="road works")
    config.write_text(config.read_text().replace("max_flags = 0\n", ""))
    assert batch(config) == 1
    for frame in (gpd.read_file(out / "sites.geojson"), sites_of(out)):
        seen = verdicts(frame)
        assert seen["compound"] == ("confirmed", "ana", "") and seen["quiet"] == ("unreviewed", "", "road works")
        flags = frame.set_index("site_id")
        assert flags["flagged"].to_dict() == (flags["score"] >= 0.5).to_dict()  # the budget's flags are gone
        assert (flags["threshold"] == 0.5).all()
    # set back to unreviewed in sites.gpkg: an edit too, in both files after the next end
    set_verdict(out, "compound", review_status="unreviewed", reviewer="", notes="")
    assert batch(config) == 1
    for frame in (gpd.read_file(out / "sites.geojson"), sites_of(out)):
        assert verdicts(frame)["compound"] == ("unreviewed", "", "")
    # the reviews file gains a verdict on another site: only that row is new, the compound stays unreviewed
    old.loc[old["site_id"] == "green field", ["review_status", "reviewer"]] = ["unsure", "old"]
    old.to_file(tmp_path / "old.geojson", driver="GeoJSON")
    assert batch(config) == 1
    seen = verdicts(gpd.read_file(out / "sites.geojson"))
    assert seen["compound"] == ("unreviewed", "", "") and seen["green field"] == ("unsure", "old", "")
    # edited differently in both files since the last end: sites.geojson's verdict is kept (with a warning)
    set_verdict(out, "green field", review_status="confirmed")
    edited = gpd.read_file(out / "sites.geojson")
    edited.loc[edited["site_id"] == "green field", "review_status"] = "rejected"
    edited.to_file(out / "sites.geojson", driver="GeoJSON")
    assert batch(config) == 1
    assert verdicts(sites_of(out))["green field"] == ("rejected", "old", "")


def test_store_recovers_from_a_kill_between_writes(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame({"site_id": ["a"], "score": [0.5]}, geometry=[box(0, 0, 1, 1)], crs=4326)
    store = ResultStore(tmp_path)
    store.add(Outcome("a", sites=frame))
    store._append("sites", frame.assign(site_id="b"))  # killed after the row, before the manifest line
    with (tmp_path / "manifest.csv").open("a") as f:
        f.write("c,done,,x,y,1.0,2026")  # killed in the middle of a line
    store = ResultStore(tmp_path)
    assert store.done == {"a"}
    assert sites_of(tmp_path)["site_id"].tolist() == ["a"]
    assert (tmp_path / "manifest.csv").read_text().endswith("\n")
    store.add(Outcome("b", sites=frame.assign(site_id="b")))
    assert sites_of(tmp_path)["site_id"].tolist() == ["a", "b"]


def test_a_batch_begun_by_an_earlier_version_resumes_with_the_new_columns_empty_on_its_rows(tmp_path: Path) -> None:
    """Rows gain columns across versions (``bin_applied``): a store without them takes the new rows all the same."""
    frame = gpd.GeoDataFrame({"site_id": ["a"], "score": [0.5]}, geometry=[box(0, 0, 1, 1)], crs=4326)
    ResultStore(tmp_path).add(Outcome("a", sites=frame))
    store = ResultStore(tmp_path)  # resumed by the newer version
    store.add(Outcome("b", sites=frame.assign(site_id="b", bin_applied=1, pairing="best")))
    store.add(Outcome("c", sites=frame.assign(site_id="c", bin_applied=2, pairing="only")))
    stored = sites_of(tmp_path).set_index("site_id")
    assert stored["bin_applied"].isna().tolist() == [True, False, False] and stored.loc["c", "bin_applied"] == 2
    assert stored["pairing"].tolist()[1:] == ["best", "only"] and stored.loc["b", "score"] == 0.5


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_loses_and_repeats_nothing(tmp_path: Path) -> None:
    config = make_catalog(tmp_path / "killed", grid=4, buffer_m=150)
    reference = make_catalog(tmp_path / "whole", grid=4, buffer_m=150)
    assert batch(reference, "--workers", "1") == 1
    command = [sys.executable, "-m", "detector", "-q", "batch", str(config), "--workers", "1"]
    manifest = config.parent / "results" / "manifest.csv"
    kills = 0
    orphans = []
    for wait_lines in (3, 7, 11):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and len(manifest.read_text().splitlines()) > wait_lines:
                children = psutil.Process(process.pid).children(recursive=True)  # workers, resource tracker
                os.kill(process.pid, signal.SIGKILL)
                kills += 1
                _, alive = psutil.wait_procs(children, timeout=10)
                orphans += [p.pid for p in alive]
                break
            time.sleep(0.02)
        process.wait()
    assert kills == 3
    assert not orphans, f"processes of the killed batch still alive: {orphans}"
    assert subprocess.run(command, timeout=300).returncode == 1  # "far away" fails; everything else is done
    killed, whole = sites_of(config.parent / "results"), sites_of(reference.parent / "results")
    assert killed["site_id"].is_unique and len(killed) == 4 * 4 + ALL_SITES - 1
    paths = ["geometry", "before_source", "after_source"]  # the two folders' own paths
    pd.testing.assert_frame_equal(killed.drop(columns=paths), whole.drop(columns=paths))
    changes = pyogrio.read_dataframe(config.parent / "results" / "sites.gpkg", layer="changes")
    expected = pyogrio.read_dataframe(reference.parent / "results" / "sites.gpkg", layer="changes")
    assert sorted(changes["site_id"]) == sorted(expected["site_id"])
    done = pd.read_csv(manifest).query("status == 'done'")["site_id"]
    assert done.is_unique and len(done) == len(killed)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_results_as_local_processes(tmp_path: Path) -> None:
    local = make_catalog(tmp_path / "local", grid=2, method="fused")
    dask = make_catalog(tmp_path / "dask", grid=2, method="fused")
    assert batch(local, "--workers", "2") == 1
    assert batch(dask, "--dask", "local:2") == 1
    a, b = sites_of(local.parent / "results"), sites_of(dask.parent / "results")
    assert len(a) == 2 * 2 + ALL_SITES - 1 and (a["method"] == "fused").all()
    pd.testing.assert_frame_equal(a.drop(columns=["geometry", "before_source", "after_source"]),
                                  b.drop(columns=["geometry", "before_source", "after_source"]))
    assert a.geometry.equals(b.geometry)
    record = json.loads((dask.parent / "results" / "batch.json").read_text())
    assert record["executor"] == "dask local:2"
    for name in os.listdir(local.parent / "results" / "change"):
        with rasterio.open(local.parent / "results" / "change" / name) as x, \
                rasterio.open(dask.parent / "results" / "change" / name) as y:
            np.testing.assert_array_equal(x.read(), y.read())


def test_stac_item_collection_catalog_gives_the_folders_results(small: Path, tmp_path: Path) -> None:
    import pystac

    scenes = small.parent / "scenes"
    items = []
    for path in sorted(scenes.glob("*.tif")):
        with rasterio.open(path) as src:
            from rasterio.warp import transform_bounds

            bounds = transform_bounds(src.crs, 4326, *src.bounds)
            names = [d.lower() for d in src.descriptions]
        date = path.stem.split("_")[1]
        item = pystac.Item(path.stem, json.loads(json.dumps(box(*bounds).__geo_interface__)), list(bounds),
                           pd.Timestamp(date).to_pydatetime(), {})
        item.add_asset("image", pystac.Asset(str(path), media_type=pystac.MediaType.GEOTIFF,
                                             extra_fields={"eo:bands": [{"name": n} for n in names]}))
        items.append(item)
    (tmp_path / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    config = tmp_path / "batch.toml"
    config.write_text(small.read_text().replace('"scenes/"', '"items.json"').replace(
        'paths = ["sites.geojson"]', f'paths = ["{small.parent / "sites.geojson"}"]'))
    assert batch(config) == 1
    stac, folder = sites_of(tmp_path / "results"), sites_of(small.parent / "results")
    assert stac["before_scene"].tolist() == [s.removesuffix(".tif") for s in folder["before_scene"]]
    np.testing.assert_array_equal(stac["score"], folder["score"])


BASE = ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\n"
        "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n")


@pytest.mark.parametrize(("text", "message"), [
    ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\n"
     "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n[run]\nbufer_m=5\n", "unknown key 'bufer_m' in [run]"),
    ("[site]\npaths=[]\n", "unknown table [site]"),
    ("[sites]\npaths=['s.geojson']\n", "[imagery] catalog is missing"),
    ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01']\n"
     "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n", "[dates] before is ['2017-01-01']: give two dates"),
    ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\n"
     "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n[run]\noverwrite=true\n", "does not apply to a batch"),
    ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\n"
     "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n[run]\nreviews='r.geojson'\n", "[run] reviews"),
    ("[sites]\npaths=['s.geojson']\n[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\n"
     "after=['2018-01-01','2018-06-30']\n[output]\ndir='o'\n[run]\nmethod='best'\n", "[run] method is 'best'"),
    *[(BASE + f"[run]\n{line}\n", message) for line, message in (
        ("bin = 2.5", "[run] bin is 2.5: give a whole number"),
        ("tile_px = 300.7", "[run] tile_px is 300.7: give a whole number"),
        ("threshold = 2", "[run] threshold is 2: give a finite number > 0 and <= 1"),
        ("chips = -1", "[run] chips is -1"),
        ("max_flags = 2\ntarget_precision = 0.9", "[run] max_flags and [run] target_precision both set"),
        ("method = 'classical'\nmodel = 'batch.toml'", "[run] model"),
        ("id_col = 3", "[run] id_col is 3: give a text"))],
    (BASE.replace("[output]", "[output]\n").replace("dir='o'", "dir=1"), "[output] dir is 1: give a text"),
    (BASE.replace("catalog='c'", "catalog='c'\nmax_cloud=true"), "[imagery] max_cloud is True: give a finite number"),
    (BASE.replace("after=", "tolerance_days=1.5\nafter="), "[dates] tolerance_days is 1.5: give a whole number"),
    ("[sites\n", "is not valid TOML"),
    (BASE.replace("dir='o'", "dir='.'"), "holds the input"),  # its sites.geojson would be overwritten
])
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str,
                                                   message: str) -> None:
    config = tmp_path / "batch.toml"
    config.write_text(text)
    assert batch(config) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and message in err
    assert not (tmp_path / "o").exists()


def test_resuming_with_another_configuration_is_refused(small: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    changed = small.parent / "changed.toml"
    changed.write_text(small.read_text().replace("buffer_m = 250", "buffer_m = 300"))
    before = (small.parent / "results" / "manifest.csv").read_bytes()
    assert batch(changed) == 2
    assert "another batch configuration (differs in ['run'])" in capsys.readouterr().err
    assert (small.parent / "results" / "manifest.csv").read_bytes() == before


def test_a_batch_begun_with_another_fusion_rule_is_not_resumed(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Its scores and the new ones would be ranked together (the floor changed between versions)."""
    config = make_catalog(tmp_path / "batch", method="fused")
    out = config.parent / "results"
    out.mkdir()
    (out / "batch.json").write_text(json.dumps({"config": read_config_json(config), "complete": False,
                                                "fusion": "fused = an earlier rule"}))
    assert batch(config) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was begun with another fusion rule (fused = an earlier rule" in err
    assert sorted(p.name for p in out.iterdir()) == [".batch.lock", "batch.json"]  # the lock is the folder's own
    assert json.loads((out / "batch.json").read_text())["fusion"] == "fused = an earlier rule"


def read_config_json(config: Path) -> dict:
    from detector.batch.config import read_batch_config

    return json.loads(json.dumps(read_batch_config(config).to_json(), default=str))


def test_a_folder_refused_is_left_as_it_was(small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `detector run` folder, a bad model, a Dask address without a port: one line each, before any work,
    and nothing written (no lock in the run's folder: `run --overwrite` there still works)."""
    from conftest import make_scene

    scene = make_scene(tmp_path / "scene")
    run_out = tmp_path / "run"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--sites",
                 str(scene.sites), "--out", str(run_out), "--method", "classical"]) == 0
    listing = sorted(p.name for p in run_out.iterdir())
    base = (small.read_text().replace('method = "classical"', 'method = "fused"')
            .replace('dir = "results/"', 'dir = "elsewhere/"'))
    cases = {"holds the results of `detector run`": ('dir = "elsewhere/"', f'dir = "{run_out}"'),
             "holds files that are not a batch's (S2_2017-03-02.tif": ('dir = "elsewhere/"', 'dir = "scenes/"'),
             "is refused: it is not a model file of ours": ("[run]", f'[run]\nmodel = "{scene.before}"'),
             "is a file: give a folder": ('dir = "elsewhere/"', f'dir = "{scene.before}"')}
    for message, (old, new) in cases.items():
        config = small.parent / "refused.toml"
        config.write_text(base.replace(old, new))
        assert batch(config) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert not (small.parent / "elsewhere").exists()
    assert sorted(p.name for p in run_out.iterdir()) == listing
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--sites",
                 str(scene.sites), "--out", str(run_out), "--method", "classical", "--overwrite"]) == 0
    for address in ("nope", "tcp://", "tcp://host:port"):
        assert batch(small, "--dask", address) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"--dask '{address}' is not a Dask address" in err
    unreachable = small.parent / "unreachable.toml"  # a right address no scheduler answers: no folder made
    unreachable.write_text(base)
    assert batch(unreachable, "--dask", "tcp://127.0.0.1:9") == 2
    assert "could not reach the Dask scheduler" in capsys.readouterr().err
    assert not (small.parent / "elsewhere").exists()
    labels = small.parent / "strangers.geojson"  # target_precision with labels of no site: before any scoring
    labels.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
        "site_id": "nobody", "label": 1}, "geometry": {"type": "Point", "coordinates": [0.0, 0.0]}}]}))
    strangers = small.parent / "strangers.toml"
    strangers.write_text(base.replace("[run]", f'[run]\ntarget_precision = 0.9\nlabels = "{labels}"'))
    assert batch(strangers) == 2
    assert "labels none of the" in capsys.readouterr().err and not (small.parent / "elsewhere").exists()
    not_stac = small.parent / "not_stac.toml"  # the sites file where the catalog goes
    not_stac.write_text(base.replace('catalog = "scenes/"', 'catalog = "sites.geojson"'))
    assert batch(not_stac) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a STAC catalog" in err


def aspi_batch(folder: Path, *site_files: Path) -> Path:
    """A batch of real site lists over the registered Dabancheng frames, 2017 H1 against 2018 H2."""
    config = folder / "batch.toml"
    config.write_text(f"""
[sites]
paths = {json.dumps([str(p) for p in site_files])}
[imagery]
catalog = "{SHARED / 'dabancheng-sentinel2' / 'registered'}"
[dates]
before = ["2017-01-01", "2017-06-30"]
after = ["2018-07-01", "2018-12-31"]
[output]
dir = "results"
""")
    return config


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED / "xinjiang-aspi-facilities").exists(), reason="needs ../shared/data")
def test_aspi_sites_over_the_real_dabancheng_catalog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = aspi_batch(tmp_path, SHARED / "xinjiang-aspi-facilities" / "facilities_v1.geojson")
    assert main(["batch", str(config), "--workers", "2"]) == 1
    out = capsys.readouterr()
    assert "380 sites: 2 done, 378 failed, 1 flagged" in out.out
    assert "378 failed (" in out.out and "no before scene" in out.out
    sites = gpd.read_file(tmp_path / "results" / "sites.geojson").set_index("site_id")
    first = sites.loc["Dabancheng Facility #1"]
    assert first["flagged"] and first["rank"] == 1 and not sites.loc["Dabancheng Facility #2", "flagged"]
    # no cloud masks: the pair nearest in season wins among the 4 x 2 dated frames in the windows
    assert (first["before_scene"], first["after_scene"]) == ("2017-06-10.tif", "2018-07-23.tif")
    assert "user_Notes" in sites.columns  # ASPI's Notes kept beside our notes field
    for kind in ("before", "after", "change"):  # chips of the real frames, and the page that shows them
        assert (tmp_path / "results" / first[f"chip_{kind}"]).stat().st_size > 1000
    assert "Dabancheng Facility #1" in (tmp_path / "results" / "report.html").read_text()


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "xinjiang-osm-camps").exists(), reason="needs ../shared/data")
def test_two_real_site_lists_whose_columns_differ_only_in_case(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """ASPI's list (``Name``) with the OSM camp outlines (``name``): GeoPackage field names ignore case."""
    config = aspi_batch(tmp_path, SHARED / "xinjiang-aspi-facilities" / "facilities_v1.geojson",
                        SHARED / "xinjiang-osm-camps" / "reeducation_camps_osm.geojson")
    for _ in range(2):  # and again: the rerun proceeds too
        assert main(["batch", str(config), "--workers", "2"]) == 1
        assert "Traceback" not in capsys.readouterr().err
    stored = pyogrio.read_dataframe(tmp_path / "results" / "sites.gpkg", layer="sites")
    assert {"Name", "name_2"} <= set(stored.columns)
    assert {"Dabancheng Facility #1", "Dabancheng Facility #2"} <= set(stored["site_id"])


def test_a_sites_gpkg_that_is_not_ours_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_catalog(tmp_path / "b", grid=1)
    (config.parent / "results").mkdir()
    (config.parent / "results" / "batch.json").write_text(json.dumps(  # a batch's folder, its table damaged
        {"config": read_config_json(config), "fusion": None, "complete": False}))
    (config.parent / "results" / "sites.gpkg").write_text("not a database")
    assert batch(config, "--workers", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sites.gpkg is not the GeoPackage of a batch" in err[0]


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED / "xinjiang-aspi-facilities").exists(), reason="needs ../shared/data")
def test_hundreds_of_failed_sites_are_summed_up_not_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = aspi_batch(tmp_path, SHARED / "xinjiang-aspi-facilities" / "facilities_v1.geojson")
    assert main(["batch", str(config), "--workers", "2"]) == 1  # with progress, as a user runs it
    captured = capsys.readouterr()
    assert captured.err.count("failed: ") <= 5 and "summed up at the end" in captured.err
    assert "378 failed (" in captured.out and captured.out.count("\n") < 10
