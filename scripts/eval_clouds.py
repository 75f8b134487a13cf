"""What ``--cloud-detector s2cloudless`` masks on real Sentinel-2 L1C cities, and what it costs.

For each city (the ten of ``../shared/data/oscd-dev`` with their seven other
bands from ``oscd-dev-bands``, and the ten of ``oscd-unlabelled``; all 13
bands, both dates) it runs the detector as ``run`` does (:mod:`detector.clouds`:
60 m, the package's settings) and prints the share of the city masked at
each date, the seconds it took, and for the labelled cities the share of the
changed pixels of the change map that either date's mask hides: on these
nearly clear scenes every masked pixel is a candidate false alarm, and every
masked changed pixel a change the run can no longer see.

    python scripts/eval_clouds.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling

from detector import clouds
from detector.imagery import Band, DateSource, open_date, reference_grid

ROOT = Path(__file__).resolve().parents[1]


def with_bands(city: Path, extra: Path | None, date: str) -> DateSource:
    """A city's date with the bands of ``extra`` (oscd-dev-bands) added."""
    source = open_date(city / date)
    if extra is None or not (extra / city.name / date).is_dir():
        return source
    more = open_date(extra / city.name / date)
    named = {b.name: b for b in (*source.bands, *more.bands)}
    return DateSource(source.path, tuple(Band(b.path, b.index, b.name, b.offset) for b in named.values()),
                      source.date)


def mask_of(date: DateSource, folder: Path, name: str) -> tuple[np.ndarray, float]:
    """The date's s2cloudless mask at 60 m and the seconds it took."""
    grid = reference_grid(date, ("blue", "green", "red"))
    tic = time.perf_counter()
    masked = clouds.masked(date, grid, folder / f"{name}.tif", key="--cloud-detector")
    seconds = time.perf_counter() - tic
    assert masked.mask is not None
    with rasterio.open(masked.mask.path) as src:
        return src.read(1) > 0, seconds


def changed_masked(city: Path, masks: list[Path]) -> float:
    """The share of the change map's changed pixels under either date's mask (read onto the map's grid)."""
    with rasterio.open(city / "cm" / f"{city.name}-cm.tif") as src:
        truth = src.read(1) == 2
    with rasterio.open(city / "imgs_1" / "B02.tif") as ref:
        shape, transform, crs = ref.shape, ref.transform, ref.crs
    hidden = np.zeros(shape, bool)
    for path in masks:
        with rasterio.open(path) as src:
            out = np.zeros(shape, np.uint8)
            rasterio.warp.reproject(src.read(1), out, src_transform=src.transform, src_crs=src.crs,
                                    dst_transform=transform, dst_crs=crs, resampling=Resampling.nearest)
        hidden |= out > 0
    return float((hidden & truth).sum() / max(int(truth.sum()), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    print(f"{'city':<12} {'masked 1':>8} {'masked 2':>8} {'changed hidden':>14} {'s / date':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for folder, extra in ((args.data / "oscd-dev", args.data / "oscd-dev-bands"),
                              (args.data / "oscd-unlabelled", None)):
            for city in sorted(p for p in folder.iterdir() if (p / "imgs_1").is_dir()):
                shares, paths, seconds = [], [], []
                for date in ("imgs_1", "imgs_2"):
                    mask, took = mask_of(with_bands(city, extra, date), Path(tmp), f"{city.name}_{date}")
                    shares.append(mask.mean())
                    paths.append(Path(tmp) / f"{city.name}_{date}.tif")
                    seconds.append(took)
                hidden = f"{changed_masked(city, paths):14.3f}" if (city / "cm").is_dir() else f"{'-':>14}"
                print(f"{city.name:<12} {shares[0]:8.3f} {shares[1]:8.3f} {hidden} {np.mean(seconds):8.2f}",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
