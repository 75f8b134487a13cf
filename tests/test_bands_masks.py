"""Imagery as users have it: unnamed stacks named with ``--bands``, and clouds masked in every run."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import COMPOUND, ORIGIN, PIXEL, QUIET, SIZE, UTM, ground, plant
from rasterio.transform import from_origin
from scipy import ndimage

from detector.bands import PRESETS, band_names
from detector.cli import main
from detector.errors import InputError

CLOUD = (QUIET[0], QUIET[1], 24)  # row, col and radius (px) of a cloud over the quiet site


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def test_presets_and_names_in_file_order() -> None:
    assert band_names("landsat-tm", 6, file="x") == ("blue", "green", "red", "nir", "swir16", "swir22")
    assert band_names("landsat-tm", 7, file="x")[5] == "lwir"
    assert band_names("Sentinel2", 13, file="x")[8] == "nir08"
    assert band_names("sentinel2", 12, file="x")[-2:] == ("swir16", "swir22")
    assert band_names("planet-4", 4, file="x") == ("blue", "green", "red", "nir")
    assert band_names("B, G, R, NIR", 4, file="x") == ("blue", "green", "red", "nir")
    assert band_names("red,green,blue,-", 4, file="x") == ("red", "green", "blue", "band4")
    assert all(len(set(v)) == len(v) for layouts in PRESETS.values() for v in layouts.values())


@pytest.mark.parametrize("spec,count,says", [
    ("landsat-tm", 4, "describes 6 or 7 bands; f.tif has 4"),
    ("blue,green,red", 4, "names 3 bands; f.tif has 4"),
    ("blue,green,red,infrared", 4, "infrared is not a band name"),
    ("blue,blue,red,nir", 4, "names a band twice"),
])
def test_a_band_list_that_does_not_fit_is_refused(spec: str, count: int, says: str) -> None:
    with pytest.raises(InputError, match=says):
        band_names(spec, count, file="f.tif")


def write_stack(path: Path, data: np.ndarray, *, driver: str = "GTiff", crs=UTM, transform=None,
                dtype: str = "uint16", nodata: float | None = None) -> Path:
    """A stack without band descriptions, as gdal_merge or an ENVI export writes it."""
    transform = transform or from_origin(*ORIGIN, PIXEL, PIXEL)
    with rasterio.open(path, "w", driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(np.clip(data, 0, np.iinfo(dtype).max if dtype != "float32" else None).astype(dtype))
    return path


def six_bands(four: np.ndarray) -> np.ndarray:
    """TM bands 1-5 and 7 from the generated blue, green, red, NIR: SWIR follows red (bare ground and roofs)."""
    return np.concatenate([four, four[2:3] * 1.1, four[2:3] * 0.9])


@pytest.fixture(scope="module")
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    before = ground(rng)
    after = plant(before) + rng.normal(scale=25, size=before.shape) + 150
    return before, after


def sites_file(folder: Path) -> Path:
    from conftest import site_collection

    path = folder / "sites.geojson"
    path.write_text(json.dumps(site_collection()), encoding="utf-8")
    return path


def test_an_envi_landsat_stack_is_refused_without_bands_and_scored_with_the_preset(
        pair: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys) -> None:
    before = write_stack(tmp_path / "LT05_2009-07-01.img", six_bands(pair[0]), driver="ENVI")
    after = write_stack(tmp_path / "LT05_2011-07-04.img", six_bands(pair[1]), driver="ENVI")
    sites = sites_file(tmp_path)
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--sites", sites, "--before", before, "--after", after, "--out", out,
                   "--buffer-m", "250") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "6 bands without names" in err and "--bands" in err
    assert "landsat-tm" in err and not out.exists()
    assert run_cli("-q", "run", "--sites", sites, "--before", before, "--after", after, "--out", out,
                   "--buffer-m", "250", "--bands", "landsat-tm") == 0
    found = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert bool(found.loc["compound", "flagged"]) and not found.loc["quiet", "flagged"]
    record = json.loads((out / "run.json").read_text())
    mapping = record["inputs"]["before"]["bands"]
    assert [(b["index"], b["name"]) for b in mapping] == list(enumerate(PRESETS["landsat-tm"][6], start=1))
    assert record["inputs"]["after"]["bands_option"] == "landsat-tm"
    assert "swir16" in record["bands"]


def test_an_unnamed_four_band_stack_needs_bands_and_each_date_can_have_its_own(
        pair: tuple[np.ndarray, np.ndarray], tmp_path: Path, capsys) -> None:
    before = write_stack(tmp_path / "before_2017-03-02.tif", pair[0])
    after = write_stack(tmp_path / "after_2018-10-11.tif", pair[1][[2, 1, 0, 3]])  # exported red, green, blue, nir
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--before", before, "--after", after, "--out", out) == 2
    assert "--bands" in capsys.readouterr().err
    assert run_cli("-q", "run", "--before", before, "--after", after, "--out", out, "--bands",
                   "blue,green,red") == 2
    assert "--bands 'blue,green,red' names 3 bands" in capsys.readouterr().err
    assert run_cli("-q", "run", "--before", before, "--after", after, "--out", out,
                   "--before-bands", "planet-4", "--after-bands", "red,green,blue,nir") == 0
    cells = gpd.read_file(out / "sites.geojson")
    r0, r1, c0, c1 = COMPOUND
    top = cells.sort_values("rank").iloc[0].geometry.centroid
    x, y = rasterio.warp.transform("EPSG:4326", UTM, [top.x], [top.y])
    row, col = (ORIGIN[1] - y[0]) / PIXEL, (x[0] - ORIGIN[0]) / PIXEL
    assert r0 - 50 < row < r1 + 50 and c0 - 50 < col < c1 + 50


def cloudy(after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The after date with a bright cloud and its dark shadow beside it, and the mask of both (bool)."""
    rows, cols = np.mgrid[:SIZE, :SIZE]
    r, c, radius = CLOUD
    cloud = np.hypot(rows - r, cols - c) < radius
    shadow = np.hypot(rows - r - 10, cols - c + 25) < radius
    out = after.copy()
    soft = ndimage.gaussian_filter(cloud.astype(float), 3)
    out = out * (1 - soft) + 9000 * soft
    out[:, shadow & ~cloud] *= 0.35
    mask = ndimage.binary_dilation(cloud | shadow, iterations=3)
    return out, mask


def write_mask(path: Path, mask: np.ndarray, *, pixel: float = PIXEL, value: int = 1) -> Path:
    data = mask.astype("uint8") * value
    if pixel != PIXEL:
        f = int(pixel / PIXEL)
        data = data.reshape(SIZE // f, f, SIZE // f, f).max(axis=(1, 3))
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype="uint8", crs=UTM, transform=from_origin(*ORIGIN, pixel, pixel)) as dst:
        dst.write(data[None])
    return path


@pytest.fixture(scope="module")
def cloud_scene(pair: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cloud")
    after, mask = cloudy(pair[1])
    return {"before": write_stack(folder / "before_2017-03-02.tif", pair[0]),
            "after": write_stack(folder / "after_2018-10-11.tif", after),
            "mask": write_mask(folder / "after_cloud.tif", mask), "sites": sites_file(folder), "folder": folder}


def run_sites(scene: dict[str, Path], out: Path, *extra: str | Path,
              bands: str = "--bands") -> gpd.GeoDataFrame:
    assert run_cli("-q", "run", "--sites", scene["sites"], "--before", scene["before"], "--after", scene["after"],
                   "--out", out, "--buffer-m", "250", bands, "blue,green,red,nir", *extra) == 0
    return gpd.read_file(out / "sites.geojson").set_index("site_id")


def test_a_cloud_over_a_site_is_a_flag_without_its_mask_and_cloudy_with_it(cloud_scene: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    bare = run_sites(cloud_scene, tmp_path / "bare")
    assert bool(bare.loc["quiet", "flagged"])  # what the mask is for: the cloud reads as change
    masked = run_sites(cloud_scene, tmp_path / "masked", "--after-mask", cloud_scene["mask"])
    assert not masked.loc["quiet", "flagged"] and masked.loc["quiet", "status"] == "cloudy"
    assert masked.loc["quiet", "cloud_fraction"] > 0.5
    assert bool(masked.loc["compound", "flagged"]) and masked.loc["compound", "cloud_fraction"] == 0
    record = json.loads((tmp_path / "masked" / "run.json").read_text())
    assert record["inputs"]["after"]["mask"] == {"file": str(cloud_scene["mask"]), "kind": "cloud"}
    assert record["counts"]["cloudy"] == 1


def test_an_scl_band_in_a_band_folder_masks_cloud_and_shadow(pair: tuple[np.ndarray, np.ndarray],
                                                             cloud_scene: dict[str, Path], tmp_path: Path) -> None:
    after, mask = cloudy(pair[1])
    folder = tmp_path / "S2A_MSIL2A_20181011"
    folder.mkdir()
    for name, band in zip(("B02", "B03", "B04", "B08"), after, strict=True):
        write_stack(folder / f"T45TUJ_20181011T050701_{name}_10m.tif", band[None])
    scl = np.where(mask, 9, 4)
    scl[:, :3] = 0  # no data in a strip
    with rasterio.open(folder / "T45TUJ_20181011T050701_SCL_20m.tif", "w", driver="GTiff", width=SIZE // 2,
                       height=SIZE // 2, count=1, dtype="uint8", crs=UTM,
                       transform=from_origin(*ORIGIN, 2 * PIXEL, 2 * PIXEL)) as dst:
        dst.write(scl[::2, ::2].astype("uint8")[None])
    scene = {**cloud_scene, "after": folder}
    found = run_sites(scene, tmp_path / "out", bands="--before-bands")
    assert found.loc["quiet", "status"] == "cloudy" and not found.loc["quiet", "flagged"]
    assert bool(found.loc["compound", "flagged"])


def test_a_mask_option_that_names_no_file_is_one_line(cloud_scene: dict[str, Path], tmp_path: Path,
                                                      capsys) -> None:
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--before", cloud_scene["before"], "--after", cloud_scene["after"], "--out", out,
                   "--bands", "blue,green,red,nir", "--after-mask", tmp_path / "nope.tif") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--after-mask" in err and not out.exists()
