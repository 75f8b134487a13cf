"""Run ``detector run`` in cell mode on each OSCD city and score the change raster.

Prints pixel average precision (AP) of ``change.tif`` against the city's
change map, next to the AP of a random score (the share of changed pixels).

    python scripts/eval_oscd.py [--data ../shared/data/oscd-dev] [--out /tmp/oscd] [--bin 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import from_bounds

from detector.config import RunConfig
from detector.metrics import average_precision
from detector.pipeline import run

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "oscd-dev"


def city_ap(city: Path, out: Path, *, bin_factor: int = 2) -> dict[str, float]:
    """Run one city end to end and return its AP and the chance level."""
    run(RunConfig(before=city / "imgs_1", after=city / "imgs_2", out=out, overwrite=True, bin=bin_factor))
    with rasterio.open(city / "imgs_1" / "B02.tif") as ref:
        transform = ref.transform
    with rasterio.open(city / "cm" / f"{city.name}-cm.tif") as cm:
        truth = cm.read(1) == 2
    with rasterio.open(out / "change.tif") as src:
        window = from_bounds(*src.bounds, transform=transform).round_offsets().round_lengths()
        score = src.read(1)
    full = np.full(truth.shape, np.nan, dtype=np.float32)
    r, c = int(window.row_off), int(window.col_off)
    full[r:r + score.shape[0], c:c + score.shape[1]] = score
    return {"ap": average_precision(full, truth), "chance": float(truth.mean()),
            "analysed": float(np.isfinite(full).mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="oscd-")))
    parser.add_argument("--bin", type=int, default=2, help="detector run --bin (2; 1 = full resolution)")
    args = parser.parse_args()
    cities = sorted(p for p in args.data.iterdir() if (p / "cm").is_dir())
    results = {}
    print(f"{'city':<12} {'AP':>6} {'chance':>7} {'lift':>6}")
    for city in cities:
        res = city_ap(city, args.out / city.name, bin_factor=args.bin)
        results[city.name] = res
        print(f"{city.name:<12} {res['ap']:6.3f} {res['chance']:7.3f} {res['ap'] / res['chance']:6.1f}")
    aps = np.array([r["ap"] for r in results.values()])
    print(f"{'mean':<12} {aps.mean():6.3f} {np.mean([r['chance'] for r in results.values()]):7.3f}")
    (args.out / "oscd_ap.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
