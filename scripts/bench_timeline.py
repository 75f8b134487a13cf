"""Speed and memory of ``detector timeline`` on the 380 ASPI sites over generated dated scenes.

Generates (once, cached in ``--data``) for every ASPI site of
``../shared/data/xinjiang-aspi-facilities`` a small scene per date (``--px``
square at 10 m in the site's UTM zone, 4 named bands, uint16, DEFLATE):
textured ground, and at a third of the sites a compound that appears at a
date of its own.  Then runs ``detector timeline`` in a fresh process for each
case and prints sites per second and the peak resident memory of the whole
process tree: all sites over ``--dates`` dates with 1 and 2 worker
processes, and, to show that memory stays flat, a quarter of the sites and
twice the dates.

    python scripts/bench_timeline.py [--dates 12] [--px 128] [--data /tmp/detector-bench-timeline]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.transform import from_origin

ROOT = Path(__file__).resolve().parents[1]
ASPI = ROOT.parent / "shared" / "data" / "xinjiang-aspi-facilities" / "facilities_v1.geojson"
BANDS = ("blue", "green", "red", "nir")


def dates(count: int) -> list[str]:
    start = dt.date(2017, 3, 1)
    return [(start + dt.timedelta(days=round(i * 1095 / max(count - 1, 1)))).isoformat() for i in range(count)]


def scene(rng: np.random.Generator, px: int, built: bool) -> np.ndarray:
    y, x = np.mgrid[:px, :px].astype(np.float32)
    data = np.array([900, 1100, 1300, 2600], np.float32)[:, None, None] + 60 * np.sin(x / 9 + y / 13)
    data = data + rng.normal(scale=30, size=(4, px, px))
    if built:
        c0, c1 = px // 3, 2 * px // 3
        data[:, c0:c1, c0:c1] = 2800
        data[:, c0 + 2:c1 - 2:6, c0 + 2:c1 - 2] = 5400
    return np.clip(data, 1, 65000).astype(np.uint16)


def make_catalog(folder: Path, count: int, px: int) -> tuple[Path, Path]:
    """Scenes for every ASPI site at ``count`` dates, and the site file (points)."""
    catalog = folder / f"scenes-{count}-{px}"
    sites = folder / "aspi.geojson"
    done = catalog / ".ready"
    aspi = gpd.read_file(ASPI)
    folder.mkdir(parents=True, exist_ok=True)
    aspi[["Name_Code", "geometry"]].to_file(sites)
    if done.is_file():
        return catalog, sites
    catalog.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, point in enumerate(aspi.geometry):
        utm = gpd.GeoSeries([point], crs=4326).estimate_utm_crs()
        x, y = gpd.GeoSeries([point], crs=4326).to_crs(utm).iloc[0].coords[0]
        onset = int(rng.integers(1, count)) if i % 3 == 0 else count
        for j, date in enumerate(dates(count)):
            with rasterio.open(catalog / f"site{i:03d}_{date}.tif", "w", driver="GTiff", width=px, height=px, count=4,
                               dtype="uint16", crs=utm, transform=from_origin(x - px * 5, y + px * 5, 10, 10),
                               compress="deflate", tiled=True, blockxsize=128, blockysize=128) as dst:
                dst.write(scene(rng, px, j >= onset))
                for band, name in enumerate(BANDS, start=1):
                    dst.set_band_description(band, name)
    done.write_text("ok")
    return catalog, sites


MEASURE = """
import resource, subprocess, sys, time
tic = time.perf_counter()
subprocess.run(sys.argv[1:], check=True)
print(time.perf_counter() - tic, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def timed(catalog: Path, sites: Path, out: Path, *, workers: int, buffer_m: float) -> tuple[float, float, int]:
    command = [sys.executable, "-m", "detector", "-q", "timeline", "--sites", str(sites), "--catalog",
               str(catalog), "--out", str(out), "--overwrite", "--buffer-m", str(buffer_m), "--workers", str(workers)]
    state = out.parent / f".{out.name}.state"
    subprocess.run(["rm", "-rf", str(state), str(out)], check=True)
    result = subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True)
    seconds, peak = (float(v) for v in result.stdout.split()[-2:])
    counted = json.loads((out / "timeline.json").read_text())["counts"]["sites"]
    return seconds, peak, counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dates", type=int, default=12)
    parser.add_argument("--px", type=int, default=128)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "detector-bench-timeline")
    args = parser.parse_args()
    buffer_m = args.px * 10 / 2 - 150  # the site's disc inside its scene with a margin
    catalog, sites = make_catalog(args.data, args.dates, args.px)
    longer, _ = make_catalog(args.data, 2 * args.dates, args.px)
    quarter = args.data / "aspi-quarter.geojson"
    gpd.read_file(sites).iloc[::4].to_file(quarter)
    print(f"{'case':<32} {'sites':>6} {'dates':>6} {'seconds':>8} {'sites/s':>8} {'peak MB':>8}")
    for name, cat, where, workers, count in (("all sites, 1 process", catalog, sites, 1, args.dates),
                                             ("all sites, 2 worker processes", catalog, sites, 2, args.dates),
                                             ("a quarter of the sites, 1", catalog, quarter, 1, args.dates),
                                             ("all sites, twice the dates, 1", longer, sites, 1, 2 * args.dates)):
        seconds, peak, counted = timed(cat, where, args.data / "out", workers=workers, buffer_m=buffer_m)
        print(f"{name:<32} {counted:6d} {count:6d} {seconds:8.1f} {counted / seconds:8.2f} {peak:8.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
