"""Run ``detector run`` in cell mode on OSCD cities and score its change raster against the change maps.

Prints, per city and method, the pixel average precision (AP) of
``change.tif`` next to the AP of a random score (the share of changed
pixels), and precision / recall / F1 of the pixels counted as changed
(score >= the pixel threshold, 0.5).

    python scripts/eval_oscd.py [--data ../shared/data/oscd-dev] [--cities beihai,cupertino,pisa]
                                [--methods classical,cnn,fused] [--model FILE] [--bin 2] [--out DIR]

The default model's held-out cities are beihai, cupertino and pisa
(``scripts/train_default.py``); the other seven were used to train it and,
with these three, to set the classical constants.
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

from detector.config import RunConfig, ScanOptions
from detector.pipeline import run
from training.evaluation import pixel_metrics

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "oscd-dev"


def city_ap(city: Path, out: Path, *, bin_factor: int = 2, method: str = "classical",
            model: Path | None = None) -> dict[str, float]:
    """Run one city end to end and return its AP, chance level and F1 at the pixel threshold."""
    config = RunConfig(before=city / "imgs_1", after=city / "imgs_2", out=out, overwrite=True,
                       scan=ScanOptions(bin=bin_factor, method=method, model=model))
    run(config)
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
    found = pixel_metrics(full, truth.astype(np.float32), threshold=config.scan.rule.pixel_threshold)
    return {"ap": found["ap"], "chance": float(truth.mean()), "analysed": float(np.isfinite(full).mean()),
            "precision": found["precision"], "recall": found["recall"], "f1": found["f1"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="oscd-")))
    parser.add_argument("--cities", help="comma-separated cities (default: all)")
    parser.add_argument("--methods", default="classical", help="comma-separated: classical, cnn, fused")
    parser.add_argument("--model", type=Path, help="model file (default: the shipped weights)")
    parser.add_argument("--bin", type=int, default=2, help="detector run --bin (2; 1 = full resolution)")
    args = parser.parse_args()
    cities = sorted(p for p in args.data.iterdir() if (p / "cm").is_dir())
    if args.cities:
        cities = [c for c in cities if c.name in args.cities.split(",")]
    methods = args.methods.split(",")
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in methods}
    print(f"{'city':<12} {'method':<10} {'AP':>6} {'chance':>7} {'lift':>6} {'P':>6} {'R':>6} {'F1':>6}")
    for city in cities:
        for method in methods:
            res = city_ap(city, args.out / city.name / method, bin_factor=args.bin, method=method, model=args.model)
            results[method][city.name] = res
            print(f"{city.name:<12} {method:<10} {res['ap']:6.3f} {res['chance']:7.3f} "
                  f"{res['ap'] / res['chance']:6.1f} {res['precision']:6.3f} {res['recall']:6.3f} {res['f1']:6.3f}",
                  flush=True)
    for method in methods:
        rows = results[method].values()
        print(f"{'mean':<12} {method:<10} {np.mean([r['ap'] for r in rows]):6.3f} "
              f"{np.mean([r['chance'] for r in rows]):7.3f} {'':>6} {np.mean([r['precision'] for r in rows]):6.3f} "
              f"{np.mean([r['recall'] for r in rows]):6.3f} {np.mean([r['f1'] for r in rows]):6.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oscd_scores.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
