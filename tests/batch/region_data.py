"""Generate a small region batch: two dates of one UTM tile, a region polygon inside it, and its batch.toml.

Both dates are 4-band uint16 GeoTIFFs on the conftest grid (UTM 45N, 10 m, 240 x 240 pixels); the after date
has the ground's texture again, another sensor's offset and noise, and two compounds of bright roofs:
``ACROSS`` straddles the border of two blocks of the region's cells (``BORDER_COL``), ``INSIDE`` lies within
one block.  The region is the tile less a 200 m rim: 20 x 20 cells of 100 m, in blocks of 5 x 5 cells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from conftest import ORIGIN, PIXEL, UTM, compound, ground, write
from rasterio.transform import from_origin

CELL_M = 100
BLOCK_CELLS = 5
RIM_PX = 20  # the region starts 20 pixels (200 m) inside the tile: a whole number of cells
BORDER_COL = RIM_PX + BLOCK_CELLS * CELL_M // int(PIXEL) * 2  # pixel column of the border of block columns 1 and 2
ACROSS = (60, 100, BORDER_COL - 20, BORDER_COL + 25)  # rows r0:r1, cols c0:c1 of the tile
INSIDE = (175, 205, 28, 60)  # block column 0 (pixel columns 20:70)

CONFIG = """
[region]
path = "region.geojson"
cell_m = {cell_m}
block_cells = {block_cells}
[imagery]
catalog = "scenes/"
[dates]
before = ["2017-01-01", "2017-06-30"]
after = ["2018-07-01", "2018-12-31"]
[run]
method = "classical"
[output]
dir = "results/"
"""


def make_region(folder: Path, *, block_cells: int = BLOCK_CELLS) -> Path:
    """Write scenes/, region.geojson and batch.toml into ``folder``; return the configuration's path."""
    scenes = folder / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    before = ground(rng)
    after = before + rng.normal(scale=25, size=before.shape) + 150
    for box in (ACROSS, INSIDE):
        compound(after, *box)
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    write(scenes / "T45_2017-04-02.tif", before, UTM, transform, None)
    write(scenes / "T45_2018-09-20.tif", after, UTM, transform, None)
    (folder / "region.geojson").write_text(json.dumps(region_collection()), encoding="utf-8")
    config = folder / "batch.toml"
    config.write_text(CONFIG.replace("{cell_m}", str(CELL_M)).replace("{block_cells}", str(block_cells)),
                      encoding="utf-8")
    return config


def region_collection() -> dict:
    """The region: the tile less its rim, one polygon in EPSG:4326 (as a user's file holds it)."""
    from conftest import SIZE, lonlat

    ring = [lonlat(r, c) for r, c in ((RIM_PX, RIM_PX), (RIM_PX, SIZE - RIM_PX), (SIZE - RIM_PX, SIZE - RIM_PX),
                                      (SIZE - RIM_PX, RIM_PX), (RIM_PX, RIM_PX))]
    return {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
         "properties": {"name": "test region"}}]}


def copy_region(source: Path, target: Path) -> Path:
    """A fresh batch folder with the same scenes and region as ``source``'s (no results)."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source.parent / "scenes", target / "scenes")
    for name in ("region.geojson", "batch.toml"):
        shutil.copy(source.parent / name, target / name)
    return target / "batch.toml"
