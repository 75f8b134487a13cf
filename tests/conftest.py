"""Fixtures that generate tiny real GeoTIFF pairs and site files with a planted change.

The before date is a 4-band uint16 GeoTIFF in UTM zone 45N on a 10 m grid.
The after date is the same ground, with a new compound of bright roofs, a field
that turned green and a shift of 1.5 pixels, written in EPSG:4326 on a
different grid, with a nodata strip.  Sites: the compound, the green field,
unchanged ground, and a point outside the imagery.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import Resampling, calculate_default_transform, reproject
from rasterio.warp import transform as warp_points
from scipy import ndimage

UTM = CRS.from_epsg(32645)
ORIGIN = (500000.0, 4800000.0)  # x, y of the top-left corner, UTM 45N
SIZE = 240
PIXEL = 10.0
BANDS = ("blue", "green", "red", "nir")
COMPOUND = (60, 100, 60, 110)  # rows r0:r1, cols c0:c1 of the before grid
FIELD = (150, 200, 150, 200)
QUIET = (40, 200)  # row, col of unchanged ground
SHIFT_PX = 1.5


@dataclass(frozen=True)
class Scene:
    before: Path
    after: Path
    sites: Path
    folder: Path


def ground(rng: np.random.Generator) -> np.ndarray:
    """Textured bare ground with field boundaries, shape (4, SIZE, SIZE) float."""
    base = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 3) * 400 + 2000
    fields = (np.add.outer(np.arange(SIZE) // 40, np.arange(SIZE) // 30) % 3) * 60.0
    levels = np.array([0.8, 0.9, 1.0, 1.3])[:, None, None]
    return levels * (base + fields)[None] + rng.normal(scale=25, size=(4, SIZE, SIZE))


def compound(image: np.ndarray, r0: int, r1: int, c0: int, c1: int) -> None:
    """Paint a walled compound of bright roofs into rows r0:r1, columns c0:c1 of a 4-band image, in place."""
    image[:, r0:r1, c0:c1] = np.array([2600, 2700, 2800, 3000])[:, None, None]
    for r in range(r0 + 4, r1 - 4, 10):
        for c in range(c0 + 4, c1 - 8, 14):
            image[:, r:r + 5, c:c + 10] = np.array([5200, 5300, 5400, 5600])[:, None, None]
    image[:, [r0, r1 - 1], c0:c1] = 1200
    image[:, r0:r1, [c0, c1 - 1]] = 1200


def plant(scene: np.ndarray) -> np.ndarray:
    """Add a walled compound of bright roofs and a field that turns green."""
    out = scene.copy()
    compound(out, *COMPOUND)
    f0, f1, g0, g1 = FIELD
    out[2, f0:f1, g0:g1] *= 0.55
    out[3, f0:f1, g0:g1] *= 2.0
    return out


def write(path: Path, data: np.ndarray, crs: CRS, transform, nodata: float | None) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype="uint16", crs=crs, transform=transform, nodata=nodata, tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate") as dst:
        dst.write(np.where(data == 0, 0, np.clip(data, 1, 65000)).astype("uint16"))
        for i, name in enumerate(BANDS, start=1):
            dst.set_band_description(i, name)


def make_scene(folder: Path) -> Scene:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    before = ground(rng)
    after = ndimage.shift(plant(before), (0, SHIFT_PX, SHIFT_PX), order=1, mode="nearest")
    after = after + rng.normal(scale=25, size=after.shape) + 150  # other sensor, other season
    utm = from_origin(*ORIGIN, PIXEL, PIXEL)
    write(folder / "before_2017-03-02.tif", before, UTM, utm, None)
    dst_transform, width, height = calculate_default_transform(
        UTM, "EPSG:4326", SIZE, SIZE, *rasterio.transform.array_bounds(SIZE, SIZE, utm), resolution=(9e-5, 9e-5))
    warped = np.zeros((4, height, width), dtype=np.float32)
    reproject(after.astype(np.float32), warped, src_transform=utm, src_crs=UTM, dst_transform=dst_transform,
              dst_crs="EPSG:4326", resampling=Resampling.bilinear, src_nodata=None, dst_nodata=0)
    warped[:, :, : width // 12] = 0  # a nodata strip on the west edge
    write(folder / "after_2018-10-11.tif", warped, CRS.from_epsg(4326), dst_transform, 0)
    sites = folder / "sites.geojson"
    sites.write_text(json.dumps(site_collection()), encoding="utf-8")
    return Scene(folder / "before_2017-03-02.tif", folder / "after_2018-10-11.tif", sites, folder)


def lonlat(row: float, col: float) -> tuple[float, float]:
    x, y = ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL
    lon, lat = warp_points(UTM, "EPSG:4326", [x], [y])
    return round(lon[0], 7), round(lat[0], 7)


def site_collection() -> dict:
    r0, r1, c0, c1 = COMPOUND
    f0, f1, g0, g1 = FIELD
    points = {
        "compound": lonlat((r0 + r1) / 2, (c0 + c1) / 2),
        "green field": lonlat((f0 + f1) / 2, (g0 + g1) / 2),
        "quiet": lonlat(*QUIET),
        "far away": (10.0, 10.0),
    }
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": list(xy)},
         "properties": {"name": name, "note": f"planted {name}", "tier": i}}
        for i, (name, xy) in enumerate(points.items())]}


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    return make_scene(tmp_path_factory.mktemp("scene"))


SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
SAMPLE = Path(__file__).resolve().parents[1] / "detector" / "sample"
