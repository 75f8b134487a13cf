"""Generate a small folder catalog and batch configuration over the conftest scene.

Scenes (dates in the file names):
- ``S2_2017-03-02.tif``: the before date, clear, no mask;
- ``S2_2017-06-20.tif``: the same ground with an SCL band: cloud (class 9) over the compound, clear elsewhere;
  its day of the year is nearer the after date's, so sites clear in it take it;
- ``S2_2018-10-11.tif``: the after date (EPSG:4326, nodata strip in the west);
- ``S2_2019-07-01.tif``: outside both date windows.
Sites: the conftest sites (one far outside every scene) and a grid of extra points.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import rasterio
from conftest import COMPOUND, lonlat, make_scene, site_collection

CONFIG = """
[sites]
paths = ["sites.geojson"]
[imagery]
catalog = "scenes/"
[dates]
before = ["2017-01-01", "2017-06-30"]
after = ["2018-07-01", "2018-12-31"]
[run]
buffer_m = {buffer_m}
method = "{method}"
[output]
dir = "results/"
"""


def make_catalog(folder: Path, *, grid: int = 0, method: str = "classical", buffer_m: float = 250) -> Path:
    """Write scenes/, sites.geojson and batch.toml into ``folder``; return the configuration's path."""
    scene = make_scene(folder / "source")
    scenes = folder / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    shutil.copy(scene.before, scenes / "S2_2017-03-02.tif")
    shutil.copy(scene.after, scenes / "S2_2018-10-11.tif")
    shutil.copy(scene.after, scenes / "S2_2019-07-01.tif")
    write_cloudy(scene.before, scenes / "S2_2017-06-20.tif")
    sites = site_collection()
    for i in range(grid * grid):  # extra points on a grid inside the scene, away from the nodata strip
        row, col = 45 + 150 * (i // grid) / max(grid - 1, 1), 60 + 150 * (i % grid) / max(grid - 1, 1)
        point = {"type": "Point", "coordinates": list(lonlat(row, col))}
        sites["features"].append({"type": "Feature", "geometry": point,
                                  "properties": {"name": f"grid {i}", "note": "", "tier": 9}})
    (folder / "sites.geojson").write_text(json.dumps(sites), encoding="utf-8")
    config = folder / "batch.toml"
    config.write_text(CONFIG.replace("{method}", method).replace("{buffer_m}", str(buffer_m)), encoding="utf-8")
    return config


def write_cloudy(source: Path, target: Path) -> None:
    """The before image plus an SCL band: vegetation (4) everywhere, cloud (9) and bright pixels over the compound."""
    with rasterio.open(source) as src:
        data, profile, names = src.read(), src.profile, src.descriptions
    r0, r1, c0, c1 = COMPOUND
    scl = np.full(data.shape[1:], 4, dtype=data.dtype)
    scl[r0 - 10:r1 + 10, c0 - 10:c1 + 10] = 9
    data[:, r0 - 10:r1 + 10, c0 - 10:c1 + 10] = 9000
    profile.update(count=data.shape[0] + 1)
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(np.concatenate([data, scl[None]]))
        for i, name in enumerate((*names, "SCL"), start=1):
            dst.set_band_description(i, name)
