"""Cell mode's candidate sites: flagged cells whose change touches merge into one site to review."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from conftest import COMPOUND, ORIGIN, PIXEL, UTM, Scene
from shapely.geometry import box

from detector.candidates import keep_ids, merge
from detector.cli import main


def cell_frame(rows: list[tuple[str, float, bool, tuple]]) -> gpd.GeoDataFrame:
    frame = gpd.GeoDataFrame({"site_id": [r[0] for r in rows], "score": [r[1] for r in rows],
                              "flagged": [r[2] for r in rows]}, geometry=[box(*r[3]) for r in rows], crs=UTM)
    for field in ("before_source", "after_source", "before_date", "after_date", "threshold", "method"):
        frame[field] = "x"
    return frame.to_crs(4326)


def test_touching_change_merges_across_cells_and_far_change_stays_apart() -> None:
    x, y = ORIGIN
    cells = cell_frame([("r0c0", 0.8, True, (x, y - 500, x + 500, y)),
                        ("r0c1", 0.6, True, (x + 500, y - 500, x + 1000, y)),
                        ("r0c3", 0.7, True, (x + 1500, y - 500, x + 2000, y)),
                        ("r0c2", 0.9, False, (x + 1000, y - 500, x + 1500, y))])
    polygons = [box(x + 400, y - 300, x + 490, y - 200), box(x + 520, y - 300, x + 600, y - 200),  # 30 m apart
                box(x + 1700, y - 300, x + 1800, y - 200), box(x + 1100, y - 300, x + 1200, y - 200)]
    changes = gpd.GeoDataFrame({"site_id": ["r0c0", "r0c1", "r0c3", "r0c2"], "score": [0.8] * 4, "area_m2": [0] * 4},
                               geometry=polygons, crs=UTM).to_crs(4326)
    found = merge(cells, changes)
    assert len(found) == 2 and list(found["rank"]) == [1, 2]
    first = found.iloc[0]
    assert first["cells"] == "r0c0,r0c1" and first["score"] == 0.8 and first["cell_count"] == 2
    assert abs(first["changed_area_m2"] - (90 * 100 + 80 * 100)) < 50
    assert found.iloc[1]["cells"] == "r0c3"  # r0c2 is not flagged: its change is not a candidate
    again = keep_ids(merge(cells, changes), found.assign(site_id=["mine", "other"]))
    assert list(again["site_id"]) == ["mine", "other"]  # the same ground keeps its id


@pytest.fixture(scope="module")
def cell_run(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cands") / "out"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--cell-m", "200"]) == 0
    return out


def test_the_compound_across_cell_borders_is_one_candidate(cell_run: Path) -> None:
    cells = gpd.read_file(cell_run / "sites.geojson")
    found = gpd.read_file(cell_run / "candidates.geojson")
    r0, r1, c0, c1 = COMPOUND
    compound = box(ORIGIN[0] + c0 * PIXEL, ORIGIN[1] - r1 * PIXEL, ORIGIN[0] + c1 * PIXEL, ORIGIN[1] - r0 * PIXEL)
    on = found.to_crs(UTM)
    best = on.iloc[0]
    assert best["rank"] == 1 and best["cell_count"] >= 4
    assert best.geometry.intersection(compound).area > 0.8 * compound.area
    assert (on.geometry.intersection(compound).area > 0).sum() == 1  # one candidate for the compound
    assert set(best["cells"].split(",")) <= set(cells.loc[cells["flagged"], "site_id"])
    assert len(found) < cells["flagged"].sum() and (cell_run / "candidates.qml").is_file()
    assert json.loads((cell_run / "run.json").read_text())["counts"]["candidates"] == len(found)
    for field in ("site_id", "score", "rank", "changed_area_m2", "cells", "review_status", "before_date"):
        assert field in found.columns


def test_a_candidate_file_is_a_site_file_and_its_verdicts_carry_over(cell_run: Path, scene: Scene,
                                                                      tmp_path: Path) -> None:
    again = tmp_path / "sites"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(again),
                 "--sites", str(cell_run / "candidates.geojson")]) == 0
    scored = gpd.read_file(again / "sites.geojson").set_index("site_id")
    first = gpd.read_file(cell_run / "candidates.geojson").iloc[0]["site_id"]
    assert bool(scored.loc[first, "flagged"])
    data = json.loads((cell_run / "candidates.geojson").read_text())
    data["features"][0]["properties"].update(review_status="confirmed", reviewer="ana", notes="walls and roofs")
    (cell_run / "candidates.geojson").write_text(json.dumps(data))
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(cell_run),
                 "--cell-m", "200", "--overwrite"]) == 0
    found = gpd.read_file(cell_run / "candidates.geojson").set_index("site_id")
    assert found.loc[first, "review_status"] == "confirmed" and found.loc[first, "notes"] == "walls and roofs"
    cells = gpd.read_file(cell_run / "sites.geojson")
    assert (cells["review_status"] == "unreviewed").all()  # a candidate's verdict is not a cell's
    assert not np.isin(cells["site_id"], found.index).any()
    # a run that flags nothing keeps the candidate's verdict aside; the next one that finds it gives it back
    args = ["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(cell_run),
            "--cell-m", "200", "--overwrite"]
    assert main([*args, "--max-flags", "0"]) == 0
    assert gpd.read_file(cell_run / "candidates.geojson").empty
    kept = gpd.read_file(cell_run / "reviews-kept.geojson").set_index("site_id")
    assert kept.loc[first, "review_status"] == "confirmed"
    assert main(args) == 0
    assert gpd.read_file(cell_run / "candidates.geojson").set_index("site_id").loc[first, "reviewer"] == "ana"


def test_chips_and_the_report_go_to_the_best_candidates_however_many_cells_are_flagged(scene: Scene,
                                                                                        tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--cell-m", "30", "--chips", "2"]) == 0
    cells = gpd.read_file(out / "sites.geojson")
    found = gpd.read_file(out / "candidates.geojson")
    assert cells["flagged"].sum() > 100 and len(found) < cells["flagged"].sum() / 10
    assert cells["chip_before"].isna().all()  # nothing per flagged cell
    chips = sorted(p.name for p in (out / "chips").iterdir())
    assert len(chips) == 3 * min(2, len(found))
    assert set(found.loc[found["rank"] <= 2, "chip_change"].str.removeprefix("chips/")) <= set(chips)
    page = (out / "report.html").read_text()
    assert page.count("<tr class=") == min(2, len(found)) and "cell_count" in page
    assert len(found) <= 2 or "candidates.geojson" in page  # the rest are listed there


def test_candidates_open_in_qgis_styled_like_the_sites(cell_run: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    from test_qgis import SYSTEM_PYTHON, qgis_available

    if not qgis_available():
        pytest.skip("python3-qgis is not installed (.ci/run installs it)")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([SYSTEM_PYTHON, Path(__file__).with_name("qgis_check.py"), cell_run, "candidates"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    layer = json.loads(done.stdout.strip().splitlines()[-1])["candidates"]
    assert layer["valid"] and layer["crs"] == "EPSG:4326" and layer["renderer"] == "graduatedSymbol"
    assert layer["labels"] and {"cells", "score", "rank"} <= set(layer["fields"])
