"""Cut the bundled sample from the real Dabancheng pair in ../shared/data.

Writes ``detector/sample/``: a crop of ``registered/2017-03-02.tif`` (before)
and ``registered/2018-10-11.tif`` (after), each on its own original grid, and
ASPI's two Dabancheng points as ``sites.geojson`` (name, number, tier only).

    python scripts/make_sample.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

BOUNDS = (88.2560, 43.3725, 88.3110, 43.3930)  # lon/lat: both facilities and the new compound
KEEP = ("Number", "Name_Code", "Tier", "Prefecture", "County")


def crop(src_path: Path, dst_path: Path) -> None:
    with rasterio.open(src_path) as src:
        xs = np.array([BOUNDS[0], BOUNDS[2], BOUNDS[2], BOUNDS[0]])
        ys = np.array([BOUNDS[1], BOUNDS[1], BOUNDS[3], BOUNDS[3]])
        cols, rows = ~src.transform @ (xs, ys)
        r0, c0 = int(np.floor(rows.min())), int(np.floor(cols.min()))
        window = Window(c0, r0, int(np.ceil(cols.max())) - c0, int(np.ceil(rows.max())) - r0)
        profile = src.profile | {"width": window.width, "height": window.height,
                                 "transform": window_transform(window, src.transform),
                                 "compress": "deflate", "predictor": 2, "tiled": True,
                                 "blockxsize": 256, "blockysize": 256}
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=window))
            dst.update_tags(SOURCE=f"crop of {src_path.name}: Contains modified Copernicus Sentinel data "
                                   "(processed by Sentinel Hub)")


def sites(src_path: Path, dst_path: Path) -> None:
    data = json.loads(src_path.read_text(encoding="utf-8"))
    features = [
        {"type": "Feature", "geometry": f["geometry"],
         "properties": {k: f["properties"].get(k) for k in KEEP}}
        for f in data["features"] if str(f["properties"].get("Name_Code", "")).startswith("Dabancheng")
    ]
    dst_path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1,
                                   ensure_ascii=False) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared")
    args = parser.parse_args()
    data = args.shared / "data"
    out = Path(__file__).resolve().parents[1] / "detector" / "sample"
    out.mkdir(parents=True, exist_ok=True)
    for date in ("2017-03-02", "2018-10-11"):
        crop(data / "dabancheng-sentinel2" / "registered" / f"{date}.tif", out / f"{date}.tif")
    sites(data / "xinjiang-aspi-facilities" / "facilities_v1.geojson", out / "sites.geojson")


if __name__ == "__main__":
    main()
