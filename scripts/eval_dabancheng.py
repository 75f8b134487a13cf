"""Every real pair over the Dabancheng camps: is Facility #1 (built 2017-18) flagged and #2 (bare until 2019) not?

Pairs each of the four 2017 frames of ``../shared/data/dabancheng-sentinel2/registered``
with each of the seven 2018 frames (28 pairs), and the 2017-03-02 frame
with the 2020-06-02 L2A bands (another product, grid and radiometry, in
which #2 is built too), and runs ``detector run`` on ASPI's two sites (the
bundled ``detector/sample/sites.geojson``) with every default but
``--method``.  Prints each pair's scores, flags and the rule that applied.

    python scripts/eval_dabancheng.py [--methods fused,classical,cnn] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import geopandas as gpd

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "dabancheng-sentinel2"
SITES = ROOT / "detector" / "sample" / "sites.geojson"
BEFORE = ("2017-03-02", "2017-06-10", "2017-07-08", "2017-08-04")
AFTER = ("2018-03-22", "2018-04-29", "2018-05-26", "2018-06-10", "2018-06-23", "2018-07-23", "2018-10-11")
L2A = ("2017-03-02", "2020-06-02")
FACILITIES = ("Dabancheng Facility #1", "Dabancheng Facility #2")


def pairs(data: Path = DATA) -> list[tuple[Path, Path, str | None]]:
    """(before, after, after date) of the 28 frame pairs and the frame-to-L2A pair."""
    frames = [(data / "registered" / f"{b}.tif", data / "registered" / f"{a}.tif", None)
              for b, a in itertools.product(BEFORE, AFTER)]
    return [*frames, (data / "registered" / f"{L2A[0]}.tif", data / "2020-06-02_L2A", L2A[1])]


def run_pair(before: Path, after: Path, after_date: str | None, out: Path, method: str) -> dict[str, Any]:
    """One ``detector run`` on the two sites: each facility's score and flag, and the rule that applied."""
    from detector.cli import main

    command = ["-q", "run", "--sites", str(SITES), "--before", str(before), "--after", str(after), "--out", str(out),
               "--overwrite", "--method", method, "--chips", "0"]
    if after_date:
        command += ["--after-date", after_date]
    with contextlib.redirect_stdout(io.StringIO()):
        if main(command) != 0:
            raise SystemExit(f"detector run failed on {before} and {after}")
    sites = gpd.read_file(out / "sites.geojson").set_index("site_id")
    record = json.loads((out / "run.json").read_text())
    return {"scores": [float(sites.loc[f, "score"]) for f in FACILITIES],
            "flagged": [bool(sites.loc[f, "flagged"]) for f in FACILITIES],
            "rule": (record.get("fusion_applied") or {}).get("rule", method),
            "agreement": (record.get("fusion_applied") or {}).get("agreement")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="fused,classical,cnn")
    parser.add_argument("--out", type=Path, default=Path(tempfile.mkdtemp(prefix="dabancheng-")))
    args = parser.parse_args()
    report: dict[str, list[dict[str, Any]]] = {}
    for method in args.methods.split(","):
        rows = []
        print(f"\n{method}: {'pair':<24} {'#1':>5} {'#2':>5}  flags  rule (agreement)")
        for before, after, after_date in pairs():
            name = f"{before.stem}>{after_date or after.stem}"
            row = {"pair": name, **run_pair(before, after, after_date, args.out / method / name, method)}
            rows.append(row)
            marks = "".join("F" if f else "." for f in row["flagged"])
            agreement = "" if row["agreement"] is None else f" ({row['agreement']:.3f})"
            print(f"{'':<{len(method) + 2}}{name:<24} {row['scores'][0]:5.2f} {row['scores'][1]:5.2f}  {marks:>5}  "
                  f"{row['rule']}{agreement}", flush=True)
        frames = rows[:-1]
        ok = sum(r["flagged"][0] and not r["flagged"][1] for r in frames)
        print(f"{'':<{len(method) + 2}}#1 flagged and #2 not on {ok} of {len(frames)} frame pairs; "
              f"2017 frame vs 2020 L2A: #2 {'flagged' if rows[-1]['flagged'][1] else 'not flagged'} "
              f"({rows[-1]['scores'][1]:.2f})")
        report[method] = rows
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dabancheng.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
