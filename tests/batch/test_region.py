"""``detector batch`` over a ``[region]``: cells in blocks, candidates merged across block borders, kill -9 and
resume, local processes and Dask alike, bad configuration."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import pandas as pd
import psutil
import pyogrio
import pytest
import shapely
from batch_cli import batch, sites_of
from conftest import lonlat
from region_data import ACROSS, INSIDE, make_region

from aoi.cells import CellGrid, cell_blocks
from detector.cli import main

CELLS = 20 * 20
BLOCKS = 16


def outline(box: tuple[int, int, int, int]) -> shapely.Polygon:
    r0, r1, c0, c1 = box
    return shapely.Polygon([lonlat(r, c) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))])


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished region batch on two local worker processes."""
    config = make_region(tmp_path_factory.mktemp("region"))
    assert batch(config, "--workers", "2") == 0
    return config


def test_a_compound_across_a_block_border_is_one_candidate(region: Path) -> None:
    out = region.parent / "results"
    found = gpd.read_file(out / "candidates.geojson")
    assert len(found) == 2 and found["site_id"].str.startswith("cand-").all()
    cells = sites_of(out).set_index("site_id")
    for box in (ACROSS, INSIDE):
        mine = found[found.intersects(outline(box))]
        assert len(mine) == 1, box
        ids = mine["cells"].iloc[0].split(",")
        assert mine["cell_count"].iloc[0] == len(ids) and cells.loc[ids, "flagged"].all()
        assert mine.geometry.iloc[0].contains(outline(box).buffer(-1e-4))
    across = found[found.intersects(outline(ACROSS))]["cells"].iloc[0].split(",")
    assert cells.loc[across, "block_id"].nunique() == 4  # it spans a corner of four blocks
    inside = found[found.intersects(outline(INSIDE))]["cells"].iloc[0].split(",")
    assert cells.loc[inside, "block_id"].nunique() == 1
    # the fields of run's candidates.geojson
    assert {"site_id", "score", "rank", "changed_area_m2", "cells", "cell_count", "review_status", "before_source",
            "method", "chip_before"} <= set(found.columns)
    assert sorted(found["rank"]) == [1, 2]


def test_every_cell_of_the_region_is_stored_once_with_its_block_and_pair(region: Path) -> None:
    out = region.parent / "results"
    cells = sites_of(out)
    assert len(cells) == CELLS and cells["site_id"].is_unique
    assert set(cells["site_id"]) == {f"r{r}c{c}" for r in range(20) for c in range(20)}
    assert cells.groupby("block_id").size().eq(25).all() and cells["block_id"].nunique() == BLOCKS
    assert (cells["before_scene"] == "T45_2017-04-02.tif").all() and cells["pairing"].str.contains(
        "covers the block").all()
    assert (cells["bin_applied"] == 1).all()  # 10 m scenes: every pixel
    assert cells["rank"].notna().all() and sorted(cells["rank"]) == list(range(1, CELLS + 1))
    assert shapely.area(shapely.union_all(cells.to_crs(32645).geometry.to_numpy())) == pytest.approx(4e6, rel=1e-6)
    manifest = pd.read_csv(out / "manifest.csv")
    assert list(manifest.columns[:2]) == ["block_id", "status"] and manifest["block_id"].is_unique
    record = json.loads((out / "batch.json").read_text())
    assert record["counts"] == {"blocks": BLOCKS, "done": BLOCKS, "failed": 0, "cells": CELLS,
                                "flagged": int(cells["flagged"].sum()), "candidates": 2, "ran_this_time": BLOCKS}
    assert record["region"]["area_km2"] == pytest.approx(4.0) and record["config"]["region"]["cell_m"] == 100
    assert (out / "candidates.qml").exists() and "candidates.geojson" in (out / "report.html").read_text()


def test_a_rerun_scores_nothing_and_carries_candidate_verdicts_by_outline(region: Path) -> None:
    out = region.parent / "results"
    found = gpd.read_file(out / "candidates.geojson")
    found.loc[found["rank"] == 1, ["review_status", "reviewer"]] = ["confirmed", "ana"]
    found.to_file(out / "candidates.geojson", driver="GeoJSON")
    manifest = (out / "manifest.csv").read_text()
    assert batch(region) == 0
    assert (out / "manifest.csv").read_text() == manifest
    assert json.loads((out / "batch.json").read_text())["counts"]["ran_this_time"] == 0
    again = gpd.read_file(out / "candidates.geojson").set_index("site_id")
    first = found.set_index("site_id")
    assert set(again.index) == set(first.index)
    best = first.index[first["rank"] == 1][0]
    assert (again.loc[best, "review_status"], again.loc[best, "reviewer"]) == ("confirmed", "ana")


def test_the_cell_grid_and_its_blocks_cover_each_cell_once() -> None:
    grid = CellGrid("EPSG:32645", 500000.0, 4800000.0, 100.0, 7, 12)
    blocks = cell_blocks(grid, 5)
    assert [(int(w.height), int(w.width)) for w in blocks] == [(5, 5), (5, 5), (5, 2), (2, 5), (2, 5), (2, 2)]
    boxes = [grid.boxes(w).ravel() for w in blocks]
    assert sum(len(b) for b in boxes) == 7 * 12
    whole = shapely.union_all([grid.window_box(w) for w in blocks])
    assert whole.area == pytest.approx(7 * 12 * 100 * 100) and whole.bounds == (500000, 4799300, 501200, 4800000)
    assert shapely.equals(shapely.union_all(boxes[0]), grid.window_box(blocks[0]))


@pytest.mark.slow
def test_kill_9_at_any_moment_then_resume_loses_and_repeats_nothing(region: Path, tmp_path: Path) -> None:
    config = make_region(tmp_path / "killed")
    command = [sys.executable, "-m", "detector", "-q", "batch", str(config), "--workers", "1"]
    manifest = config.parent / "results" / "manifest.csv"
    kills, orphans = 0, []
    for wait_lines in (2, 6, 11):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            if manifest.exists() and len(manifest.read_text().splitlines()) > wait_lines:
                children = psutil.Process(process.pid).children(recursive=True)  # workers, resource tracker
                os.killpg(process.pid, signal.SIGKILL)  # the whole process group, as a crash or OOM kill
                kills += 1
                _, alive = psutil.wait_procs(children, timeout=10)
                orphans += [p.pid for p in alive]
                break
            time.sleep(0.02)
        process.wait()
    assert kills == 3
    assert not orphans, f"processes of the killed batch still alive: {orphans}"
    assert subprocess.run(command, timeout=300).returncode == 0
    killed, whole = sites_of(config.parent / "results"), sites_of(region.parent / "results")
    assert killed["site_id"].is_unique and len(killed) == CELLS
    paths = ["before_source", "after_source"]  # the two folders' own paths
    pd.testing.assert_frame_equal(killed.drop(columns=paths), whole.drop(columns=paths))
    changes = pyogrio.read_dataframe(config.parent / "results" / "sites.gpkg", layer="changes")
    expected = pyogrio.read_dataframe(region.parent / "results" / "sites.gpkg", layer="changes")
    assert sorted(changes["site_id"]) == sorted(expected["site_id"])
    done = pd.read_csv(manifest).query("status == 'done'")["block_id"]
    assert done.is_unique and len(done) == BLOCKS
    same_candidates(config.parent / "results", region.parent / "results")


def same_candidates(a: Path, b: Path) -> None:
    x, y = (gpd.read_file(p / "candidates.geojson") for p in (a, b))
    paths = ["before_source", "after_source", "review_status", "reviewer", "notes"]  # verdicts: another test's
    pd.testing.assert_frame_equal(pd.DataFrame(x.drop(columns=["geometry", *paths])),
                                  pd.DataFrame(y.drop(columns=["geometry", *paths])))
    assert x.geometry.equals(y.geometry)


@pytest.mark.slow
def test_dask_local_cluster_gives_the_same_candidates_as_local_processes(region: Path, tmp_path: Path) -> None:
    config = make_region(tmp_path / "dask")
    assert batch(config, "--dask", "local:2") == 0
    same_candidates(config.parent / "results", region.parent / "results")
    a, b = sites_of(config.parent / "results"), sites_of(region.parent / "results")
    paths = ["before_source", "after_source"]
    pd.testing.assert_frame_equal(a.drop(columns=paths), b.drop(columns=paths))
    assert json.loads((config.parent / "results" / "batch.json").read_text())["executor"] == "dask local:2"


BASE = ("[imagery]\ncatalog='c'\n[dates]\nbefore=['2017-01-01','2017-06-30']\nafter=['2018-01-01','2018-06-30']\n"
        "[output]\ndir='o'\n")


@pytest.mark.parametrize(("text", "message"), [
    (BASE + "[sites]\npaths=['s.geojson']\n[region]\npath='region.geojson'\n", "has both [sites] and [region]"),
    (BASE, "has neither [sites] nor [region]"),
    (BASE + "[region]\npath='missing.geojson'\n", "[region] path"),
    (BASE + "[region]\npath='region.geojson'\ncell_m=0\n", "[region] cell_m is 0: give a finite number > 0"),
    (BASE + "[region]\npath='region.geojson'\ncell_m=-5\n", "[region] cell_m is -5"),
    (BASE + "[region]\npath='region.geojson'\ncell_m='big'\n", "[region] cell_m is 'big'"),
    (BASE + "[region]\npath='region.geojson'\nblock_cells=0\n", "[region] block_cells is 0: give a whole number >= 1"),
    (BASE + "[region]\npath='region.geojson'\nblock_cells=2.5\n", "[region] block_cells is 2.5"),
    (BASE + "[region]\ncell_m=500\n", "[region] path is missing"),
    (BASE + "[region]\npath='region.geojson'\ncells=5\n", "unknown key 'cells' in [region]"),
])
def test_bad_region_configuration_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          text: str, message: str) -> None:
    (tmp_path / "region.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    config = tmp_path / "batch.toml"
    config.write_text(text)
    assert batch(config) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(config) in err and message in err, err
    assert not (tmp_path / "o").exists()


def test_timeline_and_fetch_refuse_a_region_batch(region: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in (["timeline", str(region)], ["fetch", str(region), "--stac", "x.json"]):
        assert main(["-q", *command]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "[region]" in err, err
