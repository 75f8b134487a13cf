"""Chips and report.html: files written, paths in the sites, user input escaped, renders in Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from conftest import Scene
from PIL import Image

from detector.chips import overlay, stretch
from detector.cli import main

HOSTILE = "<script>alert(1)</script>"
NAMES = {"compound": "ئۈرۈمچى يېڭى لاگېر", "green field": "乌鲁木齐 绿地", "quiet": HOSTILE, "far away": "far"}


@pytest.fixture(scope="module")
def reviewed_run(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    collection = json.loads(scene.sites.read_text())
    for feature in collection["features"]:
        feature["properties"]["label"] = NAMES[feature["properties"]["name"]]
    sites = folder / "sites.geojson"
    sites.write_text(json.dumps(collection, ensure_ascii=False), encoding="utf-8")
    out = folder / "out"
    assert main(["-q", "run", "--sites", str(sites), "--before", str(scene.before), "--after", str(scene.after),
                 "--out", str(out), "--buffer-m", "250", "--method", "classical", "--chips", "3"]) == 0
    return out


def test_chips_for_flagged_and_top_sites_with_relative_paths(reviewed_run: Path) -> None:
    sites = gpd.read_file(reviewed_run / "sites.geojson").set_index("site_id")
    with_chips = sites[sites["chip_before"].notna()]
    assert set(with_chips.index) >= set(sites.index[sites["flagged"]]) and len(with_chips) >= 2
    assert pd.isna(sites.loc["far away", "chip_before"])  # no data, no chip
    for path in with_chips[["chip_before", "chip_after", "chip_change"]].to_numpy().ravel():
        assert not Path(path).is_absolute()
        image = Image.open(reviewed_run / path)
        assert image.format == "PNG" and 8 <= max(image.size) <= 512
    before = np.asarray(Image.open(reviewed_run / sites.loc["compound", "chip_before"]))
    after = np.asarray(Image.open(reviewed_run / sites.loc["compound", "chip_after"]))
    assert after.mean() > before.mean() + 10  # bright new roofs, shown with one stretch


def test_stretch_is_shared_and_the_overlay_marks_change() -> None:
    before = np.full((3, 4, 4), 100.0, dtype=np.float32)
    before[:, 0, 0] = 0
    after = before.copy()
    after[:, 1:3, 1:3] = 200
    b, a = stretch(before, after)
    assert b.dtype == np.uint8 and b.shape == (4, 4, 3) and a[1, 1, 0] > b[1, 1, 0]
    score = np.zeros((4, 4), np.float32)
    score[1, 1] = 0.9
    edges, outline = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    outline[0] = True
    picture = overlay(a, score, edges, outline, pixel_threshold=0.5)
    assert tuple(picture[0, 0]) == (0, 220, 255) and picture[1, 1, 0] > picture[1, 1, 2]


def test_report_escapes_user_input_and_keeps_non_ascii_names(reviewed_run: Path) -> None:
    page = (reviewed_run / "report.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert NAMES["compound"] in page
    assert "http://" not in page and "https://" not in page  # works offline
    chips = gpd.read_file(reviewed_run / "sites.geojson")["chip_before"].notna().sum()
    assert page.count("<tr class=") == chips and "further sites" in page
    assert page.count("attributes</summary>") == chips and "shift_peak" in page  # attributes folded, chips first
    assert re.search(r"<small>\d+\.\d{5}, \d+\.\d{5}</small>", page)  # where each site is, to paste into a map


def test_change_polygons_lie_in_the_site_they_name(reviewed_run: Path) -> None:
    sites = gpd.read_file(reviewed_run / "sites.geojson").set_index("site_id")
    changes = gpd.read_file(reviewed_run / "changes.geojson")
    assert len(changes) > 0
    for site_id, geometry in zip(changes["site_id"], changes.geometry, strict=True):
        # pixel squares along the site's edge may stick out by a pixel
        assert sites.loc[site_id].geometry.intersection(geometry).area > 0.9 * geometry.area


CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_rows_and_images_in_headless_chromium(reviewed_run: Path) -> None:
    script = ("document.title = [document.querySelectorAll('tbody tr').length, "
              "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length, "
              "document.querySelectorAll('script').length].join(',')")
    probe = reviewed_run / "probe.html"
    page = (reviewed_run / "report.html").read_text(encoding="utf-8")
    probe.write_text(page.replace("script-src", "x").replace(
        "style-src 'unsafe-inline'\"", "style-src 'unsafe-inline'; script-src 'unsafe-inline'\"")
        .replace("</body>", f"<script>window.onload = () => {{ {script}; }}</script></body>"), encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--allow-file-access-from-files", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
             "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = result.stdout.split("<title>")[1].split("</title>")[0]
    rows, images, scripts = (int(x) for x in title.split(","))
    chips = gpd.read_file(reviewed_run / "sites.geojson")["chip_before"].notna().sum()
    assert rows == chips and images == 3 * chips and scripts == 1  # our probe only: the hostile name stayed text


def test_change_polygons_of_cells_lie_in_their_cell(scene: Scene, tmp_path: Path) -> None:
    # cells rank in another order than they are numbered: the case that once mixed the ids up
    assert main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(tmp_path),
                 "--method", "classical", "--cell-m", "300", "--chips", "0"]) == 0
    cells = gpd.read_file(tmp_path / "sites.geojson").set_index("site_id")
    changes = gpd.read_file(tmp_path / "changes.geojson")
    assert len(changes) >= 3
    for site_id, geometry in zip(changes["site_id"], changes.geometry, strict=True):
        assert cells.loc[site_id].geometry.intersection(geometry).area > 0.99 * geometry.area


def test_bidirectional_controls_in_user_text_are_shown_and_isolated(reviewed_run: Path) -> None:
    from detector.report import render

    sites = gpd.read_file(reviewed_run / "sites.geojson")
    sites.loc[sites["site_id"] == "compound", "label"] = "\u202eevil\u202c.exe"
    record = json.loads((reviewed_run / "run.json").read_text(encoding="utf-8"))
    page = render(sites, record, ["label"])
    assert "\u202e" not in page and "\u202c" not in page
    assert "<bdi>[U+202E]evil[U+202C].exe</bdi>" in page
