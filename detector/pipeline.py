"""``detector run``: sites and two dates in; ranked sites, change polygons and a change raster out.

The orchestrator of one run: it opens the dates, plans the zones, calls the
scan and the shared results (:mod:`detector.results`) and stages the
outputs; it owns no arithmetic, and nothing in the package but the CLI imports it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
from rasterio.windows import Window

from detector import __version__
from detector.chips import write_chips
from detector.config import RunConfig
from detector.errors import InputError
from detector.files import file_record, write_json
from detector.imagery import DateSource, Grid, match_bands, open_date, overlap_window, reference_grid
from detector.inference import predictor
from detector.methods import METHODS, load_model
from detector.outputs import NewFolder, ScoreRaster, check_out, write_geojson
from detector.report import render
from detector.results import (
    CANDIDATES,
    KEPT,
    RUN_OUTPUTS,
    STYLES,
    applied_rule,
    apply_budget,
    candidate_changes,
    candidate_results,
    check_labelled,
    chosen_for_chips,
    earlier_reviews,
    results,
    split_verdicts,
    stage_styles,
    user_columns,
    versions,
    with_chip_paths,
)
from detector.reviews import carry_over, read_labels
from detector.scan import Progress, Scored, score_scene
from detector.tiling import intersect, union
from detector.zones import grid_factor, plan_zones

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.weights import LoadedModel

log = logging.getLogger(__name__)


def run(config: RunConfig, *, progress: Progress | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Score every site (or cell) and write the outputs to ``config.out``.

    Returns
    -------
    The ``run.json`` record.
    """
    clock: dict[str, float] = {}
    start = time.perf_counter()
    check_out(config.out, overwrite=config.overwrite, ours=RUN_OUTPUTS)
    before, after = (open_date(getattr(config, d), date=getattr(config, f"{d}_date"),
                               bands=getattr(config, f"{d}_bands"), mask=getattr(config, f"{d}_mask"),
                               keys=(band_key(config, d), f"--{d}-mask"))
                     for d in ("before", "after"))
    check_order(config, before, after)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{config.before} and {config.after} do not overlap: give two dates over the same area")
    zones = plan_zones(config, grid, area)
    scan, review = config.scan, config.review
    model = load_model(scan, names, factor=grid_factor(scan, grid))
    verdicts = earlier_reviews(config.out, review.reviews)
    labelled = read_labels(review.labels) if review.labels else None
    check_labelled(review, zones.frame["site_id"], labelled, verdicts=verdicts is not None)
    clock["plan_s"] = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=2) as side, NewFolder(config.out) as staging:
        before, after = detected_clouds(config, (before, after), grid, staging)
        hashes = side.submit(input_records, config, before, after)
        tic = time.perf_counter()
        scene = score_scene(scan, (before, after), names, grid, zones,
                            lambda: ScoreRaster(staging.path("change.tif"), crs=grid.crs, transform=grid.transform,
                                                area=union([u.core for b in zones.batches for u in b.units])),
                            progress, model, workers=config.workers)
        raster = scene.raster
        try:
            clock["score_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            overviews = side.submit(timed, raster.finish)  # GDAL builds them while the vectors are written
            scored, changes = results(scene.scan, zones, scene.acc, grid, (before, after))
            cell_verdicts, candidate_verdicts = split_verdicts(verdicts) if zones.cell_mode else (verdicts, None)
            sites, kept = carry_over(scored, cell_verdicts)
            sites, threshold = apply_budget(review, scan.rule, sites, labelled)
            found = None
            if zones.cell_mode:  # chips and the report go to the candidates, never one per flagged cell
                sites = with_chip_paths(sites, np.zeros(len(sites), bool))
                found, kept = candidate_results(sites, changes, candidate_verdicts, kept)
                found = with_chip_paths(found, (found["rank"] <= review.chips).to_numpy(dtype=bool))
                write_geojson(found, staging.path(CANDIDATES))
            else:
                sites = with_chip_paths(sites, chosen_for_chips(sites, review.chips))
            reviewed, polygons = (sites, changes) if found is None else (found, candidate_changes(found, changes))
            clock["vectors_s"] = time.perf_counter() - tic
            write_geojson(sites, staging.path("sites.geojson"))
            write_geojson(changes, staging.path("changes.geojson"))
            if len(kept) or (config.out / KEPT).exists():  # an old one must not outlive its verdicts
                write_geojson(kept, staging.path(KEPT))
            clock["geojson_s"] = time.perf_counter() - tic - clock["vectors_s"]
            clock["raster_s"] = overviews.result()
            clock["chips_s"] = timed(lambda: write_site_chips(config, reviewed, polygons, (before, after), names,
                                                              grid, raster.path, staging))
            clock["outputs_s"] = time.perf_counter() - tic
        finally:
            raster.discard()
        clock["total_s"] = time.perf_counter() - start
        record = run_record(config, hashes.result(), names, grid, area, sites, changes, clock, command, model,
                            scene, threshold, found)
        write_json(record, staging.path("run.json"))
        stage_styles(staging, (*STYLES, "candidates.qml") if zones.cell_mode else STYLES)
        staging.path("report.html").write_text(render(reviewed, record, user_columns(reviewed),
                                                      listed=CANDIDATES if found is not None else "sites.geojson"),
                                               encoding="utf-8")
        staging.commit()
    return record


def detected_clouds(config: RunConfig, dates: tuple[DateSource, DateSource], grid: Grid,
                    staging: NewFolder) -> tuple[DateSource, DateSource]:
    """The dates with a cloud mask from ``--cloud-detector`` where they have none, written into the results."""
    if config.cloud_detector == "none":
        return dates
    from detector import clouds

    before, after = (clouds.masked(date, grid, staging.path(f"clouds_{name}.tif"), key="--cloud-detector")
                     for name, date in zip(("before", "after"), dates, strict=True))
    return before, after


def band_key(config: RunConfig, date: str) -> str:
    """The option that named a date's bands, as the user gave it."""
    own = getattr(config, f"{date}_bands")
    other = config.after_bands if date == "before" else config.before_bands
    return "--bands" if own is None or own == other else f"--{date}-bands"


def check_order(config: RunConfig, before: DateSource, after: DateSource) -> None:
    """Refuse a before date that is not before the after date: the change would be read backwards.  A date
    that neither the file nor its option gives leaves the order unchecked: said in a warning."""
    for option, path, date in (("before", config.before, before.date), ("after", config.after, after.date)):
        if not date:
            log.warning("--%s %s has no date (none in its name, tags or product metadata): the order of the "
                        "dates is not checked and the outputs leave it empty; give --%s-date YYYY-MM-DD",
                        option, path, option)
    if before.date and after.date and before.date >= after.date:
        raise InputError(f"--before {config.before} is dated {before.date}, not before --after {config.after} "
                         f"({after.date}): swap them, or correct --before-date / --after-date")


def write_site_chips(config: RunConfig, sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame,
                     dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid, change_tif: Path,
                     staging: NewFolder) -> None:
    """The chips of the sites that have chip paths, into a staged ``chips`` folder."""
    chosen = sites[sites["chip_before"].notna()]
    folder = staging.path("chips")
    folder.mkdir()
    write_chips(chosen, changes, dates, names, grid, change_tif, folder,
                pixel_threshold=config.scan.rule.pixel_threshold)


def timed(work: Callable[[], object]) -> float:
    """Seconds that ``work()`` took."""
    tic = time.perf_counter()
    work()
    return time.perf_counter() - tic


def input_records(config: RunConfig, before: DateSource, after: DateSource) -> dict[str, Any]:
    """Path, size and SHA-256 of every input file."""
    records: dict[str, Any] = {
        name: {"path": str(date.path), "date": date.date, "files": [file_record(f) for f in date.local_files],
               "product": date.product,
               "bands_option": getattr(config, f"{name}_bands"), "bands": date.mapping(),
               "mask": None if date.mask is None else {"file": str(final_path(config, Path(date.mask.path))),
                                                       "kind": date.mask.name}}
        for name, date in (("before", before), ("after", after))
    }
    if config.sites is not None:
        records["sites"] = file_record(config.sites)
    return records


def final_path(config: RunConfig, path: Path) -> Path:
    """Where a file written into the staged results will be once they are in place."""
    return config.out / path.name if path.parent.name.startswith(f".{config.out.name}.") else path


def run_record(config: RunConfig, inputs: dict[str, Any], names: tuple[str, ...], grid: Grid, area: Window,
               sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, clock: dict[str, float],
               command: list[str] | None, model: LoadedModel | None, scene: Scored,
               threshold: dict[str, Any], found: gpd.GeoDataFrame | None = None) -> dict[str, Any]:
    """Everything needed to reproduce and defend the run."""
    return {
        "detector_version": __version__,
        "command": command,
        "mode": "sites" if config.sites is not None else "cells",
        "inputs": inputs,
        "parameters": config.to_json(),
        "threshold": threshold,
        "method": config.scan.method,
        "bin_applied": scene.scan.bin,  # parameters.bin 0: the blocks chosen for the grid's pixel size
        "fusion": METHODS[config.scan.method].rule,
        "fusion_applied": applied_rule(scene),
        "model": None if model is None else {**model.record(),
                                             "backend": predictor(model, config.scan.backend).record()},
        "bands": list(names),
        "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                 "width": grid.width, "height": grid.height,
                 "analysed_window": [int(area.col_off), int(area.row_off), int(area.width), int(area.height)]},
        "counts": {"sites": len(sites), "flagged": int(sites["flagged"].sum()),
                   "no_coverage": int((sites["status"] == "no_coverage").sum()),
                   "cloudy": int((sites["status"] == "cloudy").sum()), "change_polygons": len(changes),
                   "candidates": None if found is None else len(found),
                   "tiles": len(scene.acc.cnn), "cnn_tiles": int(sum(scene.acc.cnn))},
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in clock.items()},
    }


