"""Quality across cities, as users run the tool: ``detector run`` with defaults on OSCD cities it was not
trained on, scored against their change maps at the threshold the run chose itself.

    python scripts/eval_oscd.py --folds 5 [--models DIR] [--out DIR] [--methods classical,cnn,fused]
                                [--bands ../shared/data/oscd-dev-bands]
    python scripts/eval_oscd.py --cities beihai,cupertino,pisa [--model FILE]

With ``--folds K`` the ten cities of ``../shared/data/oscd-dev`` are split by
city into K folds (fold i: ``sorted(cities)[i::K]``); fold i's model is
trained on the other folds with the recipe of the shipped weights
(``scripts/train_default.py --cities``, seed 0; kept in ``--models`` and
trained only where missing), and every city of fold i is run with it
(``--cities`` picks which of them are run; the folds stay those of all ten,
so a kept fold model is always the one its name says).
Without ``--folds`` every city listed is run with ``--model`` (default: the
shipped weights, trained on all ten: in-domain figures, not generalization).

Each run is ``detector run --before imgs_1 --after imgs_2`` in cell mode
(``--cell-m`` 500), all else default; ``--bands`` adds each city's other
band files (the date folders given to the run then link both sets).
Printed per city and pooled over all
pixels: precision, recall, F1 and IoU of the pixels the run counts as
changed (its recorded pixel threshold), pixel AP, cell AP (a cell is changed
where at least ``--cell-min-m2`` of it is), and the worst city's F1, for
each method.

``--unlabelled DIR`` (default ``../shared/data/oscd-unlabelled``) adds the
cities without change maps, run with the shipped weights: per method, the
share of pixels and of cells flagged and the fusion rule each scene got, so
a collapse (nothing found) or a flood shows without labels; their chips are
in ``--out``.  Everything is written to ``--out/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio import features

from detector.methods import METHODS, NAMES
from detector.tiling import bounds_window
from training.evaluation import Counts

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATA = SHARED / "oscd-dev"
DETECTOR = [sys.executable, "-m", "detector", "-q"]


def cities_of(folder: Path, *, labelled: bool = True) -> list[Path]:
    return sorted(p for p in folder.iterdir() if (p / "imgs_1").is_dir() and ((p / "cm").is_dir() or not labelled))


def folds(cities: list[Path], k: int) -> list[list[Path]]:
    """Fold i holds every k-th city from the i-th, in alphabetical order."""
    return [cities[i::k] for i in range(k)]


def fold_model(models: Path, index: int, k: int, train_on: list[Path]) -> Path:
    """Fold ``index``'s model, trained with the shipped weights' recipe on ``train_on`` where missing."""
    path = models / f"fold{index}of{k}.pt"
    if not path.is_file():
        models.mkdir(parents=True, exist_ok=True)
        print(f"training fold {index} of {k} on {', '.join(c.name for c in train_on)} ...", flush=True)
        subprocess.run([sys.executable, str(ROOT / "scripts" / "train_default.py"),
                        "--data", str(train_on[0].parents[1]), "--cities", ",".join(c.name for c in train_on),
                        "--out", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def fold_plan(every: list[Path], chosen: list[Path], k: int, models: Path) -> list[tuple[Path, Path]]:
    """Each chosen city with the model of its fold; the folds are cut over ``every`` city, whichever are chosen,
    and only the folds of chosen cities get a model (trained where missing)."""
    return [(c, fold_model(models, i, k, [x for x in every if x not in fold]))
            for i, fold in enumerate(folds(every, k)) if set(fold) & set(chosen) for c in fold if c in chosen]


def with_bands(city: Path, bands: Path | None, folder: Path) -> tuple[Path, Path]:
    """The city's two date folders; with ``bands``, folders under ``folder`` that link the city's band files
    and those of ``bands/<city>`` (e.g. ``oscd-dev-bands``: all 13 Sentinel-2 bands, as users download them)."""
    if bands is None:
        return city / "imgs_1", city / "imgs_2"
    dates = []
    for date in ("imgs_1", "imgs_2"):
        merged = folder / date
        merged.mkdir(parents=True, exist_ok=True)
        for source in sorted((city / date).glob("*.tif")) + sorted((bands / city.name / date).glob("*.tif")):
            if not (merged / source.name).exists():
                (merged / source.name).symlink_to(source.resolve())
        dates.append(merged)
    return dates[0], dates[1]


def run_city(city: Path, out: Path, method: str, model: Path | None, cell_m: float,
             bands: Path | None = None) -> dict[str, Any]:
    """``detector run`` on one city as a user runs it (``bands``: see :func:`with_bands`); its run.json."""
    before, after = with_bands(city, bands, out.parent / "bands")
    command = [*DETECTOR, "run", "--before", str(before), "--after", str(after), "--out",
               str(out), "--overwrite", "--cell-m", str(cell_m), "--method", method]
    if model is not None and METHODS[method].uses_model:
        command += ["--model", str(model)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "run.json").read_text())


def on_truth_grid(city: Path, out: Path, sites: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The run's change raster on the change map's grid (NaN where not analysed), the map, and the labels of
    the run's cells (``sites``, in order) on that grid."""
    with rasterio.open(city / "imgs_1" / "B02.tif") as ref:
        transform, shape = ref.transform, ref.shape
    cm = city / "cm" / f"{city.name}-cm.tif"
    truth = None
    if cm.is_file():
        with rasterio.open(cm) as src:
            truth = src.read(1) == 2
            shape = truth.shape
    with rasterio.open(out / "change.tif") as src:
        window = bounds_window(src.bounds, transform)
        score, crs = src.read(1), src.crs
    full = np.full(shape, np.nan, dtype=np.float32)
    r, c = int(window.row_off), int(window.col_off)
    h, w = min(score.shape[0], shape[0] - r), min(score.shape[1], shape[1] - c)
    full[r:r + h, c:c + w] = score[:h, :w]
    shapes = [(g, i + 1) for i, g in enumerate(sites.to_crs(crs).geometry)]
    cells = features.rasterize(shapes, out_shape=shape, transform=transform, fill=0, dtype="int32")
    return full, truth, cells


def city_numbers(score: np.ndarray, truth: np.ndarray, cells: np.ndarray, sites_score: np.ndarray, *,
                 pixel_threshold: float, cell_min_px: int) -> dict[str, Any]:
    """Counts and AP of one city (pooled later by summing the counts)."""
    from detector.metrics import average_precision

    keep = np.isfinite(score)
    s, t = score[keep], truth[keep]
    changed = s >= pixel_threshold
    tp, fp, fn = int((changed & t).sum()), int((changed & ~t).sum()), int((~changed & t).sum())
    per_cell = np.bincount(cells[keep & truth].ravel(), minlength=len(sites_score) + 1)[1:]
    cell_truth = per_cell >= cell_min_px
    return {"tp": tp, "fp": fp, "fn": fn, **rates(tp, fp, fn), "ap": average_precision(s, t),
            "cell_ap": average_precision(sites_score, cell_truth), "chance": float(t.mean()),
            "analysed": float(keep.mean()),
            "cells": len(sites_score), "changed_cells": int(cell_truth.sum())}


def city_ap(city: Path, out: Path, *, method: str = "fused", model: Path | None = None, cell_m: float = 500.0,
            cell_min_m2: float = 500.0, bands: Path | None = None) -> dict[str, Any]:
    """Run one labelled city as a user would and measure it (see :func:`city_numbers`)."""
    import geopandas as gpd

    record = run_city(city, out, method, model, cell_m, bands)
    sites = gpd.read_file(out / "sites.geojson")
    score, truth, cells = on_truth_grid(city, out, sites)
    if truth is None:
        raise SystemExit(f"{city} has no change map (cm/{city.name}-cm.tif)")
    found = city_numbers(score, truth, cells, sites["score"].to_numpy(dtype=float),
                         pixel_threshold=float(record["parameters"]["rule"]["pixel_threshold"]),
                         cell_min_px=int(np.ceil(cell_min_m2 / 100)))
    return {**found, "rule": (record.get("fusion_applied") or {}).get("rule", method),
            "model": str(model) if model and METHODS[method].uses_model else None}


def rates(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall, F1 and IoU of pooled counts (true negatives play no part)."""
    return Counts(tp, fp, fn, 0).metrics()


def labelled(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    every = cities_of(args.data)
    chosen = [c for c in every if not args.cities or c.name in args.cities.split(",")]
    plan = fold_plan(every, chosen, args.folds, args.models) if args.folds else [(c, args.model) for c in chosen]
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    print(f"{'city':<12} {'method':<10} {'P':>6} {'R':>6} {'F1':>6} {'IoU':>6} {'AP':>6} {'cellAP':>7} "
          f"{'chance':>7}  rule")
    for city, model in sorted(plan, key=lambda p: p[0].name):
        for method in methods:
            found = city_ap(city, args.out / "labelled" / city.name / method, method=method, model=model,
                            cell_m=args.cell_m, cell_min_m2=args.cell_min_m2, bands=args.bands)
            results[method][city.name] = found
            print(f"{city.name:<12} {method:<10} {found['precision']:6.3f} {found['recall']:6.3f} {found['f1']:6.3f} "
                  f"{found['iou']:6.3f} {found['ap']:6.3f} {found['cell_ap']:7.3f} {found['chance']:7.3f}  "
                  f"{found['rule']}", flush=True)
    summary = {}
    for method in methods:
        rows = results[method]
        totals = {k: sum(r[k] for r in rows.values()) for k in ("tp", "fp", "fn")}
        worst = min(rows, key=lambda c: rows[c]["f1"])
        summary[method] = {**rates(**totals), "mean_ap": float(np.mean([r["ap"] for r in rows.values()])),
                           "mean_cell_ap": float(np.nanmean([r["cell_ap"] for r in rows.values()])),
                           "worst_city": worst, "worst_f1": rows[worst]["f1"]}
        s = summary[method]
        print(f"{'pooled':<12} {method:<10} {s['precision']:6.3f} {s['recall']:6.3f} {s['f1']:6.3f} {s['iou']:6.3f} "
              f"{s['mean_ap']:6.3f} {s['mean_cell_ap']:7.3f}          worst {worst} F1 {s['worst_f1']:.3f}"
              "  (AP: mean over cities)")
    return {"per_city": results, "pooled": summary, "folds": args.folds,
            "fold_cities": [[c.name for c in f] for f in folds(every, args.folds)] if args.folds else None}


def unlabelled(args: argparse.Namespace, methods: list[str]) -> dict[str, Any]:
    import geopandas as gpd

    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    print(f"\n{'unlabelled':<12} {'method':<10} {'pixels':>7} {'cells':>7}  rule  (share flagged; shipped model)")
    for city in cities_of(args.unlabelled, labelled=False):
        for method in methods:
            out = args.out / "unlabelled" / city.name / method
            record = run_city(city, out, method, None, args.cell_m)
            with rasterio.open(out / "change.tif") as src:
                score = src.read(1)
            threshold = float(record["parameters"]["rule"]["pixel_threshold"])
            sites = gpd.read_file(out / "sites.geojson")
            valid = np.isfinite(score)
            row = {"pixels_flagged": float((score[valid] >= threshold).mean()),
                   "cells_flagged": float(sites["flagged"].mean()), "chips": str(out / "chips"),
                   "rule": (record.get("fusion_applied") or {}).get("rule", method)}
            results[method][city.name] = row
            print(f"{city.name:<12} {method:<10} {row['pixels_flagged']:7.3f} {row['cells_flagged']:7.3f}  "
                  f"{row['rule']}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--unlabelled", type=Path, default=SHARED / "oscd-unlabelled")
    parser.add_argument("--no-unlabelled", action="store_true", help="skip the unlabelled cities")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="oscd-")))
    parser.add_argument("--folds", type=int, default=0, help="cross-city folds (0: run --model on every city)")
    parser.add_argument("--models", type=Path, default=ROOT / ".eval-models", help="where fold models are kept")
    parser.add_argument("--model", type=Path, help="without --folds: model file (default: the shipped weights)")
    parser.add_argument("--cities", help="comma-separated cities (default: all)")
    parser.add_argument("--methods", default=",".join(NAMES), help=f"comma-separated: {', '.join(NAMES)}")
    parser.add_argument("--bands", type=Path, help="also read each labelled city's band files from BANDS/<city> "
                                                   "(e.g. ../shared/data/oscd-dev-bands: all 13 bands)")
    parser.add_argument("--cell-m", type=float, default=500.0)
    parser.add_argument("--cell-min-m2", type=float, default=500.0, help="changed area that makes a cell changed")
    args = parser.parse_args()
    methods = args.methods.split(",")
    report = {"labelled": labelled(args, methods)}
    if not args.no_unlabelled and args.unlabelled.is_dir():
        report["unlabelled"] = unlabelled(args, methods)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"\nwrote {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
