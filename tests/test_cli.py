"""``detector run`` end to end on generated GeoTIFFs, and every bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import COMPOUND, SHIFT_PX, UTM, Scene, ground, plant, write

from detector.cli import main


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def site_run(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "results"
    assert run_cli("-q", "run", "--sites", scene.sites, "--before", scene.before, "--after", scene.after,
                   "--out", out, "--buffer-m", "250") == 0
    return out


def test_planted_compound_is_flagged_and_first(site_run: Path) -> None:
    sites = gpd.read_file(site_run / "sites.geojson").set_index("site_id")
    assert sites.loc["compound", "rank"] == 1 and bool(sites.loc["compound", "flagged"])
    assert not sites.loc[["green field", "quiet"], "flagged"].any()
    assert sites.loc["compound", "changed_area_m2"] > 0.5 * np.pi * 250**2
    assert sites.loc["far away", "status"] == "no_coverage" and sites.loc["far away", "valid_fraction"] == 0
    assert sites.loc["quiet", "status"] == "ok"
    assert list(sites.loc[["compound", "quiet"], "note"]) == ["planted compound", "planted quiet"]


def test_the_misregistration_is_estimated_and_corrected(site_run: Path) -> None:
    sites = gpd.read_file(site_run / "sites.geojson").set_index("site_id")
    ok = sites.loc[["compound", "green field", "quiet"]]
    assert ok["shift_corrected"].all()
    assert np.allclose(ok[["shift_dy_px", "shift_dx_px"]].to_numpy(), SHIFT_PX, atol=0.5)


def test_geojson_is_rfc7946(site_run: Path) -> None:
    data = json.loads((site_run / "sites.geojson").read_text(encoding="utf-8"))
    assert "crs" not in data
    feature = data["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0])
    area2 = np.sum(ring[:-1, 0] * ring[1:, 1] - ring[1:, 0] * ring[:-1, 1])
    assert area2 > 0  # exterior ring counter-clockwise
    assert all(len(str(v).split(".")[-1]) <= 7 for v in ring.ravel())
    props = feature["properties"]
    for field in ("site_id", "score", "rank", "flagged", "changed_area_m2", "changed_fraction", "valid_fraction",
                  "status", "shift_px", "before_source", "after_source", "before_date", "after_date"):
        assert field in props
    assert props["before_date"] == "2017-03-02" and props["after_date"] == "2018-10-11"
    changes = json.loads((site_run / "changes.geojson").read_text(encoding="utf-8"))
    assert changes["features"] and {"site_id", "area_m2", "score"} <= set(changes["features"][0]["properties"])
    assert all(f["properties"]["area_m2"] >= 500 for f in changes["features"])


def test_change_raster_is_a_tiled_compressed_float_with_overviews(site_run: Path) -> None:
    with rasterio.open(site_run / "change.tif") as src:
        assert src.count == 1 and src.dtypes[0] == "float32"
        assert src.profile["tiled"] and src.compression is not None
        data = src.read(1)
        assert np.isnan(data).any() and np.nanmax(data) <= 1 and np.nanmin(data) >= 0
        assert src.crs.to_epsg() == 32645


def test_run_json_records_inputs_parameters_and_threshold(site_run: Path, scene: Scene) -> None:
    record = json.loads((site_run / "run.json").read_text(encoding="utf-8"))
    assert record["inputs"]["before"]["files"][0]["sha256"] and record["inputs"]["sites"]["bytes"] > 0
    assert record["parameters"]["buffer_m"] == 250 and record["threshold"]["value"] == 0.5
    assert "rasterio" in record["versions"] and record["timings_s"]["total_s"] > 0
    assert record["parameters"]["bin"] == 0 and record["bin_applied"] == 1  # 10 m pixels: every pixel scored
    assert not list(site_run.glob(".*tmp*"))


def test_frames_finer_than_5_m_are_scored_on_blocks_of_2_and_10_m_imagery_pixel_by_pixel(tmp_path: Path) -> None:
    """The default ``--bin`` chooses from the pixel size (``ScanOptions.factor``); a bin given is kept."""
    from rasterio.transform import from_origin

    rng = np.random.default_rng(3)
    before = ground(rng)
    for pixel in (3.0, 10.0):
        grid = from_origin(500000.0, 4800000.0, pixel, pixel)
        write(tmp_path / f"b{pixel:g}.tif", before, UTM, grid, None)
        write(tmp_path / f"a{pixel:g}.tif", plant(before) + rng.normal(scale=25, size=before.shape), UTM, grid, None)
    for pixel, bin_given, applied in ((3.0, None, 2), (10.0, None, 1), (3.0, "1", 1)):
        out = tmp_path / f"out{pixel:g}{bin_given}"
        extra = ["--bin", bin_given] if bin_given else []
        assert run_cli("-q", "run", "--before", tmp_path / f"b{pixel:g}.tif", "--after", tmp_path / f"a{pixel:g}.tif",
                       "--out", out, "--cell-m", f"{40 * pixel:g}", "--method", "classical", *extra) == 0
        record = json.loads((out / "run.json").read_text(encoding="utf-8"))
        assert record["bin_applied"] == applied and record["parameters"]["bin"] == int(bin_given or 0)
        cells = gpd.read_file(out / "sites.geojson")
        assert cells["flagged"].any()  # the planted compound is found on blocks and pixel by pixel


def test_cell_mode_ranks_the_compound_cells_first(scene: Scene, tmp_path: Path) -> None:
    out = tmp_path / "cells"
    assert run_cli("-q", "run", "--before", scene.before, "--after", scene.after, "--out", out,
                   "--cell-m", "200") == 0
    cells = gpd.read_file(out / "sites.geojson").sort_values("rank")
    with rasterio.open(scene.before) as src:
        r0, r1, c0, c1 = COMPOUND
        x0, y0 = src.transform @ (c0, r0)
        x1, y1 = src.transform @ (c1, r1)
    compound = gpd.GeoSeries.from_xy([x0, x1], [y0, y1], crs=src.crs).to_crs(4326).total_bounds
    import shapely
    box = shapely.box(*compound).buffer(3e-4)  # walls spill a pixel or two into the next cell
    touching = cells.geometry.intersects(box).to_numpy()
    top = cells["rank"].to_numpy()[touching].max()
    assert cells["flagged"].to_numpy()[~touching].sum() == 0
    assert (cells["rank"].to_numpy()[:touching.sum()] <= top).all()
    assert cells["rank"].iloc[0] == 1 and touching[0]


def test_existing_output_is_kept_without_overwrite(site_run: Path, scene: Scene, capsys) -> None:
    before = (site_run / "sites.geojson").read_bytes()
    code = run_cli("run", "--sites", scene.sites, "--before", scene.before, "--after", scene.after, "--out", site_run)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--overwrite" in err[0]
    assert (site_run / "sites.geojson").read_bytes() == before


def damaged_tif(scene: Scene, tmp_path: Path) -> Path:
    data = scene.before.read_bytes()
    path = tmp_path / "damaged.tif"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def no_crs_tif(tmp_path: Path) -> Path:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as dst:
        dst.write(np.ones((3, 8, 8), np.uint8))
    return path


def far_sites(tmp_path: Path) -> Path:
    path = tmp_path / "far.csv"
    path.write_text("lon,lat\n10,10\n11,11\n", encoding="utf-8")
    return path


def far_raster(scene: Scene, tmp_path: Path) -> Path:
    path = tmp_path / "far.tif"
    with rasterio.open(scene.before) as src:
        profile = src.profile
        profile["transform"] = src.transform @ rasterio.Affine.translation(100000, 0)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())
    return path


def projected_numbers(tmp_path: Path) -> Path:
    """A GeoJSON (always degrees) holding the metres of a UTM grid, as a file saved without reprojecting does."""
    path = tmp_path / "utm.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "a"},
         "geometry": {"type": "Point", "coordinates": [500000.0, 4800000.0]}}]}), encoding="utf-8")
    return path


def other_bands(scene: Scene, tmp_path: Path) -> Path:
    folder = tmp_path / "swir_only"
    folder.mkdir()
    with rasterio.open(scene.before) as src:
        profile = src.profile | {"count": 1}
        with rasterio.open(folder / "B11.tif", "w", **profile) as dst:
            dst.write(src.read(1), 1)
    return folder


BAD = {
    "missing file": lambda s, t: ["--before", t / "nope.tif", "--after", s.after],
    "not a raster": lambda s, t: ["--before", s.sites, "--after", s.after],
    "not a vector": lambda s, t: ["--before", s.before, "--after", s.after, "--sites", s.before],
    "no crs": lambda s, t: ["--before", no_crs_tif(t), "--after", s.after],
    "damaged tif": lambda s, t: ["--before", damaged_tif(s, t), "--after", s.after],
    "sites outside": lambda s, t: ["--before", s.before, "--after", s.after, "--sites", far_sites(t)],
    "dates apart": lambda s, t: ["--before", s.before, "--after", far_raster(s, t)],
    "csv without coordinates": lambda s, t: ["--before", s.before, "--after", s.after, "--sites",
                                             (t / "nocoords.csv", (t / "nocoords.csv").write_text("a,b\n1,2\n"))[0]],
    "empty sites": lambda s, t: ["--before", s.before, "--after", s.after, "--sites",
                                 (t / "e.geojson", (t / "e.geojson").write_text(
                                     '{"type":"FeatureCollection","features":[]}'))[0]],
    "no common band": lambda s, t: ["--before", s.before, "--after", other_bands(s, t)],
    "dates reversed": lambda s, t: ["--before", s.after, "--after", s.before],
    "date not real": lambda s, t: ["--before", s.before, "--after", s.after, "--before-date", "2017-02-30"],
    "date in words": lambda s, t: ["--before", s.before, "--after", s.after, "--after-date", "last march"],
    "cells under a pixel": lambda s, t: ["--before", s.before, "--after", s.after, "--cell-m", "1"],
    "projected numbers in a GeoJSON": lambda s, t: ["--before", s.before, "--after", s.after, "--sites",
                                                    projected_numbers(t)],
    "sites folder": lambda s, t: ["--before", s.before, "--after", s.after, "--sites",
                                  (t / "shapes", (t / "shapes").mkdir())[0]],
    "mask elsewhere": lambda s, t: ["--before", s.before, "--after", s.after, "--after-mask", far_raster(s, t)],
}
NAMES = {"missing file": "nope.tif", "not a raster": "sites.geojson", "not a vector": "before_2017-03-02.tif",
         "no crs": "nocrs.tif", "damaged tif": "damaged.tif", "sites outside": "far.csv", "dates apart": "far.tif",
         "csv without coordinates": "nocoords.csv", "empty sites": "e.geojson", "no common band": "swir_only",
         "dates reversed": "dated 2018-", "date not real": "--before-date is '2017-02-30'",
         "date in words": "--after-date is 'last march': give a real date as YYYY-MM-DD",
         "cells under a pixel": "--cell-m 1 is under 3 pixels of the imagery (10.0 m each)",
         "projected numbers in a GeoJSON": "utm.geojson row 1 lies at x=500000 in EPSG:4326",
         "sites folder": "shapes is a folder GDAL cannot read as one vector dataset: give the site file in it",
         "mask elsewhere": "far.tif does not overlap the imagery it masks"}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_one_line_exit_2_and_writes_nothing(case: str, scene: Scene, tmp_path: Path,
                                                            capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "sites.geojson").write_text("earlier results", encoding="utf-8")
    args = BAD[case](scene, tmp_path)
    code = run_cli("-q", "run", *args, "--out", out, "--overwrite")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("detector: error: ") and NAMES[case] in err[0], err
    assert sorted(p.name for p in out.iterdir()) == ["sites.geojson"]
    assert (out / "sites.geojson").read_text(encoding="utf-8") == "earlier results"


@pytest.mark.parametrize("case", ["missing file", "no crs", "sites outside"])
def test_bad_input_creates_no_output_folder(case: str, scene: Scene, tmp_path: Path, capsys) -> None:
    out = tmp_path / "new" / "out"
    assert run_cli("-q", "run", *BAD[case](scene, tmp_path), "--out", out) == 2
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("make,expected", [(lambda t, s: t / "missing.tif", "missing.tif does not exist"),
                                           (lambda t, s: no_crs_tif(t), "nocrs.tif has no coordinate reference system"),
                                           (lambda t, s: damaged_tif(s, t), "damaged.tif")])
def test_the_console_script_exits_2_with_one_line(make, expected: str, scene: Scene, tmp_path: Path) -> None:
    """At the default verbosity too: GDAL's own messages about a damaged file stay off stderr."""
    exe = Path(sys.executable).with_name("detector")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "detector"]
    proc = subprocess.run([*command, "run", "--before", str(make(tmp_path, scene)), "--after",
                           str(scene.after), "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert expected in proc.stderr
    if "damaged" in expected:  # -v, before or after the command, shows GDAL's own messages too
        verbose = subprocess.run([*command, "run", "-v", "--before", str(make(tmp_path, scene)), "--after",
                                  str(scene.after), "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert verbose.returncode == 2 and "GDAL signalled an error" in verbose.stderr


def test_overlapping_sites_csv_input_and_clashing_attributes(scene: Scene, tmp_path: Path) -> None:
    from conftest import site_collection

    compound = site_collection()["features"][0]["geometry"]["coordinates"]
    csv = tmp_path / "sites.csv"
    csv.write_text("name,longitude,latitude,score\n"
                   f"big,{compound[0]},{compound[1]},high\n"
                   f"offset,{compound[0] + 0.001},{compound[1]},low\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--sites", csv, "--before", scene.before, "--after", scene.after, "--out", out,
                   "--buffer-m", "200") == 0
    sites = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert sites["flagged"].all()
    assert list(sites.loc[["big", "offset"], "user_score"]) == ["high", "low"]
    with rasterio.open(out / "change.tif") as src:
        data = src.read(1)
    assert np.isfinite(data).sum() > 0 and np.nanmax(data) <= 1


def test_a_sites_file_fed_back_keeps_the_users_columns_beside_ours(scene: Scene, tmp_path: Path) -> None:
    """A run's own sites.geojson as --sites holds score and user_score: both are kept, neither lost."""
    first = tmp_path / "first"
    assert run_cli("-q", "run", "--sites", scene.sites, "--before", scene.before, "--after", scene.after,
                   "--out", first, "--buffer-m", "250", "--method", "classical") == 0
    again = tmp_path / "again"
    assert run_cli("-q", "run", "--sites", first / "sites.geojson", "--before", scene.before, "--after",
                   scene.after, "--out", again, "--method", "classical") == 0
    twice = tmp_path / "twice"
    assert run_cli("-q", "run", "--sites", again / "sites.geojson", "--before", scene.before, "--after",
                   scene.after, "--out", twice, "--method", "classical") == 0
    sites = gpd.read_file(twice / "sites.geojson").set_index("site_id")
    first_scores = gpd.read_file(first / "sites.geojson").set_index("site_id").loc[sites.index, "score"]
    again_scores = gpd.read_file(again / "sites.geojson").set_index("site_id").loc[sites.index, "score"]
    assert list(sites.columns).count("score") == 1
    # the second run's score came as the file's own `score`: renamed past its `user_score`, the first run's
    np.testing.assert_array_equal(sites["user_score"].to_numpy(float), first_scores.to_numpy(float))
    np.testing.assert_array_equal(sites["user_score_2"].to_numpy(float), again_scores.to_numpy(float))


def test_a_folder_gdal_reads_as_one_dataset_is_sites_and_its_files_are_hashed(scene: Scene, tmp_path: Path) -> None:
    folder = tmp_path / "shapes"
    folder.mkdir()
    gpd.read_file(scene.sites).to_file(folder / "sites.shp")
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--sites", folder, "--before", scene.before, "--after", scene.after, "--out", out,
                   "--buffer-m", "250", "--method", "classical") == 0
    record = json.loads((out / "run.json").read_text())["inputs"]["sites"]
    assert record["bytes"] == sum(p.stat().st_size for p in folder.iterdir()) and len(record["sha256"]) == 64
    assert gpd.read_file(out / "sites.geojson").set_index("site_id").loc["compound", "flagged"]


def test_an_output_that_is_a_link_stays_a_link_to_the_new_results(scene: Scene, tmp_path: Path) -> None:
    target, link = tmp_path / "target", tmp_path / "link"
    target.mkdir()
    link.symlink_to(target)
    for _ in range(2):
        assert run_cli("-q", "run", "--before", scene.before, "--after", scene.after, "--sites", scene.sites,
                       "--out", link, "--overwrite", "--method", "classical") == 0
    assert link.is_symlink() and (link / "run.json").is_file() and (target / "run.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_an_option_of_the_wrong_type_is_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli("run", "--before", "a.tif", "--after", "b.tif", "--out", "o", "--buffer-m", "abc")
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0] == "detector run: error: argument --buffer-m: invalid float value: 'abc' (see detector run --help)"


def test_an_undated_date_is_said_and_the_current_folder_can_be_the_output(scene: Scene, tmp_path: Path,
                                                                         monkeypatch, caplog) -> None:
    import logging
    import shutil

    undated = tmp_path / "scene.tif"
    shutil.copy(scene.before, undated)
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with caplog.at_level(logging.WARNING):
        assert run_cli("-q", "run", "--before", undated, "--after", scene.after, "--sites", scene.sites,
                       "--out", ".", "--method", "classical") == 0
    assert "--before" in caplog.text and "has no date" in caplog.text and "--before-date" in caplog.text
    assert (tmp_path / "here" / "run.json").is_file() and not list(tmp_path.glob(".*"))


def test_the_sample_change_raster_has_overviews(tmp_path: Path) -> None:
    from conftest import SAMPLE

    out = tmp_path / "sample"
    assert run_cli("-q", "run", "--before", SAMPLE / "2017-03-02.tif", "--after", SAMPLE / "2018-10-11.tif",
                   "--out", out) == 0
    with rasterio.open(out / "change.tif") as src:
        assert src.overviews(1) and src.block_shapes[0] == (512, 512)


def test_quiet_after_the_command_and_plain_progress_lines_off_a_terminal(scene: Scene, tmp_path: Path,
                                                                          capsys) -> None:
    args = ["run", "--before", str(scene.before), "--after", str(scene.after), "--cell-m", "300"]
    assert main([*args, "--out", str(tmp_path / "q"), "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main([*args, "--out", str(tmp_path / "p"), "--tile-px", "64", "--bin", "1"]) == 0
    err = capsys.readouterr().err  # captured: not a terminal
    lines = [line for line in err.splitlines() if line.startswith("scoring")]
    assert "\r" not in err and "\x1b" not in err and 2 <= len(lines) <= 11 and lines[-1].endswith("100 %")


def test_the_help_says_what_the_tool_does(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "new construction" in out and "only module" not in out


def test_overwrite_refuses_a_folder_holding_files_we_did_not_write(scene: Scene, tmp_path: Path, capsys) -> None:
    args = ["-q", "run", "--before", scene.before, "--after", scene.after, "--sites", scene.sites, "--overwrite"]
    site_run = tmp_path / "ours"
    assert run_cli(*args, "--out", site_run) == 0
    assert run_cli(*args, "--out", site_run) == 0  # our own results: replaced
    mine = site_run / "chips" / "mychip.png"
    mine.write_bytes(b"a reviewer's own picture")
    before = sorted(p.name for p in site_run.iterdir())
    assert run_cli(*args, "--out", site_run) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "chips/mychip.png" in err[0] and "did not write" in err[0]
    assert mine.read_bytes() == b"a reviewer's own picture" and sorted(p.name for p in site_run.iterdir()) == before
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "run.json").write_text('{"my": "notes"}', encoding="utf-8")
    assert run_cli(*args, "--out", theirs) == 2
    assert (theirs / "run.json").read_text(encoding="utf-8") == '{"my": "notes"}'


def result_state(out: Path) -> tuple[float, str]:
    """The threshold a result folder was made with, checked whole: run.json, sites.geojson and every chip and
    file a result holds agree; and the compound's verdict."""
    record = json.loads((out / "run.json").read_text())
    sites = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert {"changes.geojson", "change.tif", "report.html", "sites.qml"} <= {p.name for p in out.iterdir()}
    assert set(sites["threshold"]) == {record["threshold"]["value"]}
    for path in sites["chip_before"].dropna():
        assert (out / path).is_file()
    return record["threshold"]["value"], sites.loc["compound", "review_status"]


SLOW_IMPORT = """
import sys, time
print("import started", flush=True)
time.sleep(float(sys.argv[2]))
print("import finished", flush=True)
"""

INTERRUPTED_IN_IMPORT = """
import signal, sys, time
from detector.console import interrupt_after_imports
signal.signal(signal.SIGINT, interrupt_after_imports)
sys.path.insert(0, sys.argv[1])
try:
    import slow_import
    time.sleep(30)
except KeyboardInterrupt:
    print("interrupted, imported:", "slow_import" in sys.modules, flush=True)
    time.sleep(0.5)  # a second resend pending would interrupt this
    print("one interrupt", flush=True)
"""


def _slow_import(tmp_path: Path, seconds: float) -> subprocess.Popen:
    """A process that imports a module taking ``seconds`` to load, under the run's SIGINT handler."""
    import signal

    (tmp_path / "slow_import.py").write_text(SLOW_IMPORT, encoding="utf-8")
    process = subprocess.Popen([sys.executable, "-c", INTERRUPTED_IN_IMPORT, str(tmp_path), str(seconds)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert process.stdout.readline().strip() == "import started"
    return process


def test_ctrl_c_during_an_import_waits_for_the_import_to_end(tmp_path: Path) -> None:
    """A KeyboardInterrupt raised inside a native library's initialization aborts the process (torch's pybind11
    modules: ``terminate called after throwing pybind11::error_already_set``), so the run's handler lets an
    import finish and interrupts right after it, once."""
    import signal

    process = _slow_import(tmp_path, 1.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=30)
    assert out.splitlines() == ["import finished", "interrupted, imported: True", "one interrupt"], err
    assert process.returncode == 0


def test_a_second_ctrl_c_ends_an_import_that_hangs(tmp_path: Path) -> None:
    """The first Ctrl-C waits for the import; a second one, pressed while it waits, ends the process at once
    with the same line and status."""
    import signal

    process = _slow_import(tmp_path, 60.0)
    deadline = time.monotonic() + 10
    try:
        while process.poll() is None and time.monotonic() < deadline:
            process.send_signal(signal.SIGINT)  # pressed again and again: one of them lands between two resends
            time.sleep(0.2)
        out, err = process.communicate(timeout=1)
    finally:
        process.kill()
    assert out == "" and err.splitlines() == ["detector: interrupted; results already complete are kept"]
    assert process.returncode == 130


KILL_AT_STEP = """
import os, signal, sys
import detector.outputs as outputs
step, calls = int(sys.argv[1]), [0]
def killed_before(f):
    def g(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return f(*args, **kwargs)
    return g
os.replace = killed_before(os.replace)  # every rename of the run, the swap's among them
outputs._exchange = killed_before(outputs._exchange)
outputs.remove = killed_before(outputs.remove)
from detector.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_run_killed_at_each_step_of_the_swap_leaves_old_or_new_results_whole_and_no_verdict_lost(
        scene: Scene, tmp_path: Path) -> None:
    """A real ``detector run --overwrite``, killed with SIGKILL before each rename, exchange or removal."""
    out = tmp_path / "out"
    args = ["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--sites", str(scene.sites),
            "--out", str(out), "--overwrite", "--method", "classical"]
    assert main([*args, "--threshold", "0.5"]) == 0
    sites = gpd.read_file(out / "sites.geojson")
    sites.loc[sites["site_id"] == "compound", "review_status"] = "confirmed"
    sites.to_file(out / "sites.geojson", driver="GeoJSON")
    current, swapped = 0.5, 0
    for step in range(1, 30):
        threshold = round(0.5 + step / 100, 2)
        proc = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(step), *args, "--threshold", str(threshold)])
        found, verdict = result_state(out)
        assert verdict == "confirmed", step
        if proc.returncode == 0:  # past the last step: the run completed
            assert found == threshold
            break
        assert proc.returncode == -9 and found in (current, threshold), (step, found, current)
        swapped += found == threshold  # killed after the swap: the new results are in place, whole
        current = found
    else:
        pytest.fail("the run never completed")
    assert swapped > 0 and step > 2
    assert main([*args, "--threshold", "0.9"]) == 0
    assert result_state(out) == (0.9, "confirmed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing a killed run left beside it


def test_sites_smaller_than_a_pixel_are_said(scene: Scene, tmp_path: Path, caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING):
        assert run_cli("-q", "run", "--before", scene.before, "--after", scene.after, "--sites", scene.sites,
                       "--out", tmp_path / "o", "--buffer-m", "1", "--method", "classical") == 0
    assert "smaller than one pixel of the imagery (100 m2)" in caplog.text


def test_an_output_folder_under_a_file_is_one_line(scene: Scene, tmp_path: Path, capsys) -> None:
    (tmp_path / "afile.txt").write_text("mine")
    assert run_cli("-q", "run", "--before", scene.before, "--after", scene.after, "--out",
                   tmp_path / "afile.txt" / "sub", "--method", "classical") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "afile.txt" in err[0] and (tmp_path / "afile.txt").read_text() == "mine"


@pytest.mark.slow
def test_ctrl_c_is_one_line_and_exit_130(scene: Scene, tmp_path: Path) -> None:
    """Interrupted while torch loads, while it scores, while it writes: one line, exit 130, nothing else.
    (``--backend torch``: with ONNX Runtime and the shipped export, torch never loads and the run is over
    before the first signal.)"""
    import signal

    codes = []
    for k, delay in enumerate((1.2, 1.7, 2.2)):
        process = subprocess.Popen([sys.executable, "-m", "detector", "run", "--before", str(scene.before),
                                    "--after", str(scene.after), "--out", str(tmp_path / str(k)), "--cell-m", "300",
                                    "--backend", "torch"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   # a suite started in the background (`cmd &`) ignores SIGINT, and so would the run
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        time.sleep(delay)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        codes.append(process.returncode)
        assert process.returncode in (0, 130), (delay, process.returncode, err)
        if process.returncode == 130:
            assert "Traceback" not in err and "INFO torch" not in err, err
            assert err.strip().splitlines()[-1] == "detector: interrupted; results already complete are kept"
    assert 130 in codes
