"""What a run from Sentinel-2 products as downloaded costs: SAFE (JPEG 2000) against the same bands as DEFLATE
GeoTIFF.

Generates (once, cached in ``--data``) a pair of ``--size`` px L2A products of
the synthetic ground of ``scripts/bench.py`` (compounds planted in the after
date): ``*.SAFE`` folders with lossless JPEG 2000 bands (B02 B03 B04 B08 at
10 m, B11 B12 and SCL at 20 m, offset -1000 in ``MTD_MSIL2A.xml``), and the
same bands as tiled DEFLATE GeoTIFFs in band folders.  Then, each in a fresh
process: a threaded whole read of each layout's files, and ``detector run`` in
cell mode with every default on each.  Prints seconds, megapixels per second
(spatial pixels of both dates) and the run's speed as a share of the threaded
read of the same files.

    python scripts/bench_products.py [--size 4096] [--data /tmp/detector-bench-products]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import scene_rows  # the same synthetic ground as scripts/bench.py

DATES = {"before": ("S2A_MSIL2A_20170602T050701_N0205_R019_T45TUJ_20170602T051407", 0),
         "after": ("S2B_MSIL2A_20230607T050659_N0509_R019_T45TUJ_20230607T080000", -1000)}
TEN_M = ("B02", "B03", "B04", "B08")
XML = ('<?xml version="1.0" encoding="UTF-8"?><n1:Level-2A_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/'
       'PSD/User_Product_Level-2A.xsd"><n1:General_Info><Product_Image_Characteristics>'
       '<BOA_QUANTIFICATION_VALUE unit="none">10000</BOA_QUANTIFICATION_VALUE><BOA_ADD_OFFSET_VALUES_LIST>{offsets}'
       '</BOA_ADD_OFFSET_VALUES_LIST></Product_Image_Characteristics></n1:General_Info></n1:Level-2A_User_Product>')


def write_band(path: Path, band: np.ndarray, pixel: float, *, jp2: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = ({"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES", "BLOCKXSIZE": 1024,
                "BLOCKYSIZE": 1024} if jp2 else
               {"driver": "GTiff", "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate"})
    with rasterio.open(path, "w", width=band.shape[1], height=band.shape[0], count=1, dtype=band.dtype,
                       crs="EPSG:32645", transform=from_origin(500000, 4800000, pixel, pixel), **options) as dst:
        dst.write(band[None])


def make_date(folder: Path, name: str, offset: int, size: int, *, after: bool) -> tuple[Path, Path]:
    """The date as a SAFE folder and as a DEFLATE band folder; both paths."""
    rng = np.random.default_rng(1 if after else 0)
    data = scene_rows(rng, slice(0, size), size, after=after)  # (4, size, size): blue, green, red, nir
    dn = np.clip(data.astype(np.float32) - offset, 1, 65000).astype(np.uint16)
    swir = {"B11": dn[2, ::2, ::2] * 1.1, "B12": dn[2, ::2, ::2] * 0.9}
    scl = np.full((size // 2, size // 2), 4, np.uint8)
    safe = folder / f"{name}.SAFE"
    img = safe / "GRANULE" / f"L2A_T45TUJ_A000001_{name.split('_')[2]}" / "IMG_DATA"
    tif = folder / f"{name}_tif"
    stamp = name.split("_")[2]
    for band, values in zip(TEN_M, dn, strict=True):
        write_band(img / "R10m" / f"T45TUJ_{stamp}_{band}_10m.jp2", values, 10, jp2=True)
        write_band(tif / f"T45TUJ_{stamp}_{band}_10m.tif", values, 10, jp2=False)
    for band, values in {**swir, "SCL": scl}.items():
        values = np.clip(values, 0, 65000).astype(np.uint8 if band == "SCL" else np.uint16)
        write_band(img / "R20m" / f"T45TUJ_{stamp}_{band}_20m.jp2", values, 20, jp2=True)
        write_band(tif / f"T45TUJ_{stamp}_{band}_20m.tif", values, 20, jp2=False)
    offsets = "".join(f'<BOA_ADD_OFFSET band_id="{i}">{offset}</BOA_ADD_OFFSET>' for i in range(13)) if offset else ""
    (safe / "MTD_MSIL2A.xml").write_text(XML.format(offsets=offsets), encoding="utf-8")
    return safe, tif


def make_data(folder: Path, size: int) -> dict[str, dict[str, Path]]:
    done = folder / f"ready-{size}.json"
    if done.is_file():
        return {k: {d: Path(p) for d, p in v.items()} for k, v in json.loads(done.read_text()).items()}
    layouts: dict[str, dict[str, Path]] = {"safe": {}, "geotiff": {}}
    for date, (name, offset) in DATES.items():
        print(f"writing the {date} date ({size} px) ...", flush=True)
        layouts["safe"][date], layouts["geotiff"][date] = make_date(folder / str(size), name, offset, size,
                                                                    after=date == "after")
    done.write_text(json.dumps({k: {d: str(p) for d, p in v.items()} for k, v in layouts.items()}))
    return layouts


READ = """
import sys, time, rasterio
from concurrent.futures import ThreadPoolExecutor
files = sys.argv[1:]
def read(f):
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(f) as src:
        return src.read().nbytes
tic = time.perf_counter()
with ThreadPoolExecutor(4) as pool:
    list(pool.map(read, files))
print(time.perf_counter() - tic)
"""


def threaded_read(dates: dict[str, Path]) -> float:
    files = [str(p) for d in dates.values() for p in sorted(d.rglob("*")) if p.suffix in (".jp2", ".tif")]
    out = subprocess.run([sys.executable, "-c", READ, *files], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def timed_run(dates: dict[str, Path], out: Path) -> float:
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "detector", "-q", "run", "--before", str(dates["before"]), "--after",
                    str(dates["after"]), "--out", str(out), "--overwrite"], check=True)
    return time.perf_counter() - tic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "detector-bench-products")
    args = parser.parse_args()
    layouts = make_data(args.data, args.size)
    mpx = 2 * args.size**2 / 1e6
    print(f"{'layout':<9} {'read s':>7} {'read Mpx/s':>10} {'run s':>7} {'run Mpx/s':>9} {'run/read':>8}")
    for name, dates in layouts.items():
        read = threaded_read(dates)
        run = timed_run(dates, args.data / f"out-{name}")
        print(f"{name:<9} {read:7.1f} {mpx / read:10.1f} {run:7.1f} {mpx / run:9.1f} {read / run:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
