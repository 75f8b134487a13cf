"""``detector run``: sites and two dates in; ranked sites, change polygons and a change raster out.

This module reads, calls the scan and writes; it owns no arithmetic.
"""

from __future__ import annotations

import functools
import logging
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata, resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio.windows import Window

from aoi.cells import pixel_size_m
from detector import __version__, fusion
from detector.chips import chip_key, write_chips
from detector.config import RunConfig, default_model_path
from detector.errors import InputError
from detector.imagery import DateSource, Grid, match_bands, open_date, overlap_window, reference_grid
from detector.outputs import ScoreRaster, Staging, check_out, file_record, write_geojson, write_json
from detector.report import render
from detector.reviews import FIELDS as REVIEW_FIELDS
from detector.reviews import carry_over, labels, read_labels, read_reviews
from detector.scan import Accumulated, Progress, score_zones
from detector.scoring import ScoreRule, site_table, threshold_for_max_flags, threshold_for_precision
from detector.tiling import intersect, union
from detector.zones import Zones, plan_zones

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.weights import LoadedModel

log = logging.getLogger(__name__)

OUR_FIELDS = ("site_id", "score", "rank", "flagged", "changed_area_m2", "changed_fraction", "valid_fraction",
              "status", "shift_px", "shift_dy_px", "shift_dx_px", "shift_peak", "shift_corrected", "before_source",
              "after_source", "before_date", "after_date", "threshold", "method", *REVIEW_FIELDS,
              "chip_before", "chip_after", "chip_change")
KEPT = "reviews-kept.geojson"  # reviewed sites that a later run did not score
STYLES = ("sites.qml", "changes.qml", "change.qml")  # made by scripts/make_styles.py


def run(config: RunConfig, *, progress: Progress | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Score every site (or cell) and write the outputs to ``config.out``.

    Returns
    -------
    The ``run.json`` record.
    """
    clock: dict[str, float] = {}
    start = time.perf_counter()
    check_out(config.out, overwrite=config.overwrite)
    before = open_date(config.before, date=config.before_date)
    after = open_date(config.after, date=config.after_date)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{config.before} and {config.after} do not overlap: give two dates over the same area")
    zones = plan_zones(config, grid, area)
    model = load_model(config, names)
    verdicts = earlier_reviews(config)
    labelled = read_labels(config.labels) if config.labels else None
    clock["plan_s"] = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=2) as side, Staging(config.out) as staging:
        hashes = side.submit(input_records, config, before, after)
        tic = time.perf_counter()
        raster = ScoreRaster(staging.path("change.tif"), crs=grid.crs, transform=grid.transform,
                             area=union([u.core for b in zones.batches for u in b.units]))
        try:
            acc = score_zones(config, (before, after), names, grid, zones, raster, progress, model)
            clock["score_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            overviews = side.submit(timed, raster.finish)  # GDAL builds them while the vectors are written
            scored, changes = results(config, zones, acc, grid, (before, after))
            sites, kept = carry_over(scored, verdicts)
            sites, threshold = apply_budget(config, sites, labelled)
            sites = with_chip_paths(sites, chosen_for_chips(sites, config.chips))
            clock["vectors_s"] = time.perf_counter() - tic
            write_geojson(sites, staging.path("sites.geojson"))
            write_geojson(changes, staging.path("changes.geojson"))
            if len(kept) or (config.out / KEPT).exists():  # an old one must not outlive its verdicts
                write_geojson(kept, staging.path(KEPT))
            clock["geojson_s"] = time.perf_counter() - tic - clock["vectors_s"]
            clock["raster_s"] = overviews.result()
            clock["chips_s"] = timed(lambda: write_site_chips(config, sites, changes, (before, after), names, grid,
                                                              raster.path, staging))
            clock["outputs_s"] = time.perf_counter() - tic
        finally:
            raster.discard()
        clock["total_s"] = time.perf_counter() - start
        record = run_record(config, hashes.result(), names, grid, area, sites, changes, clock, command, model,
                            acc.cnn)
        record["threshold"].update(threshold)
        write_json(record, staging.path("run.json"))
        stage_styles(staging, STYLES)
        staging.path("report.html").write_text(render(sites, record, user_columns(sites)), encoding="utf-8")
        staging.commit()
    return record


def user_columns(sites: gpd.GeoDataFrame, more_fields: tuple[str, ...] = ()) -> list[str]:
    """The columns that came with the user's sites: not ours (nor ``more_fields``), not the geometry."""
    ours = {*OUR_FIELDS, *more_fields, sites.geometry.name}
    return [c for c in sites.columns if c not in ours]


def stage_styles(staging: Staging, names: tuple[str, ...]) -> None:
    """The QGIS styles: QGIS loads a same-named .qml beside a layer on its own."""
    for name in names:
        staging.path(name).write_bytes((resources.files("detector") / "styles" / name).read_bytes())


def chosen_for_chips(sites: gpd.GeoDataFrame, top: int) -> np.ndarray:
    """Sites that get chips: every flagged one and the ``top`` best ranked, where there is data."""
    ranked = pd.to_numeric(sites["rank"], errors="coerce").to_numpy(dtype=float)
    return ((sites["flagged"].to_numpy() | (ranked <= top)) & (sites["status"] != "no_coverage").to_numpy())


def with_chip_paths(sites: gpd.GeoDataFrame, chosen: np.ndarray) -> gpd.GeoDataFrame:
    """``chip_before``, ``chip_after``, ``chip_change``: paths relative to ``--out``, None without chips."""
    out = sites.copy()
    keys = [chip_key(r, i) if pick else None for r, i, pick in zip(out["rank"], out["site_id"], chosen, strict=True)]
    for kind in ("before", "after", "change"):
        out[f"chip_{kind}"] = [f"chips/{k}_{kind}.png" if k else None for k in keys]
    return out


def write_site_chips(config: RunConfig, sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame,
                     dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid, change_tif: Path,
                     staging: Staging) -> None:
    """The chips of the sites that have chip paths, into a staged ``chips`` folder."""
    chosen = sites[sites["chip_before"].notna()]
    folder = staging.path("chips")
    folder.mkdir()
    write_chips(chosen, changes, dates, names, grid, change_tif, folder,
                pixel_threshold=config.rule.pixel_threshold)


def earlier_reviews(config: RunConfig) -> gpd.GeoDataFrame | None:
    """Verdicts to carry over: those in ``--out`` (kept reviews, then its sites), then ``--reviews``; later win."""
    sources = [config.out / KEPT, config.out / "sites.geojson", config.reviews]
    found = [read_reviews(path).to_crs(4326) for path in sources if path is not None and path.is_file()]
    if config.reviews is not None and not config.reviews.is_file():
        read_reviews(config.reviews)  # the one-line error for a missing file
    if not found:
        return None
    return gpd.GeoDataFrame(pd.concat(found, ignore_index=True), crs=4326)


def apply_budget(config: RunConfig, sites: gpd.GeoDataFrame,
                 labelled: pd.Series | None) -> tuple[gpd.GeoDataFrame, dict[str, Any]]:
    """Raise the threshold for ``--max-flags`` or ``--target-precision`` (else ``--threshold``); flag the sites
    again, so flags an earlier budget set do not outlive it.

    Returns the sites and what ``run.json`` says of the threshold.
    """
    rule = config.rule
    score = sites["score"].to_numpy(dtype=float)
    eligible = (sites["status"] == "ok").to_numpy()  # with data, at least min_valid of it (scoring.site_table)
    note: dict[str, Any] = {"chosen_by": "--threshold"}
    value = rule.threshold
    if config.max_flags is not None:
        value = threshold_for_max_flags(score, eligible, config.max_flags, floor=rule.threshold)
        note = {"chosen_by": f"--max-flags {config.max_flags}"}
    elif config.target_precision is not None:
        value, note = threshold_for_target(config, sites, labelled)
    out = sites.copy()
    out["flagged"] = eligible & (np.nan_to_num(score) >= value)
    out["threshold"] = value
    return out, {"value": value, "rule": flag_rule(rule, value), **note}


def flag_rule(rule: ScoreRule, threshold: float) -> str:
    """The flagging rule in words, for ``run.json``, ``batch.json`` and the report."""
    return (f"flagged = score >= {threshold} and valid_fraction >= {rule.min_valid}; score = {rule.quantile:g} "
            f"quantile of the site's pixel scores; a pixel is changed at score >= {rule.pixel_threshold}")


def threshold_for_target(config: RunConfig, sites: gpd.GeoDataFrame,
                         labelled: pd.Series | None) -> tuple[float, dict[str, Any]]:
    """The threshold of ``--target-precision`` on the labelled sites (``--labels``, else the carried verdicts)."""
    source = str(config.labels) if labelled is not None else "the carried-over review_status"
    if labelled is not None:
        truth = sites["site_id"].astype(str).map(labelled).to_numpy(dtype=float)
    else:
        truth = labels(sites["review_status"])
    target = float(config.target_precision or 1.0)
    choice = threshold_for_precision(sites["score"].to_numpy(dtype=float), truth, target)
    if choice is None:
        raise InputError(f"no threshold reaches precision {target} on the {int(np.isfinite(truth).sum())} labelled "
                         f"sites of {source}: lower --target-precision or label more sites")
    value, precision, recall = choice
    return value, {"chosen_by": f"--target-precision {target}", "labels": source,
                   "labelled_sites": int(np.isfinite(truth).sum()),
                   "precision": round(precision, 4), "recall": round(recall, 4)}


def load_model(config: RunConfig, names: tuple[str, ...]) -> LoadedModel | None:
    """The CNN of ``config.model`` (default: the shipped weights), checked against the imagery; None for classical."""
    if config.method == "classical":
        return None

    path = model_path(config)
    stat = path.stat() if path.is_file() else None
    model = _weights(str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0)
    model.check_bands(names)
    model.check_tile(config.tile_px // config.bin)
    return model


def model_path(config: RunConfig) -> Path:
    """``--model``, else the shipped weights."""
    return Path(config.model or default_model_path())


@functools.lru_cache(maxsize=2)
def _weights(path: str, mtime_ns: int, size: int) -> LoadedModel:
    """A model file read once per process (a batch worker scores many sites); a changed file is read again."""
    from detector import weights

    return weights.load(Path(path))


def timed(work: Callable[[], object]) -> float:
    """Seconds that ``work()`` took."""
    tic = time.perf_counter()
    work()
    return time.perf_counter() - tic


def site_results(config: RunConfig, zones: Zones, acc: Accumulated, grid: Grid, before: DateSource,
                 after: DateSource) -> gpd.GeoDataFrame:
    """One row per zone: the user's columns, the scores, the provenance; EPSG:4326."""
    frame = zones.frame
    geoms = frame.geometry.values
    centroids = gpd.GeoSeries(shapely.centroid(geoms), crs=grid.crs).to_crs(4326)
    pixel_h, pixel_w = pixel_size_m(grid.crs, grid.transform, centroids.x.to_numpy(), centroids.y.to_numpy())
    expected = shapely.area(geoms) / abs(grid.transform.determinant)
    table = site_table(acc.hist, expected, np.asarray(pixel_h) * np.asarray(pixel_w), rule=config.rule)
    shift = np.round(acc.shift, 2)
    table["shift_px"] = np.round(np.hypot(shift[:, 0], shift[:, 1]), 2)
    table["shift_dy_px"], table["shift_dx_px"] = shift[:, 0], shift[:, 1]
    table["shift_peak"] = np.round(acc.peak, 1)
    table["shift_corrected"] = acc.applied
    table["before_source"], table["after_source"] = str(before.path), str(after.path)
    table["before_date"], table["after_date"] = before.date, after.date
    table["threshold"] = config.rule.threshold
    table["method"] = config.method
    user = frame.drop(columns=[frame.geometry.name, "site_id"])
    ours = {f.lower() for f in OUR_FIELDS}  # GeoPackage (SQLite) column names ignore case
    user = user.rename(columns={c: f"user_{c}" for c in user.columns if str(c).lower() in ours})
    out = pd.concat([frame[["site_id"]], table.set_index(frame.index), user], axis=1)
    out = gpd.GeoDataFrame(out, geometry=frame.geometry.values, crs=grid.crs).to_crs(4326)
    return out.sort_values("rank", na_position="last", kind="stable")


def results(config: RunConfig, zones: Zones, acc: Accumulated, grid: Grid,
            dates: tuple[DateSource, DateSource]) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The ranked sites and their change polygons, both in EPSG:4326."""
    sites = site_results(config, zones, acc, grid, *dates)
    # polygons carry zone numbers: map them with the zones' order, not the ranked sites'
    changes = change_frame(acc.polygons, zones.frame["site_id"].astype(str).to_numpy(), grid,
                           min_area_m2=config.min_area_m2)
    return sites, changes


def change_frame(polygons: list[tuple[int, float, Any]], site_ids: np.ndarray, grid: Grid, *,
                 min_area_m2: float) -> gpd.GeoDataFrame:
    """Change polygons with site id, area in m2 and mean score; small ones dropped."""
    zone = np.array([p[0] for p in polygons], dtype=np.int64)
    frame = gpd.GeoDataFrame({"site_id": site_ids[zone] if len(zone) else np.array([], dtype=object),
                              "score": np.round([p[1] for p in polygons], 4)},
                             geometry=[p[2] for p in polygons], crs=grid.crs)
    if frame.empty:
        frame["area_m2"] = np.zeros(0)
        return frame.to_crs(4326)
    metric = frame.to_crs(frame.estimate_utm_crs())
    frame["area_m2"] = np.round(metric.area.to_numpy(), 1)
    frame = frame[frame["area_m2"] >= min_area_m2]
    return frame.sort_values(["site_id", "area_m2"], ascending=[True, False]).to_crs(4326)


def input_records(config: RunConfig, before: DateSource, after: DateSource) -> dict[str, Any]:
    """Path, size and SHA-256 of every input file."""
    records: dict[str, Any] = {
        name: {"path": str(date.path), "date": date.date, "files": [file_record(Path(f)) for f in date.files]}
        for name, date in (("before", before), ("after", after))
    }
    if config.sites is not None:
        records["sites"] = file_record(config.sites)
    return records


def run_record(config: RunConfig, inputs: dict[str, Any], names: tuple[str, ...], grid: Grid, area: Window,
               sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, clock: dict[str, float],
               command: list[str] | None, model: LoadedModel | None = None,
               cnn_tiles: list[bool] | None = None) -> dict[str, Any]:
    """Everything needed to reproduce and defend the run."""
    return {
        "detector_version": __version__,
        "command": command,
        "mode": "sites" if config.sites is not None else "cells",
        "inputs": inputs,
        "parameters": config.to_json(),
        "threshold": {"value": config.rule.threshold, "rule": flag_rule(config.rule, config.rule.threshold)},
        "method": config.method,
        "fusion": fusion.RULE if config.method == "fused" else None,
        "model": model.record() if model is not None else None,
        "bands": list(names),
        "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                 "width": grid.width, "height": grid.height,
                 "analysed_window": [int(area.col_off), int(area.row_off), int(area.width), int(area.height)]},
        "counts": {"sites": len(sites), "flagged": int(sites["flagged"].sum()),
                   "no_coverage": int((sites["status"] == "no_coverage").sum()), "change_polygons": len(changes),
                   "tiles": len(cnn_tiles or []), "cnn_tiles": int(sum(cnn_tiles or []))},
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in clock.items()},
    }


def versions() -> dict[str, str]:
    """Versions of Python, GDAL and the packages that shape the numbers."""
    found = {"python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for name in ("numpy", "scipy", "rasterio", "geopandas", "shapely", "pyproj", "pyogrio", "scikit-image", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found
