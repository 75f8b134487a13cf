"""``detector timeline``: the persistence rule, and generated series with compounds built and extended at known
dates, a hazy date, a shifted date and a cloudy date."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import ORIGIN, PIXEL, SHARED, SIZE, UTM, compound, ground
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_points
from scipy import ndimage

from detector.cli import main
from detector.timeline.series import NEVER, KindRule, kind, onsets

DATES = ("2017-03-01", "2017-05-01", "2017-07-01", "2017-09-01", "2018-03-01", "2018-05-01", "2018-07-01",
         "2018-09-01")
HAZY, SHIFTED, CLOUDY = 4, 6, 2
NEW_WEST, NEW_EAST = (40, 80, 30, 90, 3), (40, 80, 92, 130, 5)  # rows, cols of the new compound, built at index
OLD, GROWTH = (150, 190, 30, 80, 0), (150, 190, 82, 120, 5)  # a compound there from the start, extended
SITES = {"new compound": (30, 90, 20, 140), "old compound": (140, 200, 20, 130), "quiet": (150, 205, 160, 225)}


def day(value: object) -> str:
    """An ISO date as GeoJSON holds it (readers turn it into a timestamp)."""
    return str(value)[:10]


def test_one_bad_date_neither_creates_nor_erases_construction() -> None:
    series = np.array([
        [0, 0, 1, 1, 1, 1],  # built from date 2
        [0, 0, 1, 0, 1, 1],  # the same, one date misread: still date 2
        [0, 1, 0, 0, 0, 0],  # one hazy date: never built
        [0, 0, 0, 0, 0, 1],  # only the last date: not confirmed
        [0, 0, np.nan, 1, 1, np.nan],  # cloudy dates cost nothing: built at date 3
        [0, 1, 0, 0, 1, 0],  # scattered: as good as "never", which wins the tie
    ], dtype=np.float32).T[:, :, None]
    assert onsets(series, min_persistence=2)[:, 0].tolist() == [2, 2, NEVER, NEVER, 3, NEVER]
    assert onsets(series, min_persistence=1)[3, 0] == 5


def test_kinds_and_their_reasons() -> None:
    rule = KindRule()
    assert kind(0, 50_000, 6, rule, onset=True)[0] == "new"
    assert kind(4_000, 50_000, 6, rule, onset=True)[0] == "new"  # under a tenth of the last: not a compound yet
    assert kind(10_000, 30_000, 6, rule, onset=True)[0] == "expanded"
    assert kind(10_000, 30_000, 6, rule, onset=False)[0] == "unchanged"  # the site's score never persisted
    assert kind(10_000, 11_000, 6, rule, onset=True)[0] == "unchanged"
    assert kind(0, 500, 6, rule, onset=True)[0] == "unchanged"
    assert kind(0, 50_000, 2, rule, onset=True) == ("insufficient_data", "2 usable date(s), fewer than 3")


def date_image(base: np.ndarray, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The ground at date ``index``, with what is built by then, in that date's light; and its cloud mask."""
    image = base.copy()
    for r0, r1, c0, c1, built in (NEW_WEST, NEW_EAST, OLD, GROWTH):
        if index >= built:
            compound(image, r0, r1, c0, c1)
    image = image * (1 + 0.05 * np.sin(index)) + 80 * index + rng.normal(scale=25, size=base.shape)
    if index == HAZY:
        image = 0.55 * image + 0.45 * 4000
    if index == SHIFTED:
        image = ndimage.shift(image, (0, 2, 2), order=1, mode="nearest")
    mask = np.zeros(image.shape[1:], np.uint8)
    if index == CLOUDY:
        r0, r1, c0, c1 = SITES["quiet"]
        mask[r0 - 5:r1 + 5, c0 - 5:c1 + 5] = 1
        image[:, mask > 0] = 9000
    return image, mask


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("timeline")
    scenes = folder / "scenes"
    scenes.mkdir()
    rng = np.random.default_rng(3)
    base = ground(rng)
    for i, date in enumerate(DATES):
        image, mask = date_image(base, i, rng)
        with rasterio.open(scenes / f"S2_{date}.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=5,
                           dtype="uint16", crs=UTM, transform=from_origin(*ORIGIN, PIXEL, PIXEL)) as dst:
            dst.write(np.concatenate([np.clip(image, 1, 65000), mask[None]]).astype("uint16"))
            for band, name in enumerate(("blue", "green", "red", "nir", "cloud"), start=1):
                dst.set_band_description(band, name)
    features = []
    for name, (r0, r1, c0, c1) in SITES.items():
        xs = [ORIGIN[0] + c * PIXEL for c in (c0, c1, c1, c0, c0)]
        ys = [ORIGIN[1] - r * PIXEL for r in (r0, r0, r1, r1, r0)]
        lon, lat = warp_points(UTM, "EPSG:4326", xs, ys)
        features.append({"type": "Feature", "properties": {"name": name},
                         "geometry": {"type": "Polygon", "coordinates": [list(map(list, zip(lon, lat, strict=True)))]}})
    features.append({"type": "Feature", "properties": {"name": "far away"},
                     "geometry": {"type": "Point", "coordinates": [10.0, 10.0]}})
    (folder / "sites.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return folder


@pytest.fixture(scope="module")
def result(catalog: Path) -> Path:
    out = catalog / "out"
    assert main(["-q", "timeline", "--sites", str(catalog / "sites.geojson"), "--catalog", str(catalog / "scenes"),
                 "--out", str(out)]) == 0
    return out


def test_the_new_compound_is_dated_and_its_extension_is_a_second_part(result: Path) -> None:
    sites = gpd.read_file(result / "timeline.geojson").set_index("site_id")
    new = sites.loc["new compound"]
    assert new["kind"] == "new", new["kind_reason"]
    assert (day(new["onset_after"]), day(new["onset_before"])) == (DATES[2], DATES[3])
    assert new["built_m2_last"] > 0.7 * (40 * 98 * PIXEL**2)
    parts = gpd.read_file(result / "parts.geojson")
    mine = parts[parts["site_id"] == "new compound"].to_crs(UTM)
    onset = mine["onset_before"].map(day)
    west = mine[onset == DATES[3]].union_all()
    east = mine[onset == DATES[NEW_EAST[4]]].union_all()
    assert west.area > 0.6 * 40 * 60 * PIXEL**2 and east.area > 0.6 * 40 * 38 * PIXEL**2
    assert west.centroid.x < east.centroid.x
    assert (mine["onset_after"].map(day) < DATES[2]).sum() == 0  # nothing dated before it was built


def test_an_old_compound_that_grew_is_an_expansion_and_quiet_ground_is_unchanged(result: Path) -> None:
    sites = gpd.read_file(result / "timeline.geojson").set_index("site_id")
    old = sites.loc["old compound"]
    assert old["kind"] == "expanded", old["kind_reason"]
    assert old["built_m2_first"] > 0.5 * 40 * 50 * PIXEL**2
    assert day(old["onset_before"]) == DATES[GROWTH[4]]
    quiet = sites.loc["quiet"]
    assert quiet["kind"] == "unchanged", quiet["kind_reason"]
    assert DATES[CLOUDY] in quiet["dates_skipped"] and DATES[CLOUDY] not in quiet["dates_used"]
    assert DATES[CLOUDY] in sites.loc["new compound", "dates_used"]
    far = sites.loc["far away"]
    assert far["kind"] == "insufficient_data" and far["kind_reason"] == "no scene of the catalog covers the site"


def test_the_csv_charts_filmstrips_report_and_record(result: Path) -> None:
    table = pd.read_csv(result / "timeline.csv")
    new = table[table["site_id"] == "new compound"]
    assert new["date"].tolist() == list(DATES)
    assert (np.diff(new["built_m2"]) >= 0).all() and new["built_m2"].iloc[0] == 0
    sites = gpd.read_file(result / "timeline.geojson").set_index("site_id")
    assert sites.loc[["far away"], ["chart", "filmstrip"]].isna().all(axis=None)  # no date: nothing to draw
    for path in (*sites["chart"].dropna(), *sites["filmstrip"].dropna()):
        assert (result / path).is_file() and (result / path).read_bytes()[:4] == b"\x89PNG"
    text = (result / "report.html").read_text()
    assert "new compound" in text and "expanded" in text and "onset" in text
    record = json.loads((result / "timeline.json").read_text())
    assert len(record["inputs"]["scenes"]) == len(DATES) and record["rule"].startswith("onset: ")
    assert record["sites"]["quiet"]["dates_skipped"]
    assert record["parameters"]["rule"]["scan"]["bin"] == 0  # as given: chosen per site from its pixel size
    assert record["sites"]["quiet"]["bin"] == 1 and record["sites"]["far away"]["bin"] is None  # 10 m: every pixel
    assert (result / "timeline.qml").is_file() and (result / "parts.qml").is_file()


def test_a_catalog_of_one_date_and_undated_files_are_one_line(catalog: Path, tmp_path: Path, capsys) -> None:
    one = tmp_path / "one"
    one.mkdir()
    (one / "S2_2017-03-01.tif").write_bytes((catalog / "scenes" / "S2_2017-03-01.tif").read_bytes())
    out = tmp_path / "out"
    args = ["-q", "timeline", "--sites", str(catalog / "sites.geojson"), "--out", str(out), "--catalog"]
    assert main([*args, str(one)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 date" in err and not out.exists()
    (one / "S2_2017-05-01.tif").write_bytes((catalog / "scenes" / "S2_2017-05-01.tif").read_bytes())
    assert main([*args, str(one)]) == 2  # two dates: every site would be insufficient_data
    err = capsys.readouterr().err.strip()
    assert "2 dates" in err and "needs at least 3 dated scenes" in err and not out.exists()
    (one / "S2_2017-05-01.tif").unlink()
    (one / "scene.tif").write_bytes((catalog / "scenes" / "S2_2017-05-01.tif").read_bytes())
    assert main([*args, str(one)]) == 2
    assert "has no date in its name" in capsys.readouterr().err and not out.exists()


def test_sites_no_scene_covers_and_a_missing_model_are_one_line_and_leave_the_results(result: Path, catalog: Path,
                                                                                      tmp_path: Path,
                                                                                      capsys) -> None:
    import shutil

    earlier = tmp_path / "earlier"
    shutil.copytree(result, earlier)
    listing = sorted(p.name for p in earlier.iterdir())
    far = tmp_path / "far.geojson"
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"name": "far away"},
         "geometry": {"type": "Point", "coordinates": [10.0, 10.0]}}]}))
    args = ["-q", "timeline", "--catalog", str(catalog / "scenes"), "--out", str(earlier), "--overwrite"]
    for more, message in ((["--sites", str(far)], "none of the 1 sites lies in a scene of the catalog"),
                          (["--sites", str(catalog / "sites.geojson"), "--model", str(tmp_path / "nope.pt")],
                           "nope.pt does not exist")):
        assert main([*args, *more]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert sorted(p.name for p in earlier.iterdir()) == listing
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no state beside it


@pytest.mark.real_data
@pytest.mark.skipif(not (SHARED / "dabancheng-sentinel2" / "registered").exists(), reason="needs ../shared/data")
def test_the_real_dabancheng_frames_date_facility_1_and_its_extension(tmp_path: Path) -> None:
    """What the twelve frames show (looked at, frame by frame): 2017-03-02 bare ground; by 2017-06-10 the
    compound's ground cleared and walled; buildings of its western and central part (west of about
    88.2915 E, ASPI's point among them) from 2017-07-08 to 2018-03-22; an eastern extension cleared by
    2018-04-29 and built from 2018-05-26; Facility #2 bare in every frame (ASPI: no building until 2019)."""
    aspi = gpd.read_file(SHARED / "xinjiang-aspi-facilities" / "facilities_v1.geojson")
    sites = tmp_path / "dabancheng.geojson"
    aspi[aspi["Name_Code"].str.startswith("Dabancheng")].to_file(sites)
    out = tmp_path / "out"
    assert main(["-q", "timeline", "--sites", str(sites), "--catalog",
                 str(SHARED / "dabancheng-sentinel2" / "registered"), "--out", str(out), "--buffer-m", "800"]) == 0
    found = gpd.read_file(out / "timeline.geojson").set_index("site_id")
    first = found.loc["Dabancheng Facility #1"]
    assert first["kind"] == "new", first["kind_reason"]
    assert (day(first["onset_after"]), day(first["onset_before"])) == ("2017-03-02", "2017-06-10")
    assert found.loc["Dabancheng Facility #2", "kind"] == "unchanged"
    parts = gpd.read_file(out / "parts.geojson")
    parts = parts[parts["site_id"] == "Dabancheng Facility #1"]
    x = parts.to_crs(4326).geometry.representative_point().x
    onset = parts["onset_before"].map(day)
    first, east = parts[x < 88.2915], parts[x > 88.2915]  # the first compound (ASPI's point in it), its extension
    assert first["area_m2"][onset[x < 88.2915] <= "2018-03-22"].sum() > 0.75 * first["area_m2"].sum()
    built_2018 = east["area_m2"][(onset[x > 88.2915] >= "2018-04-29") & (onset[x > 88.2915] <= "2018-07-23")]
    assert built_2018.sum() > 0.8 * east["area_m2"].sum() and east["area_m2"].sum() > 50_000


def many_sites(catalog: Path, count: int) -> Path:
    """``count`` small sites on a grid over the generated scenes, for the scale tests."""
    features = []
    for i in range(count):
        r, c = 20 + 200 * (i // 4) / 3, 20 + 190 * (i % 4) / 3
        lon, lat = warp_points(UTM, "EPSG:4326", [ORIGIN[0] + c * PIXEL], [ORIGIN[1] - r * PIXEL])
        features.append({"type": "Feature", "properties": {"name": f"site {i:02d}"},
                         "geometry": {"type": "Point", "coordinates": [lon[0], lat[0]]}})
    path = catalog / f"grid{count}.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def comparable(out: Path) -> tuple[list, str, list]:
    """The outputs' contents, in an order that does not depend on which worker finished first."""
    def features(name: str) -> list:
        found = json.loads((out / name).read_text())["features"]
        return sorted(json.dumps(f, sort_keys=True) for f in found)

    return features("timeline.geojson"), (out / "timeline.csv").read_text(), features("parts.geojson")


@pytest.mark.slow
def test_killed_with_sigkill_it_resumes_and_worker_processes_and_dask_give_the_same(catalog: Path,
                                                                                  tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    sites = many_sites(catalog, 12)
    base = ["timeline", "--sites", str(sites), "--catalog", str(catalog / "scenes"), "--buffer-m", "150"]
    alone = tmp_path / "alone"
    assert main(["-q", *base, "--out", str(alone)]) == 0
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "detector", "-q", *base, "--out", str(out)])
    state = tmp_path / ".killed.state"
    deadline = time.time() + 120
    while len(list(state.glob("*.site.json"))) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list(state.glob("*.site.json")))
    assert 3 <= kept < 12 and not out.exists()
    assert main(["-q", *base, "--out", str(out)]) == 0
    record = json.loads((out / "timeline.json").read_text())
    assert record["counts"]["ran_this_time"] == 12 - kept
    assert comparable(out) == comparable(alone)
    for extra in (["--workers", "2"], ["--dask", "local:2"]):
        other = tmp_path / extra[0].strip("-")
        assert main(["-q", *base, "--out", str(other), *extra]) == 0
        assert comparable(other) == comparable(alone)


def test_a_batch_configuration_gives_its_timeline_beside_its_results(catalog: Path, tmp_path: Path) -> None:
    config = tmp_path / "batch.toml"
    config.write_text(f'[sites]\npaths = ["{catalog / "sites.geojson"}"]\n[imagery]\ncatalog = "{catalog / "scenes"}"\n'
                      '[dates]\nbefore = ["2017-01-01", "2017-12-31"]\nafter = ["2018-01-01", "2018-06-30"]\n'
                      '[run]\nmethod = "classical"\n[output]\ndir = "results/"\n', encoding="utf-8")
    assert main(["-q", "timeline", str(config)]) == 0
    out = tmp_path / "results" / "timeline"
    sites = gpd.read_file(out / "timeline.geojson").set_index("site_id")
    assert DATES[-1] not in sites.loc["new compound", "dates_used"]  # after the configuration's last date
    assert sites.loc["new compound", "kind"] == "new" and sites.loc["new compound", "method"] == "classical"
    assert main(["-q", "timeline", str(config)]) == 0  # again: every site from the state, nothing run
    assert json.loads((out / "timeline.json").read_text())["counts"]["ran_this_time"] == 0
    assert main(["-q", "batch", str(config), "--workers", "1"]) in (0, 1)  # its batch, after: the folder is its own
    assert (tmp_path / "results" / "batch.json").is_file() and (out / "timeline.json").is_file()


def test_the_timeline_opens_in_qgis_styled_by_kind_and_year(result: Path, tmp_path: Path) -> None:
    import os
    import subprocess

    from test_qgis import SYSTEM_PYTHON, qgis_available

    if not qgis_available():
        pytest.skip("python3-qgis is not installed (.ci/run installs it)")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    done = subprocess.run([SYSTEM_PYTHON, Path(__file__).with_name("qgis_check.py"), result, "timeline", "parts"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    layers = json.loads(done.stdout.strip().splitlines()[-1])
    timeline, parts = layers["timeline"], layers["parts"]
    assert timeline["valid"] and parts["valid"] and timeline["crs"] == parts["crs"] == "EPSG:4326"
    assert timeline["renderer"] == "categorizedSymbol" and timeline["classes"] == 4 and timeline["labels"]
    assert parts["renderer"] == "graduatedSymbol" and {"onset_year", "onset_before"} <= set(parts["fields"])


@pytest.mark.parametrize(("factor", "registered"), [(1, True), (2, False)])
def test_the_shift_limit_counts_pixels_of_the_imagery_grid_not_of_the_blocks(factor: int, registered: bool) -> None:
    """A date 3 blocks off the reference: within 4 px of the grid at blocks of 1 (corrected, as with a limit of
    16), beyond them at blocks of 2, where 3 blocks are 6 px (left as it is)."""
    from detector.config import ScanOptions
    from detector.timeline.site import change_maps
    rng = np.random.default_rng(4)
    texture = ndimage.gaussian_filter(rng.normal(size=(128, 128)), 2) * 3000 + 2000
    first = np.repeat(texture[None], 4, axis=0)
    stack = np.stack([first, ndimage.shift(first, (0, 3.0, 0), order=1, mode="nearest")]).astype(np.float32)
    score = {limit: change_maps(stack, ("blue", "green", "red", "nir"), ScanOptions(max_shift_px=limit,
                                method="classical"), None, pixel_m=10.0 * factor, factor=factor)[0]
             for limit in (4.0, 16.0)}
    assert np.allclose(score[4.0], score[16.0], equal_nan=True) == registered
