"""``detector fetch`` against a static STAC catalog of generated COGs served by a loopback HTTP server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
from catalog_data import make_catalog
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds
from shapely.geometry import box, mapping

from detector.cli import main


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, Path]]:
    """The loopback server in its own process; yields its address, its folder and its log of ranges sent."""
    root, log = tmp_path / "www", tmp_path / "sent.log"
    root.mkdir()
    script = Path(__file__).with_name("range_server.py")
    process = subprocess.Popen([sys.executable, str(script), str(root), str(log)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}", root, log
    finally:
        process.kill()
        process.wait()


def sent(log: Path) -> int:
    return sum(int(n) for n in log.read_text().split()) if log.exists() else 0


def publish(scenes: Path, root: Path, url: str) -> int:
    """Per-band COGs of the catalog's scenes (SCL at 20 m) and a static STAC catalog over them; total COG bytes."""
    import pystac

    catalog = pystac.Catalog("scenes", "generated scenes")
    total = 0
    for path in sorted(scenes.glob("*.tif")):
        item_id = path.stem
        (root / "cogs" / item_id).mkdir(parents=True)
        with rasterio.open(path) as src:
            bounds = transform_bounds(src.crs, 4326, *src.bounds)
            date = dt.datetime.fromisoformat(item_id.split("_")[1]).replace(tzinfo=dt.UTC)
            item = pystac.Item(item_id, mapping(box(*bounds)), list(bounds), date, {"eo:cloud_cover": 10.0})
            for index, name in enumerate(src.descriptions, start=1):
                key = "scl" if name == "SCL" else name
                scale = 2 if key == "scl" else 1
                profile = {**src.profile, "count": 1, "driver": "COG", "width": src.width // scale,
                           "height": src.height // scale, "transform": src.transform * src.transform.scale(scale)}
                for option in ("tiled", "blockxsize", "blockysize", "interleave"):
                    profile.pop(option, None)
                target = root / "cogs" / item_id / f"{key}.tif"
                data = src.read(index, out_shape=(profile["height"], profile["width"]), resampling=Resampling.nearest)
                with rasterio.open(target, "w", **profile, blocksize=64) as dst:
                    dst.write(data, 1)
                total += target.stat().st_size
                item.add_asset(key, pystac.Asset(f"{url}/cogs/{item_id}/{key}.tif", media_type=pystac.MediaType.COG,
                                                 roles=["data"]))
        catalog.add_item(item)
    catalog.normalize_and_save(str(root / "stac"), pystac.CatalogType.SELF_CONTAINED)
    return total


def test_fetch_downloads_only_windows_then_batch_scores_them(tmp_path: Path, server: tuple[str, Path, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    url, root, log = server
    config = make_catalog(tmp_path / "batch")
    total = publish(config.parent / "scenes", root, url)
    fetched = tmp_path / "batch" / "fetched"
    config.write_text(config.read_text().replace('catalog = "scenes/"', 'catalog = "fetched/"'))
    assert main(["fetch", str(config), "--stac", f"{url}/stac/catalog.json"]) == 0
    out = capsys.readouterr().out
    # 3 items in the windows (2019-07-01 is outside), 3 of the 4 sites inside their footprints
    assert "3 items over the sites; 9 windows: 9 written, 0 already there" in out
    assert 0 < sent(log) < total  # windows, not whole files (these scenes are small: see the next test)
    files = sorted(fetched.glob("*.tif"))
    with rasterio.open(next(f for f in files if "2017-06-20" in f.name)) as src:
        assert src.descriptions == ("blue", "green", "red", "nir", "scl")
        assert src.tags()["TIFFTAG_DATETIME"].startswith("2017:06:20")
        assert src.tags()["STAC_ASSETS"].startswith(f"{url}/cogs/")
        assert src.res == (10.0, 10.0)  # the 20 m SCL band resampled onto the finest band's grid
    assert main(["fetch", str(config), "--stac", f"{url}/stac/catalog.json"]) == 0
    assert "9 windows: 0 written, 9 already there" in capsys.readouterr().out
    assert main(["-q", "batch", str(config)]) == 1
    sites = gpd.read_file(tmp_path / "batch" / "results" / "sites.geojson").set_index("site_id")
    assert sites.loc["compound", "flagged"] and not sites.loc["quiet", "flagged"]
    assert sites.loc["compound", "before_scene"].startswith("2017-03-02")  # the SCL says 06-20 is cloudy there
    assert sites.loc["quiet", "before_scene"].startswith("2017-06-20")


def test_fetch_reads_a_local_item_collection_as_it_walks_a_catalog(tmp_path: Path, server: tuple[str, Path, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """Search results saved as an ItemCollection file (what a STAC browser exports), assets over http."""
    import pystac

    url, root, _ = server
    config = make_catalog(tmp_path / "batch")
    publish(config.parent / "scenes", root, url)
    items = list(pystac.Catalog.from_file(str(root / "stac" / "catalog.json")).get_items(recursive=True))
    saved = tmp_path / "search.json"
    pystac.ItemCollection(items).save_object(dest_href=str(saved))
    config.write_text(config.read_text().replace('catalog = "scenes/"', 'catalog = "fetched/"'))
    assert main(["fetch", str(config), "--stac", str(saved)]) == 0
    assert "3 items over the sites; 9 windows: 9 written, 0 already there" in capsys.readouterr().out


def test_fetch_that_finds_nothing_is_one_line_and_makes_no_folder(tmp_path: Path, server: tuple[str, Path, Path],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    url, root, _ = server
    config = make_catalog(tmp_path / "batch")
    publish(config.parent / "scenes", root, url)
    config.write_text(config.read_text().replace('catalog = "scenes/"', 'catalog = "fetched/"')
                      .replace('"2017-01-01", "2017-06-30"', '"2010-01-01", "2010-06-30"')
                      .replace('"2018-07-01", "2018-12-31"', '"2011-07-01", "2011-12-31"'))
    assert main(["fetch", str(config), "--stac", f"{url}/stac/catalog.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no item of" in err and not (tmp_path / "batch" / "fetched").exists()


def test_fetch_from_an_unreachable_catalog_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_catalog(tmp_path / "batch")
    assert main(["fetch", str(config), "--stac", "http://127.0.0.1:9/catalog.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not open the STAC catalog http://127.0.0.1:9" in err
    assert "cannot be reached from here" in err and "HTTPConnection(host=" not in err


@pytest.mark.parametrize(("args", "message"), [
    (["--margin-m", "nan"], "--margin-m is nan: give a distance in metres"),
    (["--margin-m", "-5"], "--margin-m is -5.0"),
    (["--bands", "blue", "foo"], "--bands foo: not a band name"),
])
def test_fetch_options_are_checked_before_anything_is_fetched(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             args: list[str], message: str) -> None:
    config = make_catalog(tmp_path / "batch")
    listing = sorted(p.name for p in config.parent.iterdir())
    assert main(["fetch", str(config), "--stac", "http://127.0.0.1:9/catalog.json", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert sorted(p.name for p in config.parent.iterdir()) == listing
