"""Region scale: km² per second of ``detector batch`` over a ``[region]``, and what all of Xinjiang would cost.

A mosaic of ``--tiles`` x ``--tiles`` generated Sentinel-2-like tiles (UTM 45N, 10 m, 4 named bands
uint16, DEFLATE-tiled, ``--tile-px`` pixels a side, neighbours overlapping by ``--overlap-px`` as
Sentinel-2's tiles overlap by 9.8 km) is written for two dates, with compounds planted in the after date;
the region is the mosaic less a 1 km rim.  Then ``detector batch`` runs over the region (as a user runs it,
in a subprocess: cells of ``--cell-m``, blocks of ``--block-cells``) with 1 and 2 local worker processes and
on a two-worker Dask LocalCluster, each into a fresh folder.  The rate is the region's area over the whole
wall time (start-up, pairing, scoring, storing, candidates); the extrapolation divides Xinjiang's
1.66 million km² by it, on this machine.  The per-block rate is the area over the seconds the blocks took
in their workers (``manifest.csv``): the steady rate of one worker, without the start-up and the end that
a region of Xinjiang's size makes negligible; the core-hours divide Xinjiang by it.

    python scripts/bench_region.py [--data DIR] [--tiles 3] [--tile-px 2400] [--method classical]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.transform import from_origin
from scipy import ndimage

from detector.methods import NAMES

XINJIANG_KM2 = 1.66e6
PIXEL = 10.0
ORIGIN = (400000.0, 4900000.0)  # UTM 45N, near Urumqi's latitude
BANDS = ("blue", "green", "red", "nir")
RIM_M = 1000.0


def make_data(folder: Path, *, tiles: int, tile_px: int, overlap_px: int) -> None:
    """Two dates of a mosaic of tiles, and the region; the tiles of one date share one ground."""
    scenes = folder / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    step = tile_px - overlap_px
    size = step * (tiles - 1) + tile_px
    rng = np.random.default_rng(3)
    base = ndimage.gaussian_filter(rng.normal(size=(size, size)).astype(np.float32), 3) * 400 + 2000
    levels = np.array([0.8, 0.9, 1.0, 1.3], np.float32)[:, None, None]
    for k, (r, c) in enumerate(rng.integers(100, size - 200, size=(max(4, size // 150), 2))):
        if k % 2:  # compounds of 250 x 300 m, half of them planted
            base[r:r + 25, c:c + 30] += 3000
    for i in range(tiles):
        for j in range(tiles):
            window = np.s_[i * step:i * step + tile_px, j * step:j * step + tile_px]
            transform = from_origin(ORIGIN[0] + j * step * PIXEL, ORIGIN[1] - i * step * PIXEL, PIXEL, PIXEL)
            before = levels * np.where(base[window] > 4000, base[window] - 3000, base[window])[None]
            after = levels * base[window][None] + 150
            for date, data in (("2017-05-10", before), ("2018-06-12", after)):
                noisy = data + rng.normal(scale=25, size=data.shape).astype(np.float32)
                write(scenes / f"T45{chr(65 + i)}{chr(65 + j)}_{date}.tif", noisy, transform)
    left, top = ORIGIN
    region = shapely.box(left + RIM_M, top - size * PIXEL + RIM_M, left + size * PIXEL - RIM_M, top - RIM_M)
    gpd.GeoDataFrame({"name": ["bench region"]}, geometry=[region], crs=32645).to_crs(4326).to_file(
        folder / "region.geojson", driver="GeoJSON")


def write(path: Path, data: np.ndarray, transform: object) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=4,
                       dtype="uint16", crs="EPSG:32645", transform=transform, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate") as dst:
        dst.write(np.clip(data, 1, 65000).astype("uint16"))
        for k, band in enumerate(BANDS, start=1):
            dst.set_band_description(k, band)


def config(folder: Path, name: str, *, cell_m: float, block_cells: int, method: str) -> Path:
    path = folder / f"{name}.toml"
    shutil.rmtree(folder / name, ignore_errors=True)
    path.write_text(f"""[region]
path = "region.geojson"
cell_m = {cell_m}
block_cells = {block_cells}
[imagery]
catalog = "scenes/"
[dates]
before = ["2017-05-01", "2017-05-31"]
after = ["2018-06-01", "2018-06-30"]
[run]
method = "{method}"
[output]
dir = "{name}"
""")
    return path


def timed(command: list[str]) -> tuple[float, str]:
    tic = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else f"exit {done.returncode}: {done.stderr}"
    return time.perf_counter() - tic, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/detector-bench-region"))
    parser.add_argument("--tiles", type=int, default=3, help="tiles per side of the mosaic (3)")
    parser.add_argument("--tile-px", type=int, default=2400, help="pixels per tile side at 10 m (2400)")
    parser.add_argument("--overlap-px", type=int, default=1000, help="overlap of neighbouring tiles (1000)")
    parser.add_argument("--cell-m", type=float, default=500.0)
    parser.add_argument("--block-cells", type=int, default=16)
    parser.add_argument("--method", default="classical", choices=NAMES)
    args = parser.parse_args()
    marker = args.data / f"made-{args.tiles}-{args.tile_px}-{args.overlap_px}"
    if not marker.exists():
        shutil.rmtree(args.data, ignore_errors=True)
        tic = time.perf_counter()
        make_data(args.data, tiles=args.tiles, tile_px=args.tile_px, overlap_px=args.overlap_px)
        marker.touch()
        print(f"generated {args.tiles}x{args.tiles} tiles of {args.tile_px} px, two dates, in "
              f"{time.perf_counter() - tic:.1f} s under {args.data}")
    detector = [sys.executable, "-m", "detector", "-q", "batch"]
    rows = []
    for label, option, value, workers in (("local, 1 worker", "--workers", "1", 1),
                                          ("local, 2 workers", "--workers", "2", 2),
                                          ("dask LocalCluster, 2 workers", "--dask", "local:2", 2)):
        name = label.split(",")[0].split()[0] + f"_{workers}"
        path = config(args.data, name, cell_m=args.cell_m, block_cells=args.block_cells, method=args.method)
        seconds, line = timed([*detector, str(path), option, value])
        record = json.loads((args.data / name / "batch.json").read_text())
        rows.append((label, workers, seconds, record, line, name))
    area = rows[0][3]["region"]["area_km2"]
    print(f"region {area:g} km2 at 10 m, cells of {args.cell_m:g} m, blocks of {args.block_cells}x{args.block_cells}"
          f" cells, method {args.method}, {rows[0][3]['counts']['blocks']} blocks")
    print(f"{'executor':<30} {'wall s':>7} {'km2/s':>7} {'Xinjiang h':>10} {'block km2/s':>11} {'core-h':>7}  "
          "summary")
    for label, _, seconds, _, line, name in rows:
        rate = area / seconds
        busy = pd.read_csv(args.data / name / "manifest.csv").query("status == 'done'")["seconds"].sum()
        print(f"{label:<30} {seconds:7.1f} {rate:7.1f} {XINJIANG_KM2 / rate / 3600:10.1f} {area / busy:11.1f} "
              f"{XINJIANG_KM2 / (area / busy) / 3600:7.1f}  {line}")
    candidates = [gpd.read_file(args.data / row[5] / "candidates.geojson") for row in rows]
    same = all(c.drop(columns="geometry").equals(candidates[0].drop(columns="geometry"))
               and c.geometry.equals(candidates[0].geometry) for c in candidates)
    pixels = XINJIANG_KM2 * 1e6 / PIXEL**2
    print(f"candidates identical across the three: {same} ({len(candidates[0])} found)")
    print(f"Xinjiang at 10 m: {pixels / 1e9:.1f} Gpx per date, {pixels * 4 * 2 / 1e9:.0f} GB per date of 4 uint16 "
          "bands before compression (the imagery is not counted above: it is read from local disk)")


if __name__ == "__main__":
    main()
