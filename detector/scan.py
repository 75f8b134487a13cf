"""The scan: tiles read in the background, scored by worker threads, gathered per zone."""

from __future__ import annotations

import functools
import logging
import os
import queue
import threading
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from aoi.cells import pixel_size_m
from detector import fusion
from detector.adapter import adapt
from detector.binning import bin_any, bin_mean, unbin
from detector.change import score_tiles
from detector.config import ScanOptions
from detector.imagery import DateReader, DateSource, Grid, RawWindow
from detector.inference import predictor
from detector.methods import METHODS
from detector.outputs import ScoreRaster
from detector.scoring import BINS, change_components, zone_histograms
from detector.tiling import Batch, Unit
from detector.zones import Zones, centre_lonlat

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.weights import LoadedModel

log = logging.getLogger(__name__)

# GDAL's block cache: about three rows of 512-px blocks of two 4-band uint16
# Sentinel-2 tiles, so neighbouring tiles never decode a block twice.
CACHE_MB = 300

Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Accumulated:
    """Per-zone results gathered over all batches."""

    hist: np.ndarray  # (Z, BINS + 1)
    shift: np.ndarray  # (Z, 2)
    peak: np.ndarray  # (Z,) phase-correlation peak contrast of the shift estimate
    applied: np.ndarray  # (Z,)
    polygons: list[tuple[int, float, Any]]  # (zone, mean score, shapely geometry in grid CRS)
    cnn: list[bool]  # per tile scored: whether the CNN ran on it
    agreement: np.ndarray  # (2,): classically changed pixels, and of those where the CNN agrees (fusion)
    obscured: np.ndarray  # (Z,) pixels of each zone obscured (cloud, shadow, snow) in either date


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
    cnn: bool  # the CNN ran on this tile
    agreement: np.ndarray  # (2,) :func:`detector.fusion.agreement_counts` of the tile's read window
    obscured: np.ndarray  # (len(unit.zones),) pixels of each zone obscured in either date


class BatchScorer:
    """Scores batches of tiles already read; safe to call from several threads.

    The kernels run on tiles block-averaged by ``scan.bin``; their scores are
    repeated back onto the analysis grid, where zones, areas, polygons and the
    change raster are measured.  Shifts are reported in grid pixels.
    """

    def __init__(self, scan: ScanOptions, names: tuple[str, ...], grid: Grid, zones: Zones,
                 model: LoadedModel | None = None) -> None:
        self.scan, self.names, self.grid, self.zones, self.model = scan, names, grid, zones, model
        lon, lat = centre_lonlat(grid, Window(0, 0, grid.width, grid.height))
        self.pixel_m = float(np.mean(pixel_size_m(grid.crs, grid.transform, lon, lat)))

    def __call__(self, batch: Batch, before: RawWindow, after: RawWindow) -> list[UnitResult]:
        factor = self.scan.bin
        first = cut_tiles(before, batch, factor=factor)
        obscured = before.obscured | after.obscured
        tiles = score_tiles(first, cut_tiles(after, batch, factor=factor),
                            self.names, pixel_m=self.pixel_m * factor,
                            max_shift_px=self.scan.max_shift_px / factor, min_peak=self.scan.min_peak,
                            params=self.scan.params)
        score, cnn, agreement = method_score(self.scan, self.model, self.names, tiles.score, first, tiles.after,
                                             pixel_m=self.pixel_m * factor)
        return [self.unit_result(unit, score[i], tiles.shift[i] * factor, float(tiles.peak[i]),
                                 bool(tiles.applied[i]), bool(cnn[i]), agreement[i],
                                 obscured[core_slices(unit.core, batch.read)])
                for i, unit in enumerate(batch.units)]

    def unit_result(self, unit: Unit, tile_score: np.ndarray, shift: np.ndarray, peak: float,
                    applied: bool, cnn: bool, agreement: np.ndarray, obscured: np.ndarray) -> UnitResult:
        full = unbin(tile_score, self.scan.bin, (int(unit.read.height), int(unit.read.width)))
        score = full[core_slices(unit.core, unit.read)]
        transform = window_transform(unit.core, self.grid.transform)
        labels = self.zones.labels(unit.zones, unit.core, transform)
        hist = zone_histograms(score, labels, len(unit.zones))
        polygons = change_polygons(score, labels, unit.zones, transform,
                                   pixel_threshold=self.scan.rule.pixel_threshold)
        cloud = np.bincount(labels[obscured], minlength=len(unit.zones) + 1)[1:]
        return UnitResult(unit, hist, shift, peak, applied, polygons,
                          np.where(labels > 0, score, np.float32(np.nan)), cnn, agreement, cloud)


def core_slices(core: Window, read: Window) -> tuple[slice, slice]:
    """Rows and columns of ``core`` within the window ``read`` that holds it."""
    r, c = int(core.row_off - read.row_off), int(core.col_off - read.col_off)
    return slice(r, r + int(core.height)), slice(c, c + int(core.width))


def method_score(scan: ScanOptions, model: LoadedModel | None, names: tuple[str, ...], classical: np.ndarray,
                 before: np.ndarray, after: np.ndarray, *, pixel_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The score of ``scan.method`` from the classical score and the (registered) tiles.

    Shapes: classical (N, H, W); before, after (N, C, H, W).  Returns the
    score (N, H, W), which tiles the CNN ran on (N,) and each tile's
    agreement counts (N, 2) for the domain check (zeros where no CNN
    ran).  See :mod:`detector.methods` and :mod:`detector.fusion`.
    """
    method = METHODS[scan.method]
    rule = scan.rule
    pick = method.cnn_tiles(classical, min(rule.pixel_threshold, rule.threshold))
    cnn = np.zeros_like(classical)
    agreement = np.zeros((len(classical), 2), np.int64)
    if pick.any():
        if model is None:
            raise ValueError(f"method {method.name} needs a model")
        evidence = classical[pick][:, None] if model.evidence else None  # EVIDENCE: the classical score
        cnn[pick] = predictor(model, scan.backend)(adapt(before[pick], after[pick], names, evidence=evidence))
    cnn[np.isnan(classical)] = np.nan
    near = fusion.near(cnn, reach=fusion.reach_px(pixel_m)) if pick.any() else cnn  # once, for both uses
    if pick.any():
        agreement[pick] = fusion.agreement_counts(classical[pick], near[pick], pixel_threshold=rule.pixel_threshold)
    return method.combine(classical, cnn, near), pick, agreement


def read_in_background(dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                       batches: list[Batch], *, depth: int) -> Iterator[tuple[Batch, RawWindow, RawWindow]]:
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


def cut_tiles(raw: RawWindow, batch: Batch, *, factor: int) -> np.ndarray:
    """Cut the units of a batch out of its read window (:class:`RawWindow`), block-averaged by ``factor``,
    in physical units.

    Returns
    -------
    ndarray, shape (N, C, h // factor, w // factor), float32, NaN = nodata,
    each unit NaN-padded to the batch's tile shape (h, w).
    """
    h, w = (n // factor for n in batch.tile_shape)
    tiles = np.empty((len(batch.units), raw.values.shape[0], h, w), dtype=np.float32)  # each value written once
    for i, unit in enumerate(batch.units):
        rows, cols = core_slices(unit.read, batch.read)
        binned = raw.physical(bin_mean(raw.values[:, rows, cols], factor))
        holes = bin_any(raw.invalid[rows, cols], factor)
        if holes.any():
            binned[:, holes] = np.nan
        bh, bw = binned.shape[1:]
        tiles[i, :, :bh, :bw] = binned
        tiles[i, :, bh:] = np.nan
        tiles[i, :, :bh, bw:] = np.nan
    return tiles


def score_zones(scan: ScanOptions, dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                zones: Zones, raster: ScoreRaster, progress: Progress | None,
                model: LoadedModel | None = None, *, workers: int = 0) -> Accumulated:
    """Score every batch (read in the background, scored by ``workers`` threads, 0: one per core) and gather
    the results."""
    count = len(zones.frame)
    acc = Accumulated(np.zeros((count, BINS + 1), np.int64), np.full((count, 2), np.nan),
                      np.full(count, np.nan), np.zeros(count, bool), [], [], np.zeros(2, np.int64),
                      np.zeros(count, np.int64))
    scorer = BatchScorer(scan, names, grid, zones, model)
    workers = workers or os.cpu_count() or 1
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
            acc.cnn.append(result.cnn)
            acc.agreement[:] += result.agreement
            acc.obscured[picks] += result.obscured
            raster.write(result.score, result.unit.core, merge=not zones.cell_mode)
        done += 1
        if progress is not None:
            progress(done, len(zones.batches))

    with ThreadPoolExecutor(max_workers=workers) as pool, warnings.catch_warnings(), one_torch_thread(model):
        warnings.simplefilter("ignore", RuntimeWarning)
        pending: deque[Future] = deque()
        for batch, before, after in read_in_background(dates, names, grid, zones.batches, depth=workers):
            pending.append(pool.submit(scorer, batch, before, after))
            while len(pending) > workers:
                gather(pending.popleft().result())
        while pending:
            gather(pending.popleft().result())
    return acc


@dataclass(frozen=True, slots=True)
class Scored:
    """A scene scored: what was gathered, the options that applied (``classical`` where the CNN abstained),
    and the domain check of :func:`detector.fusion.domain_check` (None for a method without a CNN)."""

    acc: Accumulated
    scan: ScanOptions
    check: dict[str, Any] | None
    raster: ScoreRaster


def score_scene(scan: ScanOptions, dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                zones: Zones, new_raster: Callable[[], ScoreRaster], progress: Progress | None,
                model: LoadedModel | None = None, *, workers: int = 0) -> Scored:
    """Score a scene with ``scan.method``; where the CNN is out of its domain and the method has a fall-back
    (:mod:`detector.methods`), score it again with that, into a new raster.  The caller discards
    ``Scored.raster`` when it is done with it."""
    method = METHODS[scan.method]
    run = functools.partial(_scan_into, new_raster, dates, names, grid, zones, progress, workers=workers)
    acc, raster = run(scan, model)
    check = fusion.domain_check(acc.agreement) if method.uses_model else None
    if check is None or check["in_domain"]:
        return Scored(acc, scan, check, raster)
    log.warning("the CNN agrees on %.1f%% of the %d classically changed pixels (under %.0f%%): it looks out of "
                "its domain here; %s", 100 * (check["agreement"] or 0), check["classical_changed_px"],
                100 * check["min_agreement"], f"scoring with {method.falls_back_to} alone" if method.falls_back_to
                else "its scores may miss change (--method fused falls back to classical)")
    if method.falls_back_to is None:
        return Scored(acc, scan, check, raster)
    raster.discard()
    fallback = replace(scan, method=method.falls_back_to, model=None)
    again, raster = run(fallback, None)
    return Scored(replace(again, cnn=acc.cnn), fallback, check, raster)


def _scan_into(new_raster: Callable[[], ScoreRaster], dates: tuple[DateSource, DateSource], names: tuple[str, ...],
               grid: Grid, zones: Zones, progress: Progress | None, scan: ScanOptions, model: LoadedModel | None, *,
               workers: int) -> tuple[Accumulated, ScoreRaster]:
    """:func:`score_zones` into a new raster, discarded if the scan fails."""
    raster = new_raster()
    try:
        return score_zones(scan, dates, names, grid, zones, raster, progress, model, workers=workers), raster
    except BaseException:
        raster.discard()
        raise


@contextmanager
def one_torch_thread(model: LoadedModel | None) -> Iterator[None]:
    """One torch thread per call while a model scores, restored afterwards.

    The worker threads already keep every core busy, and torch's own thread
    pool stalls when another core is busy (``../shared/PERFORMANCE.md``).
    A model read from its ONNX export (no network) never touches torch.
    """
    if model is None or model.network is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def change_polygons(score: np.ndarray, labels: np.ndarray, zones: tuple[int, ...], transform: Any, *,
                    pixel_threshold: float) -> list[tuple[int, float, Any]]:
    """Changed regions of one tile as (zone, mean score, polygon in the grid CRS)."""
    components, local_zone, mean = change_components(score, labels, pixel_threshold=pixel_threshold)
    if len(mean) == 0:
        return []
    shapes = features.shapes(components, mask=components > 0, transform=transform)
    return [(zones[local_zone[int(value) - 1]], float(mean[int(value) - 1]), shapely.geometry.shape(geometry))
            for geometry, value in shapes]
