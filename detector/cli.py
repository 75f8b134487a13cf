"""Command line: the only module that knows about argv, logging setup and progress."""

from __future__ import annotations

import argparse
import ctypes
import logging
import sys
from pathlib import Path

from detector import __version__
from detector.errors import DetectorError

log = logging.getLogger("detector")

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc mallopt parameters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detector", description=__doc__)
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="score sites (or cells) for change between two dates")
    run.add_argument("--before", required=True, type=Path, help="before date: raster file or folder of band files")
    run.add_argument("--after", required=True, type=Path, help="after date: raster file or folder of band files")
    run.add_argument("--out", required=True, type=Path, help="output folder")
    run.add_argument("--sites", type=Path, help="site file (GeoJSON, GPKG, SHP, KML, CSV); omit for cell mode")
    run.add_argument("--buffer-m", type=float, default=500.0, help="radius around point sites (default 500)")
    run.add_argument("--cell-m", type=float, default=500.0, help="cell size without --sites (default 500)")
    run.add_argument("--overwrite", action="store_true", help="replace results in an existing --out")
    run.add_argument("--threshold", type=float, default=0.5, help="site score at which a site is flagged (0.5)")
    run.add_argument("--pixel-threshold", type=float, default=0.5, help="pixel score counted as changed (0.5)")
    run.add_argument("--min-area-m2", type=float, default=500.0, help="smallest change polygon kept (500)")
    run.add_argument("--id-col", help="column holding the site id")
    run.add_argument("--lon-col", help="CSV longitude column")
    run.add_argument("--lat-col", help="CSV latitude column")
    run.add_argument("--before-date", help="acquisition date of --before, YYYY-MM-DD")
    run.add_argument("--after-date", help="acquisition date of --after, YYYY-MM-DD")
    run.add_argument("--tile-px", type=int, default=512, help="tile size in pixels (512)")
    run.add_argument("--max-shift-px", type=float, default=8.0, help="largest misregistration corrected (8)")
    run.add_argument("--bin", type=int, default=2,
                     help="score on blocks of BIN x BIN pixels, repeated back onto the grid (2; 1 = full resolution)")
    run.add_argument("--workers", type=int, default=0, help="scoring threads (default: one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pyogrio").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    try:
        return run_command(args, argv if argv is not None else sys.argv[1:])
    except DetectorError as exc:
        print(f"detector: error: {exc}", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    from dataclasses import replace

    from detector.config import RunConfig
    from detector.pipeline import run
    from detector.scoring import ScoreRule

    config = RunConfig(
        before=args.before, after=args.after, out=args.out, sites=args.sites, buffer_m=args.buffer_m,
        cell_m=args.cell_m, overwrite=args.overwrite, id_col=args.id_col, lon_col=args.lon_col,
        lat_col=args.lat_col, before_date=args.before_date, after_date=args.after_date,
        tile_px=args.tile_px, max_shift_px=args.max_shift_px, min_area_m2=args.min_area_m2, bin=args.bin,
        workers=args.workers,
        rule=replace(ScoreRule(), threshold=args.threshold, pixel_threshold=args.pixel_threshold),
    )
    record = run(config, progress=None if args.quiet else _progress, command=["detector", *argv])
    if not args.quiet:
        sys.stderr.write("\n")
    counts = record["counts"]
    print(f"{counts['sites']} {'cells' if record['mode'] == 'cells' else 'sites'} scored, "
          f"{counts['flagged']} flagged, {counts['no_coverage']} without coverage, "
          f"{counts['change_polygons']} change polygons; results in {args.out}")
    return 0


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of unmapping it.

    The kernels allocate arrays of a few MB per tile batch; by default glibc
    maps each one afresh and every page then faults on first touch, which on
    these virtual machines costs more than the arithmetic (see
    ``../shared/PERFORMANCE.md``).  A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20)
    libc.mallopt(M_TOP_PAD, 256 * 2**20)


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\rscoring [{'#' * filled}{'.' * (width - filled)}] {done}/{total} batches")
    sys.stderr.flush()


if __name__ == "__main__":
    raise SystemExit(main())
