"""``detector run``: sites and two dates in; ranked sites, change polygons and a change raster out.

This module reads, calls the pure kernels and writes; it owns no arithmetic.
"""

from __future__ import annotations

import logging
import os
import platform
import queue
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

import aoi
from aoi.cells import cell_frame, cell_pixels, pixel_size_m
from detector import __version__
from detector.binning import bin_any, bin_mean, unbin
from detector.change import score_tiles
from detector.config import RunConfig
from detector.errors import InputError
from detector.imagery import DateReader, DateSource, Grid, match_bands, open_date, overlap_window, reference_grid
from detector.outputs import ScoreRaster, Staging, check_out, file_record, write_geojson, write_json
from detector.scoring import BINS, change_components, site_table, zone_histograms
from detector.tiling import Batch, Unit, intersect, pixel_windows, plan_cells, plan_sites, union

log = logging.getLogger(__name__)

# GDAL's block cache: about three rows of 512-px blocks of two 4-band uint16
# Sentinel-2 tiles, so neighbouring tiles never decode a block twice.
CACHE_MB = 300

Progress = Callable[[int, int], None]
Raw = tuple[np.ndarray, np.ndarray]  # a read window in the file's type, and its nodata mask
OUR_FIELDS = ("site_id", "score", "rank", "flagged", "changed_area_m2", "changed_fraction", "valid_fraction",
              "status", "shift_px", "shift_dy_px", "shift_dx_px", "shift_peak", "shift_corrected", "before_source",
              "after_source", "before_date", "after_date", "threshold", "method")


@dataclass(frozen=True, slots=True)
class Zones:
    """What is scored: one polygon per site or cell on the analysis grid.

    Cells also keep their pixel windows (``windows``), which label a tile by
    filling rectangles instead of rasterizing polygons; sites have none.
    """

    frame: gpd.GeoDataFrame  # site_id, user columns, geometry in the grid CRS
    batches: list[Batch]
    windows: list[Window] | None = None

    @property
    def cell_mode(self) -> bool:
        return self.windows is not None

    def labels(self, zones: tuple[int, ...], core: Window, transform: Any) -> np.ndarray:
        """Raster of local zone numbers (position in ``zones`` + 1) over ``core``, 0 outside."""
        shape = (int(core.height), int(core.width))
        if self.windows is None:
            geoms = self.frame.geometry.values
            return features.rasterize([(geoms[z], k + 1) for k, z in enumerate(zones)], out_shape=shape,
                                      transform=transform, fill=0, dtype="int32")
        labels = np.zeros(shape, dtype=np.int32)
        for k, z in enumerate(zones):
            w = self.windows[z]
            r, c = int(w.row_off - core.row_off), int(w.col_off - core.col_off)
            labels[max(r, 0):r + int(w.height), max(c, 0):c + int(w.width)] = k + 1
        return labels


@dataclass(frozen=True, slots=True)
class Accumulated:
    """Per-zone results gathered over all batches."""

    hist: np.ndarray  # (Z, BINS + 1)
    shift: np.ndarray  # (Z, 2)
    peak: np.ndarray  # (Z,) phase-correlation peak contrast of the shift estimate
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
    check_out(config.out, overwrite=config.overwrite)
    before = open_date(config.before, date=config.before_date)
    after = open_date(config.after, date=config.after_date)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{config.before} and {config.after} do not overlap: give two dates over the same area")
    zones = plan_zones(config, grid, area)
    clock["plan_s"] = time.perf_counter() - start
    with ThreadPoolExecutor(max_workers=2) as side, Staging(config.out) as staging:
        hashes = side.submit(input_records, config, before, after)
        tic = time.perf_counter()
        raster = ScoreRaster(staging.path("change.tif"), crs=grid.crs, transform=grid.transform,
                             area=union([u.core for b in zones.batches for u in b.units]))
        try:
            acc = score_zones(config, (before, after), names, grid, zones, raster, progress)
            clock["score_s"] = time.perf_counter() - tic
            tic = time.perf_counter()
            cog = side.submit(timed, raster.finish)  # GDAL compresses while the vectors are written
            sites = site_results(config, zones, acc, grid, before, after)
            changes = change_frame(acc.polygons, sites["site_id"].to_numpy(), grid, min_area_m2=config.min_area_m2)
            clock["vectors_s"] = time.perf_counter() - tic
            write_geojson(sites, staging.path("sites.geojson"))
            write_geojson(changes, staging.path("changes.geojson"))
            clock["geojson_s"] = time.perf_counter() - tic - clock["vectors_s"]
            clock["raster_s"] = cog.result()
            clock["outputs_s"] = time.perf_counter() - tic
        finally:
            raster.discard()
        clock["total_s"] = time.perf_counter() - start
        record = run_record(config, hashes.result(), names, grid, area, sites, changes, clock, command)
        write_json(record, staging.path("run.json"))
        staging.commit()
    return record


def timed(work: Callable[[], object]) -> float:
    """Seconds that ``work()`` took."""
    tic = time.perf_counter()
    work()
    return time.perf_counter() - tic


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
    return Zones(frame, batches)


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
    return Zones(frame, batches, windows=cells)


def centre_lonlat(grid: Grid, area: Window) -> tuple[float, float]:
    x, y = grid.transform @ (area.col_off + area.width / 2, area.row_off + area.height / 2)
    point = gpd.GeoSeries(gpd.points_from_xy([x], [y]), crs=grid.crs).to_crs(4326).iloc[0]
    return float(point.x), float(point.y)


@dataclass(frozen=True, slots=True)
class UnitResult:
    """What one tile adds to the run: its zones' histograms, shift, polygons and scores."""

    unit: Unit
    hist: np.ndarray  # (len(unit.zones), BINS + 1)
    shift: np.ndarray  # (2,)
    peak: float
    applied: bool
    polygons: list[tuple[int, float, Any]]  # (zone, mean score, geometry in the grid CRS)
    score: np.ndarray  # (H, W) over unit.core, NaN outside the zones


class BatchScorer:
    """Scores batches of tiles already read; safe to call from several threads.

    The kernels run on tiles block-averaged by ``config.bin``; their scores are
    repeated back onto the analysis grid, where zones, areas, polygons and the
    change raster are measured.  Shifts are reported in grid pixels.
    """

    def __init__(self, config: RunConfig, names: tuple[str, ...], grid: Grid, zones: Zones) -> None:
        self.config, self.names, self.grid, self.zones = config, names, grid, zones
        lon, lat = centre_lonlat(grid, Window(0, 0, grid.width, grid.height))
        self.pixel_m = float(np.mean(pixel_size_m(grid.crs, grid.transform, lon, lat)))

    def __call__(self, batch: Batch, before: Raw, after: Raw) -> list[UnitResult]:
        factor = self.config.bin
        tiles = score_tiles(cut_tiles(*before, batch, factor=factor), cut_tiles(*after, batch, factor=factor),
                            self.names, pixel_m=self.pixel_m * factor,
                            max_shift_px=self.config.max_shift_px / factor, min_peak=self.config.min_peak,
                            params=self.config.params)
        return [self.unit_result(unit, tiles.score[i], tiles.shift[i] * factor, float(tiles.peak[i]),
                                 bool(tiles.applied[i]))
                for i, unit in enumerate(batch.units)]

    def unit_result(self, unit: Unit, tile_score: np.ndarray, shift: np.ndarray, peak: float,
                    applied: bool) -> UnitResult:
        r = int(unit.core.row_off - unit.read.row_off)
        c = int(unit.core.col_off - unit.read.col_off)
        full = unbin(tile_score, self.config.bin, (int(unit.read.height), int(unit.read.width)))
        score = full[r:r + int(unit.core.height), c:c + int(unit.core.width)]
        transform = window_transform(unit.core, self.grid.transform)
        labels = self.zones.labels(unit.zones, unit.core, transform)
        hist = zone_histograms(score, labels, len(unit.zones))
        polygons = change_polygons(score, labels, unit.zones, transform,
                                   pixel_threshold=self.config.rule.pixel_threshold)
        return UnitResult(unit, hist, shift, peak, applied, polygons,
                          np.where(labels > 0, score, np.float32(np.nan)))


def read_in_background(dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                       batches: list[Batch], *, depth: int) -> Iterator[tuple[Batch, Raw, Raw]]:
    """Yield each batch with the raw before and after windows, read in order by one background thread.

    One thread keeps the files open, so blocks shared by neighbouring batches
    come from GDAL's cache (``CACHE_MB``) instead of being decoded twice, and
    GDAL decodes the blocks of a window with all cores.  At most ``depth``
    batches wait.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=CACHE_MB * 2**20), \
                    DateReader(dates[0], names, grid) as first, \
                    DateReader(dates[1], names, grid) as second:
                for batch in batches:
                    if stop.is_set():
                        return
                    items.put((batch, first.read_raw(batch.read), second.read_raw(batch.read)))
        except BaseException as exc:  # handed to the consumer, which raises it
            items.put(exc)
        finally:
            items.put(None)

    thread = threading.Thread(target=produce, name="detector-reader", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def cut_tiles(raw: np.ndarray, invalid: np.ndarray, batch: Batch, *, factor: int) -> np.ndarray:
    """Cut the units of a batch out of its read window, block-averaged by ``factor``.

    Parameters
    ----------
    raw : ndarray, shape (C, H, W): the batch's read window, in the file's type
    invalid : ndarray, shape (H, W), bool: its nodata mask

    Returns
    -------
    ndarray, shape (N, C, h // factor, w // factor), float32, NaN = nodata,
    each unit NaN-padded to the batch's tile shape (h, w).
    """
    h, w = (n // factor for n in batch.tile_shape)
    tiles = np.full((len(batch.units), raw.shape[0], h, w), np.nan, dtype=np.float32)
    for i, unit in enumerate(batch.units):
        r = int(unit.read.row_off - batch.read.row_off)
        c = int(unit.read.col_off - batch.read.col_off)
        rows, cols = slice(r, r + int(unit.read.height)), slice(c, c + int(unit.read.width))
        binned = bin_mean(raw[:, rows, cols], factor)
        holes = bin_any(invalid[rows, cols], factor)
        if holes.any():
            binned[:, holes] = np.nan
        tiles[i, :, :binned.shape[1], :binned.shape[2]] = binned
    return tiles


def score_zones(config: RunConfig, dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                zones: Zones, raster: ScoreRaster, progress: Progress | None) -> Accumulated:
    """Score every batch (read in the background, scored by worker threads) and gather the results."""
    count = len(zones.frame)
    acc = Accumulated(np.zeros((count, BINS + 1), np.int64), np.full((count, 2), np.nan),
                      np.full(count, np.nan), np.zeros(count, bool), [])
    scorer = BatchScorer(config, names, grid, zones)
    workers = config.workers or os.cpu_count() or 1
    done = 0

    def gather(results: list[UnitResult]) -> None:
        nonlocal done
        for result in results:
            picks = list(result.unit.zones)
            acc.hist[picks] += result.hist
            acc.shift[picks] = result.shift
            acc.peak[picks] = result.peak
            acc.applied[picks] = result.applied
            acc.polygons.extend(result.polygons)
            raster.write(result.score, result.unit.core, merge=not zones.cell_mode)
        done += 1
        if progress is not None:
            progress(done, len(zones.batches))

    with ThreadPoolExecutor(max_workers=workers) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        pending: deque[Future] = deque()
        for batch, before, after in read_in_background(dates, names, grid, zones.batches, depth=workers):
            pending.append(pool.submit(scorer, batch, before, after))
            while len(pending) > workers:
                gather(pending.popleft().result())
        while pending:
            gather(pending.popleft().result())
    return acc


def change_polygons(score: np.ndarray, labels: np.ndarray, zones: tuple[int, ...], transform: Any, *,
                    pixel_threshold: float) -> list[tuple[int, float, Any]]:
    """Changed regions of one tile as (zone, mean score, polygon in the grid CRS)."""
    components, local_zone, mean = change_components(score, labels, pixel_threshold=pixel_threshold)
    if len(mean) == 0:
        return []
    shapes = features.shapes(components, mask=components > 0, transform=transform)
    return [(zones[local_zone[int(value) - 1]], float(mean[int(value) - 1]), shapely.geometry.shape(geometry))
            for geometry, value in shapes]


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
