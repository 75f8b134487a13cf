"""Command line: the only module that knows about argv, logging setup and progress."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rasterio.errors import NotGeoreferencedWarning

from detector import __version__
from detector.bands import PRESETS
from detector.errors import DetectorError, first_line
from detector.inference import BACKENDS
from detector.memory import keep_freed_memory
from detector.methods import DEFAULT as DEFAULT_METHOD
from detector.methods import NAMES as METHOD_NAMES

if TYPE_CHECKING:
    from detector.batch.run import BatchStatus
    from detector.timeline.run import TimelineConfig


class Parser(argparse.ArgumentParser):
    """argparse, with the house's one-line error (the usage block is for ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def command(commands: argparse._SubParsersAction, name: str, *, help: str) -> argparse.ArgumentParser:
    """A subcommand that takes ``-q`` after its name too (unset there, the one before it stands)."""
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="only errors on stderr")
    quiet.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="GDAL's own messages too")
    return commands.add_parser(name, parents=[quiet], help=help)


DESCRIPTION = ("Find new construction and expansion at candidate sites (or in a grid of cells) between two dates of "
               "satellite imagery, with the evidence to defend each flag.")


BANDS_HELP = ("the bands of the image pairs' files (A/ B/), in file order (blue,green,red,nir; - to leave one out) or "
              f"a preset: {', '.join(PRESETS)} (default: the first three are red, green, blue)")


def add_imagery_options(parser: argparse.ArgumentParser) -> None:
    """``--bands`` (or per date) and the cloud mask files."""
    presets = ", ".join(PRESETS)
    parser.add_argument("--bands", help="the bands of a multi-band file, in file order (blue,green,red,nir; - to "
                                        f"leave one out) or a preset: {presets}; for both dates")
    parser.add_argument("--before-bands", help="--bands for the before date only")
    parser.add_argument("--after-bands", help="--bands for the after date only")
    parser.add_argument("--before-mask", type=Path, help="cloud mask of the before date: non-zero = obscured")
    parser.add_argument("--after-mask", type=Path, help="cloud mask of the after date: non-zero = obscured")
    parser.add_argument("--cloud-detector", choices=("none", "s2cloudless"), default="none",
                        help="mask the clouds of a Sentinel-2 date that has no mask (L1C) with s2cloudless "
                             "(pip install '.[clouds]'; default none)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="detector", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"detector {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")
    parser.add_argument("-v", "--verbose", action="store_true", help="GDAL's own messages too")
    commands = parser.add_subparsers(dest="command", required=True)
    run = command(commands, "run", help="score sites (or cells) for change between two dates")
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
    add_imagery_options(run)
    run.add_argument("--tile-px", type=int, default=512, help="tile size in pixels (512)")
    run.add_argument("--max-shift-px", type=float, default=8.0, help="largest misregistration corrected (8)")
    run.add_argument("--bin", type=int, default=0,
                     help="score on blocks of BIN x BIN pixels, repeated back onto the grid (default 0: every pixel "
                          "of imagery of 5 m or coarser, 2 x 2 blocks of finer imagery; 1 = every pixel)")
    run.add_argument("--workers", type=int, default=0, help="scoring threads (default: one per core)")
    run.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD,
                     help="score: classical evidence, the CNN, or both fused (default fused; see README)")
    run.add_argument("--model", type=Path, help="model file from `detector train` (default: the shipped weights)")
    run.add_argument("--backend", choices=BACKENDS, default="auto",
                     help="where the CNN runs: onnxruntime (pip install '.[onnx]'), torch, or auto (onnxruntime "
                          "when installed); the scores are the same")
    run.add_argument("--reviews", type=Path,
                     help="sites.geojson whose review_status/reviewer/notes are carried over by site_id "
                          "(default: the sites.geojson already in --out)")
    run.add_argument("--max-flags", type=int, help="raise the threshold so that at most N sites are flagged")
    run.add_argument("--target-precision", type=float,
                     help="the lowest threshold reaching this precision on the labelled sites (--labels, "
                          "else the carried-over verdicts)")
    run.add_argument("--chips", type=int, default=20,
                     help="before/after chips for every flagged site and the N best ranked (20)")
    run.add_argument("--labels", type=Path, help="sites file with a label or review_status column, by site_id")
    add_training_commands(commands)
    add_batch_commands(commands)
    return parser


def add_batch_commands(commands: argparse._SubParsersAction) -> None:
    batch = command(commands, "batch", help="score many sites over a catalog of scenes; resumes where it stopped")
    batch.add_argument("config", type=Path, help="batch configuration (TOML; see README)")
    batch.add_argument("--workers", type=int, default=0, help="local worker processes (default: one per core)")
    batch.add_argument("--dask", metavar="ADDRESS",
                       help="run the site tasks on Dask: a scheduler tcp://HOST:8786, or local:N for a LocalCluster")
    timeline = command(commands, "timeline", help="when each site was built over every date of a catalog, and "
                                                  "whether it is new or an expansion; resumes where it stopped")
    timeline.add_argument("config", type=Path, nargs="?",
                          help="a batch configuration (TOML): its sites, catalog, date span and [run] options; "
                               "results in its [output] dir / timeline")
    timeline.add_argument("--sites", type=Path, help="site file, as for run (without a configuration)")
    timeline.add_argument("--catalog", type=Path,
                          help="folder of dated scenes (rasters, band folders, SAFE, Landsat) or STAC JSON, as batch "
                               "reads it")
    timeline.add_argument("--out", type=Path, help="output folder")
    timeline.add_argument("--overwrite", action="store_true", help="replace results in an existing --out")
    timeline.add_argument("--buffer-m", type=float, default=500.0, help="radius around point sites (500)")
    timeline.add_argument("--id-col", help="column holding the site id")
    timeline.add_argument("--bands", help="the bands of the catalog's unnamed multi-band files, as for run")
    timeline.add_argument("--method", choices=METHOD_NAMES, default=DEFAULT_METHOD, help="score, as for run (fused)")
    timeline.add_argument("--model", type=Path, help="model file (default: the shipped weights)")
    timeline.add_argument("--max-cloud", type=float, default=0.5, help="most cloud over a site a date may have (0.5)")
    timeline.add_argument("--min-valid", type=float, default=0.9, help="least share of a site with data (0.9)")
    timeline.add_argument("--min-persistence", type=int, default=2,
                          help="usable dates a change must persist on to count as built (2)")
    timeline.add_argument("--min-built-m2", type=float, default=2000.0,
                          help="built area that makes a site new, and the least growth of an expansion (2000)")
    timeline.add_argument("--workers", type=int, default=1, help="local worker processes (1: in this process)")
    timeline.add_argument("--dask", metavar="ADDRESS", help="run the site tasks on Dask (tcp://HOST:8786 or local:N)")
    fetch = command(commands, "fetch", help="download the windows around a batch's sites from a STAC API")
    fetch.add_argument("config", type=Path, help="batch configuration: its sites, dates and catalog folder")
    fetch.add_argument("--stac", required=True, help="STAC API or static catalog address (http(s) or a local file)")
    fetch.add_argument("--collections", nargs="+", help="STAC collections to search, e.g. sentinel-2-l2a")
    fetch.add_argument("--bands", nargs="+",
                       help="bands to fetch (default: blue green red nir swir16 swir22 scl qa_pixel cloud)")
    fetch.add_argument("--margin-m", type=float, default=320.0, help="margin around each site in metres (320)")


def add_training_commands(commands: argparse._SubParsersAction) -> None:
    train = command(commands, "train", help="train the change CNN on labelled tiles")
    train.add_argument("--data", nargs="+", type=Path, default=[],
                       help="folders: A/ B/ label/ pairs, OSCD cities, or reviewed `detector run` outputs")
    train.add_argument("--reviews", nargs="+", type=Path, default=[],
                       help="reviewed sites.geojson files (run.json beside them): fine-tunes the current weights "
                            "unless --init is given")
    train.add_argument("--out", required=True, type=Path, help="model file to write")
    train.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    train.add_argument("--epochs", type=int, default=40, help="epochs of --steps batches (40)")
    train.add_argument("--steps", type=int, default=40, help="batches per epoch (40)")
    train.add_argument("--batch", type=int, default=16, help="tiles per batch (16)")
    train.add_argument("--tile-px", type=int, default=128, help="training tile size (128)")
    train.add_argument("--lr", type=float, default=2e-3, help="learning rate at the start of the cosine decay (0.002)")
    train.add_argument("--val-fraction", type=float, default=0.15, help="share of blocks held out (0.15)")
    train.add_argument("--patience", type=int, default=15, help="epochs without a better validation AP (15)")
    train.add_argument("--max-minutes", type=float, default=30.0, help="time budget (30)")
    train.add_argument("--seed", type=int, default=0, help="random seed (0)")
    train.add_argument("--architecture", default="ef-fpn-s", help="network (ef-fpn-s)")
    train.add_argument("--init", type=Path, help="start from this model file (fine-tuning)")
    train.add_argument("--evidence", choices=("none", "classical"), default="none",
                       help="evidence the network reads beside the bands: none, or the classical change score "
                            "(a model it fine-tunes keeps its own)")
    train.add_argument("--bands", help=BANDS_HELP)
    train.add_argument("--keep-worse", action="store_true",
                       help="write the model even if it validates worse than the one it started from")
    evaluate = command(commands, "evaluate", help="pixel metrics and a precision-recall curve of a model")
    evaluate.add_argument("--data", required=True, nargs="+", type=Path, help="labelled folders, as for train")
    evaluate.add_argument("--model", type=Path, help="model file (default: the shipped weights)")
    evaluate.add_argument("--out", required=True, type=Path, help="folder for metrics.json and pr_curve.png")
    evaluate.add_argument("--tile-px", type=int, default=256, help="tile size (256)")
    evaluate.add_argument("--scale", type=int, default=1, help="block-average the data by this factor first (1)")
    evaluate.add_argument("--threshold", type=float, default=0.5, help="probability counted as change (0.5)")
    evaluate.add_argument("--bands", help=BANDS_HELP)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("pyogrio").setLevel(logging.WARNING)
    # GDAL's own messages: our one line says what went wrong; -v shows them
    logging.getLogger("rasterio").setLevel(logging.INFO if args.verbose and not args.quiet else logging.WARNING)
    # distributed sets its loggers' levels from dask's configuration when it is imported (later, for --dask)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error" if args.quiet else "warning")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries end in our one-line error
    logging.captureWarnings(True)
    # rasterio's own in-memory rasters (rasterize) have no georeferencing by design; the warning it raises
    # there says nothing about the user's files (imagery checks those) and shows or not by thread timing
    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning, module=r"rasterio\.features")
    _LAST_TENTH.clear()  # progress state is per command, also when main() runs twice in one process
    _FAILURES_SEEN[0] = 0
    try:
        return run_command(args, argv if argv is not None else sys.argv[1:])
    except DetectorError as exc:
        print(f"detector: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the file system said no: a read-only or missing folder, a full disk
        print(f"detector: error: {first_line(exc, limit=300)}: check that the output folder can be written and "
              "the inputs read", file=sys.stderr)
        return 2


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    commands = {"run": detect_command, "train": train_command, "evaluate": evaluate_command,
                "batch": batch_command, "fetch": fetch_command, "timeline": timeline_command}
    return commands[args.command](args, argv)


def train_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.errors import InputError, OutputExistsError
    from detector.methods import default_model_path
    from training.train import TrainConfig, train

    if args.out.exists() and not args.overwrite:
        raise OutputExistsError(f"{args.out} already exists: pass --overwrite or choose another --out")
    if not args.data and not args.reviews:
        raise InputError("nothing to train on: give --data folders or --reviews files")
    init = args.init or (default_model_path() if args.reviews else None)
    config = TrainConfig(data=(*args.data, *args.reviews), out=args.out, architecture=args.architecture,
                         tile_px=args.tile_px,
                         batch=args.batch, epochs=args.epochs, steps_per_epoch=args.steps, lr=args.lr,
                         val_fraction=args.val_fraction, patience=args.patience, max_minutes=args.max_minutes,
                         seed=args.seed, init=init, keep_worse=args.keep_worse, bands=args.bands,
                         evidence=() if args.evidence == "none" else (args.evidence,),
                         notes={"command": ["detector", *argv]})
    card = train(config, progress=None if args.quiet else _epoch_line)
    best = card["metrics"]["validation"]
    print(f"best epoch {best['epoch']}: validation P {best['precision']:.3f} R {best['recall']:.3f} "
          f"F1 {best['f1']:.3f} IoU {best['iou']:.3f} AP {best['ap']:.3f}; {card['stopped']}; "
          f"{card['training_minutes']} min; wrote {args.out}")
    return 0


def evaluate_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.outputs import check_out
    from training.evaluation import evaluate

    check_out(args.out, overwrite=True, ours=("metrics.json", "pr_curve.png"), inside=True)  # its own files only
    report = evaluate(args.model, tuple(args.data), args.out, tile_px=args.tile_px, scale=args.scale,
                      threshold=args.threshold, bands=args.bands)
    print(f"{'source':<40} {'P':>6} {'R':>6} {'F1':>6} {'IoU':>6} {'AP':>6} {'changed':>8}")
    for name, m in [*report["per_source"].items(), ("overall", report["overall"])]:
        print(f"{name:<40} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['iou']:6.3f} "
              f"{m['ap']:6.3f} {m['changed_share']:8.3f}")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'pr_curve.png'}")
    return 0


def detect_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.config import ReviewOptions, RunConfig, ScanOptions, SiteOptions
    from detector.pipeline import run
    from detector.scoring import ScoreRule

    config = RunConfig(
        before=args.before, after=args.after, out=args.out, sites=args.sites, cell_m=args.cell_m,
        overwrite=args.overwrite, before_date=args.before_date, after_date=args.after_date, workers=args.workers,
        before_bands=args.before_bands or args.bands, after_bands=args.after_bands or args.bands,
        before_mask=args.before_mask, after_mask=args.after_mask, cloud_detector=args.cloud_detector,
        site=SiteOptions(buffer_m=args.buffer_m, id_col=args.id_col, lon_col=args.lon_col, lat_col=args.lat_col),
        scan=ScanOptions(tile_px=args.tile_px, max_shift_px=args.max_shift_px, min_area_m2=args.min_area_m2,
                         bin=args.bin, method=args.method, model=args.model, backend=args.backend,
                         rule=ScoreRule(threshold=args.threshold, pixel_threshold=args.pixel_threshold)),
        review=ReviewOptions(reviews=args.reviews, labels=args.labels, max_flags=args.max_flags,
                             target_precision=args.target_precision, chips=args.chips),
    )
    record = run(config, progress=None if args.quiet else _progress, command=["detector", *argv])
    _end_status(args)
    counts = record["counts"]
    print(f"{counts['sites']} {'cells' if record['mode'] == 'cells' else 'sites'} scored, "
          f"{counts['flagged']} flagged, {counts['no_coverage']} without coverage, {counts['cloudy']} under cloud, "
          f"{counts['change_polygons']} change polygons"
          + (f", {counts['candidates']} candidate sites" if counts.get("candidates") is not None else "")
          + f"; results in {args.out}")
    return 0


def batch_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.batch.config import read_batch_config
    from detector.batch.executors import check_address
    from detector.batch.run import run_batch
    from detector.errors import InputError

    if args.workers < 0:
        raise InputError(f"--workers is {args.workers}: give 1 or more (0: one per core)")
    if args.dask:
        check_address(args.dask)
    config = read_batch_config(args.config)
    record = run_batch(config, workers=args.workers, dask=args.dask,
                       progress=None if args.quiet else _batch_progress)
    _end_status(args)
    counts = record["counts"]
    if "blocks" in counts:
        print(f"{record['region']['area_km2']:g} km2 in {counts['blocks']} blocks: {counts['done']} done, "
              f"{counts['failed']} failed; {counts['cells']} cells, {counts['flagged']} flagged, "
              f"{counts['candidates']} candidate sites in {config.out / 'candidates.geojson'}")
    else:
        print(f"{counts['sites']} sites: {counts['done']} done, {counts['failed']} failed, "
              f"{counts['flagged']} flagged; results in {config.out / 'sites.gpkg'}")
    by_reason: dict[str, list[str]] = {}
    for site_id, reason in record["failed"].items():
        by_reason.setdefault(reason, []).append(site_id)
    for reason, ids in sorted(by_reason.items(), key=lambda kv: -len(kv[1]))[:5]:
        more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
        print(f"  {len(ids)} failed ({', '.join(ids[:3])}{more}): {reason}")
    if len(by_reason) > 5:
        print(f"  ... other reasons in {config.out / 'manifest.csv'}")
    return 1 if counts["failed"] else 0


def timeline_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.batch.executors import check_address
    from detector.errors import InputError
    from detector.timeline.run import timeline

    if args.workers < 1:
        raise InputError(f"--workers is {args.workers}: give 1 or more")
    if args.dask:
        check_address(args.dask)
    config = timeline_config(args)
    record = timeline(config, workers=args.workers, dask=args.dask, command=["detector", *argv],
                      progress=None if args.quiet else _progress)
    _end_status(args)
    counts = record["counts"]
    print(f"{counts['sites']} sites: " + ", ".join(f"{counts.get(k, 0)} {k}" for k in
                                                  ("new", "expanded", "unchanged", "insufficient_data", "failed"))
          + f"; results in {config.out}")
    return 1 if counts.get("failed") else 0


def timeline_config(args: argparse.Namespace) -> TimelineConfig:
    """The timeline of a batch configuration, or of ``--sites``, ``--catalog`` and ``--out``."""
    from detector.config import ScanOptions, SiteOptions
    from detector.errors import InputError
    from detector.timeline.run import TimelineConfig
    from detector.timeline.series import KindRule
    from detector.timeline.site import TimelineRule

    kind = KindRule(min_persistence=args.min_persistence, min_built_m2=args.min_built_m2)
    if args.config is not None:
        from detector.batch.config import read_batch_config

        if args.sites or args.catalog or args.out:
            raise InputError("give a batch configuration or --sites, --catalog and --out, not both")
        batch = read_batch_config(args.config)
        if batch.region is not None:
            raise InputError(f"{args.config} scans a [region]: a timeline takes listed sites; give a batch "
                             "configuration with [sites], or --sites, --catalog and --out")
        return TimelineConfig(sites=batch.sites, catalog=batch.catalog, out=batch.out / "timeline",
                              rule=TimelineRule(scan=batch.scan, kind=kind, max_cloud=batch.max_cloud,
                                                min_valid=args.min_valid),
                              overwrite=True, bands=batch.bands, site=batch.site,
                              dates=(batch.before[0], batch.after[1]))
    missing = [f"--{k}" for k in ("sites", "catalog", "out") if getattr(args, k) is None]
    if missing:
        raise InputError(f"timeline needs {', '.join(missing)} (or a batch configuration file)")
    rule = TimelineRule(scan=ScanOptions(method=args.method, model=args.model), kind=kind, max_cloud=args.max_cloud,
                        min_valid=args.min_valid)
    return TimelineConfig(sites=(args.sites,), catalog=args.catalog, out=args.out, rule=rule,
                          overwrite=args.overwrite, bands=args.bands,
                          site=SiteOptions(buffer_m=args.buffer_m, id_col=args.id_col))


def fetch_command(args: argparse.Namespace, argv: list[str]) -> int:
    from detector.batch.config import read_batch_config
    from detector.batch.fetch import DEFAULT_BANDS, fetch

    config = read_batch_config(args.config)
    counts = fetch(config, args.stac, collections=args.collections, bands=tuple(args.bands or DEFAULT_BANDS),
                   margin_m=args.margin_m, progress=None if args.quiet else _fetch_progress)
    _end_status(args)
    print(f"{counts['items']} items over the sites; {counts['windows']} windows: {counts['written']} written, "
          f"{counts['kept']} already there; catalog {config.catalog}")
    return 0


def _status(key: str, text: str, done: int, total: int) -> None:
    """A progress line: rewritten in place on a terminal; elsewhere (a log, a pipe) a plain line at each tenth."""
    if sys.stderr.isatty():
        sys.stderr.write(f"{CLEAR_LINE}{text}")
    else:
        tenth = 10 * done // max(total, 1)
        if _LAST_TENTH.get(key) == tenth:
            return
        _LAST_TENTH[key] = tenth
        sys.stderr.write(f"{text}\n")
    sys.stderr.flush()


_LAST_TENTH: dict[str, int] = {}
CLEAR_LINE = "\r\x1b[K"


def _end_status(args: argparse.Namespace) -> None:
    """Close the progress line a terminal shows (plain lines need nothing)."""
    if not args.quiet and sys.stderr.isatty():
        sys.stderr.write("\n")


def _fetch_progress(written: int, total: int) -> None:
    _status("fetch", f"windows {written}/{total}", written, total)


FAILURES_SHOWN = 5  # failed sites named as they fail; the rest are counted, and summed up by reason at the end
_FAILURES_SEEN = [0]


def _batch_progress(status: BatchStatus) -> None:
    if status.error:
        _FAILURES_SEEN[0] += 1
    if status.error and _FAILURES_SEEN[0] <= FAILURES_SHOWN:
        more = " (further failures are summed up at the end)" if _FAILURES_SEEN[0] == FAILURES_SHOWN else ""
        sys.stderr.write(f"{CLEAR_LINE if sys.stderr.isatty() else ''}{status.unit.removesuffix('s')} "
                         f"{status.site_id} failed: {status.error}"
                         f"{more}\n")
    eta = "" if status.eta_s is None else f", ETA {_duration(status.eta_s)}"
    _status("batch", f"{status.unit} {status.done + status.failed}/{status.total} ({status.failed} failed), "
                     f"{status.rate:.2f} {status.unit}/s{eta}", status.ran, status.to_run)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _epoch_line(epoch: int, row: dict) -> None:
    sys.stderr.write(f"epoch {epoch:3d}  loss {row['loss']:.3f}  validation P {row['precision']:.3f} "
                     f"R {row['recall']:.3f} F1 {row['f1']:.3f} IoU {row['iou']:.3f} AP {row['ap']:.3f}\n")
    sys.stderr.flush()


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    _status("scan", f"scoring [{'#' * filled}{'.' * (width - filled)}] {100 * done // max(total, 1)} %", done, total)
