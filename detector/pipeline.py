"""``detector run``: sites and two dates in; ranked sites, change polygons and a change raster out.

This module reads, calls the pure kernels and writes; it owns no arithmetic.
"""

from __future__ import annotations

import logging
import platform
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window, transform as window_transform

import aoi
from aoi.cells import cell_frame, cell_pixels, pixel_size_m
from detector import __version__
from detector.change import score_tiles
from detector.config import RunConfig
from detector.errors import InputError
from detector.imagery import DateReader, DateSource, Grid, match_bands, open_date, overlap_window, reference_grid
from detector.outputs import ScoreRaster, Staging, file_record, prepare_out, write_geojson, write_json
from detector.scoring import BINS, change_components, site_table, zone_histograms
from detector.tiling import Batch, intersect, pixel_windows, plan_cells, plan_sites, union

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
OUR_FIELDS = ("site_id", "score", "rank", "flagged", "changed_area_m2", "changed_fraction", "valid_fraction",
              "status", "shift_px", "shift_dy_px", "shift_dx_px", "shift_corrected", "before_source",
              "after_source", "before_date", "after_date", "threshold", "method")


@dataclass(frozen=True, slots=True)
class Zones:
    """What is scored: one polygon per site or cell on the analysis grid."""

    frame: gpd.GeoDataFrame  # site_id, user columns, geometry in the grid CRS
    batches: list[Batch]
    cell_mode: bool


@dataclass(frozen=True, slots=True)
class Accumulated:
    """Per-zone results gathered over all batches."""

    hist: np.ndarray  # (Z, BINS + 1)
    shift: np.ndarray  # (Z, 2)
    applied: np.ndarray  # (Z,)
    polygons: list[tuple[int, float, Any]]  # (zone, mean score, shapely geometry in grid CRS)


def run(config: RunConfig, *, progress: Progress | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Score every site (or cell) and write the outputs to ``config.out``.

    Returns
    -------
    The ``run.json`` record.
    """
    clock: dict[str, float] = {}
    start = time.perf_counter()
    prepare_out(config.out, overwrite=config.overwrite)
    before = open_date(config.before, date=config.before_date)
    after = open_date(config.after, date=config.after_date)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{config.before} and {config.after} do not overlap: give two dates over the same area")
    zones = plan_zones(config, grid, area)
    clock["plan_s"] = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=1) as hasher, Staging(config.out) as staging:
        hashes = hasher.submit(input_records, config, before, after)
        tic = time.perf_counter()
        raster = ScoreRaster(staging.path("change.tif"), crs=grid.crs, transform=grid.transform,
                             area=union([u.core for b in zones.batches for u in b.units]))
        try:
            acc = score_zones(config, before, after, names, grid, zones, raster, progress)
            clock["score_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            raster.finish()
        finally:
            raster.discard()
        clock["raster_s"] = time.perf_counter() - tic
        tic = time.perf_counter()
        sites = site_results(config, zones, acc, grid, before, after)
        changes = change_frame(acc.polygons, sites["site_id"].to_numpy(), grid, min_area_m2=config.min_area_m2)
        write_geojson(sites, staging.path("sites.geojson"))
        write_geojson(changes, staging.path("changes.geojson"))
        clock["vectors_s"] = time.perf_counter() - tic
        clock["total_s"] = time.perf_counter() - start
        record = run_record(config, hashes.result(), names, grid, area, sites, changes, clock, command)
        write_json(record, staging.path("run.json"))
        staging.commit()
    return record


def plan_zones(config: RunConfig, grid: Grid, area: Window) -> Zones:
    """Sites from the site file, or cells over the overlap, with their batches of tiles."""
    if config.sites is None:
        return plan_cell_zones(config, grid, area)
    sites = aoi.read_sites(config.sites, buffer_m=config.buffer_m, id_col=config.id_col,
                           lon_col=config.lon_col, lat_col=config.lat_col)
    frame = sites.to_crs(grid.crs)
    rows, cols = pixel_extents(frame.geometry.values, grid)
    windows = pixel_windows(rows, cols, area)
    if all(w is None for w in windows):
        raise InputError(
            f"none of the {len(sites)} sites in {config.sites} overlaps the imagery of both dates: "
            "check the site coordinates or give imagery that covers them"
        )
    batches = plan_sites(windows, margin=config.margin_px, height=grid.height, width=grid.width)
    return Zones(frame, batches, cell_mode=False)


def pixel_extents(geoms: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (min, max) rows and columns of each geometry's bounding box."""
    bounds = shapely.bounds(geoms)
    xs = bounds[:, [0, 2, 2, 0]]
    ys = bounds[:, [1, 1, 3, 3]]
    cols, rows = ~grid.transform @ (xs, ys)
    return np.stack([rows.min(1), rows.max(1)], 1), np.stack([cols.min(1), cols.max(1)], 1)


def plan_cell_zones(config: RunConfig, grid: Grid, area: Window) -> Zones:
    lon, lat = centre_lonlat(grid, area)
    cell_h, cell_w = cell_pixels(config.cell_m, pixel_size_m(grid.crs, grid.transform, lon, lat))
    cells, batches = plan_cells(area, cell_h=cell_h, cell_w=cell_w, tile_px=config.tile_px,
                                margin=config.margin_px, height=grid.height, width=grid.width)
    n_cols = -(-int(area.width) // cell_w)
    frame = cell_frame(cells, (len(cells) // n_cols, n_cols), grid.transform, grid.crs)
    return Zones(frame, batches, cell_mode=True)


def centre_lonlat(grid: Grid, area: Window) -> tuple[float, float]:
    x, y = grid.transform @ (area.col_off + area.width / 2, area.row_off + area.height / 2)
    point = gpd.GeoSeries(gpd.points_from_xy([x], [y]), crs=grid.crs).to_crs(4326).iloc[0]
    return float(point.x), float(point.y)


def read_batches(readers: tuple[DateReader, DateReader], batches: list[Batch]) -> Iterator[tuple[Batch, np.ndarray, np.ndarray]]:
    """Yield each batch with its before and after tiles, reading the next batch meanwhile."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        def load(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
            return cut_tiles(readers[0].read(batch.read), batch), cut_tiles(readers[1].read(batch.read), batch)

        pending: Future | None = pool.submit(load, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            assert pending is not None
            before, after = pending.result()
            pending = pool.submit(load, batches[i + 1]) if i + 1 < len(batches) else None
            yield batch, before, after


def cut_tiles(strip: np.ndarray, batch: Batch) -> np.ndarray:
    """Stack the units of a batch from its strip, NaN-padded to one shape.

    Returns
    -------
    ndarray, shape (N, C, H, W), float32
    """
    h, w = batch.tile_shape
    tiles = np.full((len(batch.units), strip.shape[0], h, w), np.nan, dtype=np.float32)
    for i, unit in enumerate(batch.units):
        r = int(unit.read.row_off - batch.read.row_off)
        c = int(unit.read.col_off - batch.read.col_off)
        tiles[i, :, :int(unit.read.height), :int(unit.read.width)] = strip[:, r:r + int(unit.read.height),
                                                                            c:c + int(unit.read.width)]
    return tiles


def score_zones(config: RunConfig, before: DateSource, after: DateSource, names: tuple[str, ...], grid: Grid,
                zones: Zones, raster: ScoreRaster, progress: Progress | None) -> Accumulated:
    """Run the kernels over every batch and gather histograms, shifts and polygons."""
    count = len(zones.frame)
    acc = Accumulated(np.zeros((count, BINS + 1), np.int64), np.full((count, 2), np.nan),
                      np.zeros(count, bool), [])
    lon, lat = centre_lonlat(grid, Window(0, 0, grid.width, grid.height))
    pixel_m = float(np.mean(pixel_size_m(grid.crs, grid.transform, lon, lat)))
    geoms = zones.frame.geometry.values
    with DateReader(before, names, grid) as rb, DateReader(after, names, grid) as ra, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for done, (batch, b, a) in enumerate(read_batches((rb, ra), zones.batches), start=1):
            tiles = score_tiles(b, a, names, pixel_m=pixel_m, max_shift_px=config.max_shift_px,
                                min_peak=config.min_peak, params=config.params)
            for i, unit in enumerate(batch.units):
                r = int(unit.core.row_off - unit.read.row_off)
                c = int(unit.core.col_off - unit.read.col_off)
                score = tiles.score[i, r:r + int(unit.core.height), c:c + int(unit.core.width)]
                labels = zone_labels(unit.zones, geoms, unit.core, grid)
                gather(acc, unit.zones, labels, score, window_transform(unit.core, grid.transform),
                       pixel_threshold=config.rule.pixel_threshold)
                acc.shift[list(unit.zones)] = tiles.shift[i]
                acc.applied[list(unit.zones)] = tiles.applied[i]
                raster.write(np.where(labels > 0, score, np.nan), unit.core, merge=not zones.cell_mode)
            if progress is not None:
                progress(done, len(zones.batches))
    return acc


def zone_labels(zones: tuple[int, ...], geoms: np.ndarray, core: Window, grid: Grid) -> np.ndarray:
    """Raster of local zone numbers (position in ``zones`` + 1) over ``core``."""
    shapes = [(geoms[z], k + 1) for k, z in enumerate(zones)]
    return features.rasterize(shapes, out_shape=(int(core.height), int(core.width)),
                              transform=window_transform(core, grid.transform), fill=0, dtype="int32")


def gather(acc: Accumulated, zones: tuple[int, ...], labels: np.ndarray, score: np.ndarray, transform: Any, *,
           pixel_threshold: float) -> None:
    """Add one tile's histograms and change polygons to the accumulators."""
    acc.hist[list(zones)] += zone_histograms(score, labels, len(zones))
    components, local_zone, mean = change_components(score, labels, pixel_threshold=pixel_threshold)
    if len(mean) == 0:
        return
    shapes = features.shapes(components, mask=components > 0, transform=transform)
    for geometry, value in shapes:
        k = int(value) - 1
        acc.polygons.append((zones[local_zone[k]], float(mean[k]), shapely.geometry.shape(geometry)))


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
    table["shift_corrected"] = acc.applied
    table["before_source"], table["after_source"] = str(before.path), str(after.path)
    table["before_date"], table["after_date"] = before.date, after.date
    table["threshold"] = config.rule.threshold
    table["method"] = "classical"
    user = frame.drop(columns=[frame.geometry.name, "site_id"])
    user = user.rename(columns={c: f"user_{c}" for c in user.columns if c in OUR_FIELDS})
    out = pd.concat([frame[["site_id"]], table.set_index(frame.index), user], axis=1)
    out = gpd.GeoDataFrame(out, geometry=frame.geometry.values, crs=grid.crs).to_crs(4326)
    return out.sort_values("rank", na_position="last", kind="stable")


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
        "before": {"path": str(before.path), "date": before.date, "files": [file_record(f) for f in before.files]},
        "after": {"path": str(after.path), "date": after.date, "files": [file_record(f) for f in after.files]},
    }
    if config.sites is not None:
        records["sites"] = file_record(config.sites)
    return records


def run_record(config: RunConfig, inputs: dict[str, Any], names: tuple[str, ...], grid: Grid, area: Window,
               sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, clock: dict[str, float],
               command: list[str] | None) -> dict[str, Any]:
    """Everything needed to reproduce and defend the run."""
    return {
        "detector_version": __version__,
        "command": command,
        "mode": "sites" if config.sites is not None else "cells",
        "inputs": inputs,
        "parameters": config.to_json(),
        "threshold": {
            "value": config.rule.threshold,
            "rule": (f"flagged = score >= {config.rule.threshold} and valid_fraction >= {config.rule.min_valid}; "
                     f"score = {config.rule.quantile:g} quantile of the site's pixel scores; "
                     f"a pixel is changed at score >= {config.rule.pixel_threshold}"),
        },
        "bands": list(names),
        "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6],
                 "width": grid.width, "height": grid.height,
                 "analysed_window": [int(area.col_off), int(area.row_off), int(area.width), int(area.height)]},
        "counts": {"sites": len(sites), "flagged": int(sites["flagged"].sum()),
                   "no_coverage": int((sites["status"] == "no_coverage").sum()), "change_polygons": len(changes)},
        "versions": versions(),
        "timings_s": {k: round(v, 3) for k, v in clock.items()},
    }


def versions() -> dict[str, str]:
    """Versions of Python, GDAL and the packages that shape the numbers."""
    found = {"python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for name in ("numpy", "scipy", "rasterio", "geopandas", "shapely", "pyproj", "pyogrio", "scikit-image"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found
