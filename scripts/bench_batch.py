"""Batch scale: sites per second and peak memory for the 380 ASPI sites over generated imagery windows.

For every ASPI site a before (2017-05-xx) and an after (2018-06-xx) GeoTIFF
window of 1.6 km (160 px at 10 m, 4 bands, DEFLATE) is generated in the site's
UTM zone; sites whose ASPI building count grew from 2017 to 2020 get a planted
compound.  Then ``detector batch`` runs (as a user runs it, in a subprocess,
sampled every 50 ms for the memory of its whole process tree) on the first
95, 190 and 380 sites with local worker processes, and on all 380 with a
two-worker Dask LocalCluster.  The wall time includes the end of the batch
(ranks, verdicts, chips of the flagged and top 20 sites, report), which is
also shown alone.

    python scripts/bench_batch.py [--data DIR] [--method fused] [--workers 2]
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
import psutil
import rasterio
import rasterio.warp
from rasterio.transform import from_origin
from scipy import ndimage

from detector.methods import DEFAULT, NAMES

ROOT = Path(__file__).resolve().parents[1]
ASPI = ROOT / ".." / "shared" / "data" / "xinjiang-aspi-facilities" / "facilities_v1.geojson"
SIZE, PIXEL = 160, 10.0


def grew(frame: pd.DataFrame) -> np.ndarray:
    """ASPI sites with more buildings in 2020 than in 2017 (counts are text with N/A, ?...)."""
    first = pd.to_numeric(frame["Number of Buildings in 2017"], errors="coerce")
    last = pd.to_numeric(frame["Number of Buildings in 2020"], errors="coerce")
    return (last > first).to_numpy()


def make_data(folder: Path) -> None:
    sites = gpd.read_file(ASPI)
    scenes = folder / "scenes"
    scenes.mkdir(parents=True, exist_ok=True)
    planted = grew(sites)
    for i, (site, plant) in enumerate(zip(sites.itertuples(), planted, strict=True)):
        rng = np.random.default_rng(i)
        zone = 32600 + int((site.geometry.x + 180) // 6) + 1
        x, y = rasterio.warp.transform("EPSG:4326", f"EPSG:{zone}", [site.geometry.x], [site.geometry.y])
        transform = from_origin(x[0] - SIZE * PIXEL / 2, y[0] + SIZE * PIXEL / 2, PIXEL, PIXEL)
        base = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE)), 3) * 400 + 2000
        before = np.array([0.8, 0.9, 1.0, 1.3])[:, None, None] * base + rng.normal(scale=25, size=(4, SIZE, SIZE))
        after = before + rng.normal(scale=25, size=before.shape) + 100
        if plant:
            r, c = rng.integers(55, 85, size=2)
            after[:, r:r + 25, c:c + 30] = np.array([5200, 5300, 5400, 5600])[:, None, None]
        for name, data, day in (("before", before, 5 + i % 20), ("after", after, 3 + i % 25)):
            date = f"2017-05-{day:02d}" if name == "before" else f"2018-06-{day:02d}"
            write(scenes / f"{date}_site{i:03d}.tif", data, zone, transform)
    sites.to_file(folder / "sites.geojson", driver="GeoJSON")


def write(path: Path, data: np.ndarray, epsg: int, transform: object) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=SIZE, height=SIZE, count=4, dtype="uint16",
                       crs=f"EPSG:{epsg}", transform=transform, tiled=True, blockxsize=256, blockysize=256,
                       compress="deflate") as dst:
        dst.write(np.clip(data, 1, 65000).astype("uint16"))
        for k, band in enumerate(("blue", "green", "red", "nir"), start=1):
            dst.set_band_description(k, band)


def config(folder: Path, count: int, method: str, name: str) -> Path:
    sites = gpd.read_file(folder / "sites.geojson").iloc[:count]
    sites.to_file(folder / f"sites_{count}.geojson", driver="GeoJSON")
    path = folder / f"{name}.toml"
    shutil.rmtree(folder / name, ignore_errors=True)
    path.write_text(f"""[sites]
paths = ["sites_{count}.geojson"]
[imagery]
catalog = "scenes/"
[dates]
before = ["2017-05-01", "2017-05-31"]
after = ["2018-06-01", "2018-06-30"]
[run]
method = "{method}"
id_col = "Name_Code"
[output]
dir = "{name}"
""")
    return path


def measure(command: list[str]) -> dict[str, float]:
    """Run a command; wall seconds, peak RSS of the main process and of its whole tree (MB)."""
    tic = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    main_peak = tree_peak = 0
    while process.poll() is None:
        try:
            procs = [process, *process.children(recursive=True)]
            rss = [p.memory_info().rss for p in procs]
        except psutil.Error:
            continue
        main_peak, tree_peak = max(main_peak, rss[0]), max(tree_peak, sum(rss))
        time.sleep(0.05)
    out = process.stdout.read() if process.stdout else ""
    return {"seconds": time.perf_counter() - tic, "main_mb": main_peak / 2**20, "tree_mb": tree_peak / 2**20,
            "summary": out.strip().splitlines()[0] if out.strip() else f"exit {process.returncode}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/detector-bench-batch"))
    parser.add_argument("--method", default=DEFAULT, choices=NAMES)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if not (args.data / "sites.geojson").exists():
        tic = time.perf_counter()
        make_data(args.data)
        print(f"generated 760 windows in {time.perf_counter() - tic:.1f} s under {args.data}")
    detector = [sys.executable, "-m", "detector", "-q", "batch"]
    rows = []
    for executor, count, option in (("local", 95, "--workers"), ("local", 190, "--workers"),
                                    ("local", 380, "--workers"), ("dask", 380, "--dask")):
        name = f"{executor}_{count}"
        path = config(args.data, count, args.method, name)
        value = str(args.workers) if executor == "local" else f"local:{args.workers}"
        m = measure([*detector, str(path), option, value])
        m["finish_s"] = json.loads((args.data / name / "batch.json").read_text())["finish_seconds"]
        rows.append((executor, count, m))
    print(f"{'executor':<28} {'sites':>5} {'seconds':>8} {'sites/s':>8} {'finish s':>8} {'main MB':>8} "
          f"{'tree MB':>8}")
    for executor, count, m in rows:
        label = f"{executor} ({args.workers} workers)"
        print(f"{label:<28} {count:>5} {m['seconds']:8.1f} {count / m['seconds']:8.2f} {m['finish_s']:8.1f} "
              f"{m['main_mb']:8.0f} {m['tree_mb']:8.0f}   {m['summary']}")
    local = gpd.read_file(args.data / "local_380" / "sites.gpkg", layer="sites").sort_values("site_id")
    dask = gpd.read_file(args.data / "dask_380" / "sites.gpkg", layer="sites").sort_values("site_id")
    same = np.array_equal(local["score"].to_numpy(), dask["score"].to_numpy(), equal_nan=True)
    sites = gpd.read_file(args.data / "sites.geojson")
    planted = dict(zip(sites["Name_Code"], grew(sites), strict=True))
    truth = local["site_id"].map(planted).to_numpy(bool)
    flagged = local["flagged"].to_numpy(bool)
    print(f"dask and local scores identical: {same}; planted {truth.sum()} sites, flagged {flagged.sum()}, "
          f"of them planted {(flagged & truth).sum()}")
    print(json.dumps({f"{e}_{c}": {k: round(v, 2) if isinstance(v, float) else v for k, v in m.items()}
                      for e, c, m in rows}))


if __name__ == "__main__":
    main()
