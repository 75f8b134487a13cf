"""The scan: tiles read in the background, scored by worker threads, gathered per zone."""

from __future__ import annotations

import functools
import itertools
import logging
import os
import queue
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
import shapely
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from detector import calibration, fusion
from detector.adapter import adapt
from detector.binning import bin_any, bin_mean, unbin
from detector.change import score_tiles
from detector.config import ScanOptions
from detector.errors import ScratchError, first_line
from detector.imagery import DateReader, DateSource, Grid, RawWindow
from detector.inference import predictor
from detector.memory import give_back_freed_memory
from detector.methods import METHODS
from detector.outputs import ScoreRaster
from detector.scoring import BINS, change_components, zone_histograms
from detector.tiling import Batch, Unit
from detector.zones import Zones, grid_pixel_m

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.weights import LoadedModel

log = logging.getLogger(__name__)

# GDAL's block cache: about three rows of 512-px blocks of two 4-band uint16
# Sentinel-2 tiles, so neighbouring tiles never decode a block twice.
CACHE_MB = 300

Progress = Callable[[int, int], None]  # (done, total) passes over batches: one each, two with a CNN


@dataclass(frozen=True, slots=True)
class Accumulated:
    """Per-zone results gathered over all batches."""

    hist: np.ndarray  # (Z, BINS + 1)
    shift: np.ndarray  # (Z, 2)
    peak: np.ndarray  # (Z,) phase-correlation peak contrast of the shift estimate
    applied: np.ndarray  # (Z,)
    polygons: list[tuple[int, float, Any]]  # (zone, mean score, shapely geometry in grid CRS)
    cnn: list[bool]  # per tile scored: whether the CNN ran on it
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
    obscured: np.ndarray  # (len(unit.zones),) pixels of each zone obscured in either date


@dataclass(frozen=True, slots=True)
class Evidence:
    """A batch's two voters before they are combined: kept until the scene's calibration is known.

    ``classical, cnn``: (N, h, w) at the bin's resolution (``cnn`` 0 on tiles
    it skipped, NaN where ``classical`` is); ``ran`` (N,); ``shift`` (N, 2) in
    grid pixels, ``peak`` and ``applied`` (N,); ``obscured`` (H, W) over the
    batch's read window; ``counts`` :func:`detector.calibration.counts`.
    """

    batch: Batch
    classical: np.ndarray
    cnn: np.ndarray
    ran: np.ndarray
    shift: np.ndarray
    peak: np.ndarray
    applied: np.ndarray
    obscured: np.ndarray
    counts: np.ndarray


class BatchScorer:
    """Scores batches of tiles already read; safe to call from several threads.

    The kernels run on tiles block-averaged by ``factor`` (``scan.bin``, or what it chooses for the grid's
    pixel size: :meth:`detector.config.ScanOptions.factor`); their scores are
    repeated back onto the analysis grid, where zones, areas, polygons and the
    change raster are measured.  Shifts are reported in grid pixels.
    """

    def __init__(self, scan: ScanOptions, names: tuple[str, ...], grid: Grid, zones: Zones,
                 model: LoadedModel | None = None) -> None:
        self.scan, self.names, self.grid, self.zones, self.model = scan, names, grid, zones, model
        self.pixel_m = grid_pixel_m(grid)
        self.factor = scan.factor(self.pixel_m)

    def evidence(self, batch: Batch, before: RawWindow, after: RawWindow) -> Evidence:
        """Both voters on a batch read (the CNN only where ``scan.method`` asks for it)."""
        factor = self.factor
        first = cut_tiles(before, batch, factor=factor)
        tiles = score_tiles(first, cut_tiles(after, batch, factor=factor),
                            self.names, pixel_m=self.pixel_m * factor,
                            max_shift_px=self.scan.shift_limit(factor), min_peak=self.scan.min_peak,
                            params=self.scan.params)
        cnn, ran = cnn_scores(self.scan, self.model, self.names, tiles.score, first, tiles.after)
        counts = voter_counts(self.scan, tiles.score, cnn, ran, pixel_m=self.pixel_m * factor)
        return Evidence(batch, tiles.score, cnn, ran, tiles.shift * factor, tiles.peak, tiles.applied,
                        before.obscured | after.obscured, counts)

    def results(self, found: Evidence, method: str, scale: calibration.Calibration) -> list[UnitResult]:
        """The batch's tiles scored by ``method`` with the scene's calibration ``scale``."""
        score = combined(method, found.classical, found.cnn, found.ran, scale, pixel_m=self.pixel_m * self.factor)
        return [self.unit_result(unit, score[i], found.shift[i], float(found.peak[i]), bool(found.applied[i]),
                                 bool(found.ran[i]), found.obscured[core_slices(unit.core, found.batch.read)])
                for i, unit in enumerate(found.batch.units)]

    def __call__(self, batch: Batch, before: RawWindow, after: RawWindow) -> list[UnitResult]:
        """One pass, for a method without a CNN (nothing to calibrate)."""
        return self.results(self.evidence(batch, before, after), self.scan.method, calibration.NONE)

    def unit_result(self, unit: Unit, tile_score: np.ndarray, shift: np.ndarray, peak: float,
                    applied: bool, cnn: bool, obscured: np.ndarray) -> UnitResult:
        full = unbin(tile_score, self.factor, (int(unit.read.height), int(unit.read.width)))
        score = full[core_slices(unit.core, unit.read)]
        transform = window_transform(unit.core, self.grid.transform)
        labels = self.zones.labels(unit.zones, unit.core, transform)
        hist = zone_histograms(score, labels, len(unit.zones))
        polygons = change_polygons(score, labels, unit.zones, transform,
                                   pixel_threshold=self.scan.rule.pixel_threshold)
        cloud = np.bincount(labels[obscured], minlength=len(unit.zones) + 1)[1:]
        return UnitResult(unit, hist, shift, peak, applied, polygons,
                          np.where(labels > 0, score, np.float32(np.nan)), cnn, cloud)


def core_slices(core: Window, read: Window) -> tuple[slice, slice]:
    """Rows and columns of ``core`` within the window ``read`` that holds it."""
    r, c = int(core.row_off - read.row_off), int(core.col_off - read.col_off)
    return slice(r, r + int(core.height)), slice(c, c + int(core.width))


def cnn_scores(scan: ScanOptions, model: LoadedModel | None, names: tuple[str, ...], classical: np.ndarray,
               before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The CNN's change probability on the tiles ``scan.method`` runs it on (0 elsewhere, NaN where the
    classical score is), and which tiles those are (N,).

    Shapes: classical (N, H, W); before, after (N, C, H, W) (registered).
    """
    method = METHODS[scan.method]
    pick = method.cnn_tiles(classical, scan.rule.lowest)
    cnn = np.zeros_like(classical)
    if pick.any():
        if model is None:
            raise ValueError(f"method {method.name} needs a model")
        evidence = classical[pick][:, None] if model.evidence else None  # EVIDENCE: the classical score
        inputs = adapt(before[pick], after[pick], names, evidence=evidence, window=model.window)
        cnn[pick] = predictor(model, scan.backend)(inputs)
    cnn[np.isnan(classical)] = np.nan
    return cnn, pick


def combined(method: str, classical: np.ndarray, cnn: np.ndarray, ran: np.ndarray, scale: calibration.Calibration,
             *, pixel_m: float) -> np.ndarray:
    """The score of ``method`` from both voters, the CNN of the tiles it ran on (``ran``) calibrated by
    ``scale`` (:mod:`detector.calibration`) first (see :mod:`detector.methods` and :mod:`detector.fusion`)."""
    if not METHODS[method].uses_model:
        return classical
    cnn = np.array(cnn)
    cnn[ran] = calibration.apply(cnn[ran], scale)
    return METHODS[method].combine(classical, cnn, fusion.near(cnn, reach=fusion.reach_px(pixel_m)))


def voter_counts(scan: ScanOptions, classical: np.ndarray, cnn: np.ndarray, ran: np.ndarray, *,
                 pixel_m: float) -> np.ndarray:
    """:func:`detector.calibration.counts` of a batch, on the tiles where the classical evidence could make a
    change (the fused score's prefilter, :func:`detector.fusion.candidates`) and the CNN ran; zeros for a
    method without a CNN."""
    if not METHODS[scan.method].uses_model:
        return np.zeros(calibration.SIZE, np.int64)
    considered = fusion.candidates(classical, threshold=scan.rule.lowest) & ran
    near = fusion.near(cnn, reach=fusion.reach_px(pixel_m))
    return calibration.counts(classical, cnn, near, considered, pixel_threshold=scan.rule.pixel_threshold)


def scale_of(counts: np.ndarray) -> calibration.Calibration:
    """The CNN's calibration in a scene, from its :func:`voter_counts`."""
    return calibration.calibrate(counts, min_changed=fusion.MIN_CHANGED_PX)


def agreement_of(counts: np.ndarray) -> np.ndarray:
    """The domain check's counts (:func:`detector.fusion.domain_check`) of a scene, from its :func:`voter_counts`.

    Judged on the CNN *before* calibration: a CNN that says nothing about the
    ground, once shifted to call as many pixels as the classical evidence,
    would agree with it by chance within 15 m.
    """
    return calibration.agreement(counts, calibration.NONE, agrees_at=fusion.AGREES_AT)


def method_score(scan: ScanOptions, model: LoadedModel | None, names: tuple[str, ...], classical: np.ndarray,
                 before: np.ndarray, after: np.ndarray, *, pixel_m: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The score of ``scan.method`` from the classical score and the (registered) tiles, each tile its own
    scene: its CNN calibrated on itself (the timeline's, whose tiles are one site at one date each).

    Shapes: classical (N, H, W); before, after (N, C, H, W).  Returns the
    score (N, H, W), which tiles the CNN ran on (N,) and each tile's
    agreement counts (N, 2) for the domain check (zeros where no CNN ran).
    """
    cnn, ran = cnn_scores(scan, model, names, classical, before, after)
    score = combined(scan.method, classical, cnn, ran, calibration.NONE, pixel_m=pixel_m)  # tiles skipped too
    agreement = np.zeros((len(classical), 2), np.int64)
    for i in np.flatnonzero(ran):  # a loop over scenes, not pixels
        one = slice(i, i + 1)
        counts = voter_counts(scan, classical[one], cnn[one], ran[one], pixel_m=pixel_m)
        agreement[i] = agreement_of(counts)
        score[one] = combined(scan.method, classical[one], cnn[one], ran[one], scale_of(counts), pixel_m=pixel_m)
    return score, ran, agreement


def read_in_background(dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                       batches: list[Batch], *, depth: int) -> Generator[tuple[Batch, RawWindow, RawWindow]]:
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


def score_scene(scan: ScanOptions, dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
                zones: Zones, new_raster: Callable[[], ScoreRaster], progress: Progress | None,
                model: LoadedModel | None = None, *, workers: int = 0) -> Scored:
    """Score a scene with ``scan.method`` into a new raster (the caller discards ``Scored.raster`` when done).

    A method without a CNN scores each batch as it is read.  One with a CNN
    first gathers both voters over the whole scene (kept on disk,
    :class:`Spill`), then calibrates the CNN to the scene
    (:mod:`detector.calibration`) and checks it against the classical
    evidence (:func:`detector.fusion.domain_check`); then every batch is
    combined, by the classical evidence alone where the CNN is out of its
    domain and the method falls back (:mod:`detector.methods`).  ``progress``
    hears of every batch in both phases.
    """
    scorer = BatchScorer(scan, names, grid, zones, model)
    workers = workers or os.cpu_count() or 1
    two_phases = METHODS[scan.method].uses_model
    done = counter(progress, len(zones.batches) * (2 if two_phases else 1))
    read = closing(read_in_background(dates, names, grid, zones.batches, depth=workers))
    # one pool of worker threads for both phases
    with ThreadPoolExecutor(max_workers=workers) as pool, warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if not two_phases:
            with read as batches, into_raster(new_raster) as raster:
                acc = gather(threaded(pool, scorer, batches, workers=workers, done=done), zones, raster)
                return Scored(acc, replace(scan, bin=scorer.factor), None, raster)
        with Spill() as spill, one_torch_thread(model):
            with read as batches:
                for found in threaded(pool, scorer.evidence, batches, workers=workers, done=done):
                    spill.add(found)
            give_back_freed_memory()  # the reader's blocks, freed in its thread: phase two allocates in others
            check, applied, scale = scene_rule(scan, spill.counts)
            # the reader's bound on GDAL's cache, so the raster's written blocks do not pile up in it
            with rasterio.Env(GDAL_CACHEMAX=CACHE_MB * 2**20), into_raster(new_raster) as raster:
                combine = functools.partial(scorer.results, method=applied.method, scale=scale)
                acc = gather(threaded(pool, combine, ((f,) for f in spill), workers=workers, done=done), zones,
                             raster)
            give_back_freed_memory()  # what the combining threads freed, before the outputs are made
            return Scored(acc, replace(applied, bin=scorer.factor), check, raster)


def scene_rule(scan: ScanOptions, counts: np.ndarray) -> tuple[dict[str, Any], ScanOptions, calibration.Calibration]:
    """The scene's calibration and domain check (recorded as ``check``, with the calibration), and the options
    that apply: ``scan``, or its method's fall-back where the CNN is out of its domain."""
    method = METHODS[scan.method]
    scale = scale_of(counts)
    check = {**fusion.domain_check(agreement_of(counts)), "calibration": scale.record()}
    if check["in_domain"]:
        return check, scan, scale
    log.warning("the CNN agrees on %.1f%% of the %d classically changed pixels (under %.0f%%): it looks out of "
                "its domain here; %s", 100 * (check["agreement"] or 0), check["classical_changed_px"],
                100 * check["min_agreement"], f"scoring with {method.falls_back_to} alone" if method.falls_back_to
                else "its scores may miss change (--method fused falls back to classical)")
    if method.falls_back_to is None:
        return check, scan, scale
    return check, replace(scan, method=method.falls_back_to, model=None), calibration.NONE


def threaded(pool: ThreadPoolExecutor, fn: Callable[..., Any], items: Iterator[tuple[Any, ...]], *, workers: int,
             done: Callable[[], None] | None = None) -> Iterator[Any]:
    """``fn(*item)`` for each item, on the ``pool``'s ``workers`` threads, yielded in order (``done()`` after
    each); at most ``workers`` wait."""
    pending: deque[Future] = deque()
    for item in items:
        pending.append(pool.submit(fn, *item))
        while len(pending) > workers:
            yield pending.popleft().result()
            if done is not None:
                done()
    while pending:
        yield pending.popleft().result()
        if done is not None:
            done()


def counter(progress: Progress | None, total: int) -> Callable[[], None] | None:
    """A ``done()`` for :func:`threaded` that tells ``progress`` how many of ``total`` are done."""
    if progress is None:
        return None
    count = itertools.count(1)
    return lambda: progress(next(count), total)


def gather(results: Iterator[list[UnitResult]], zones: Zones, raster: ScoreRaster) -> Accumulated:
    """The per-zone results of every batch's tiles, their scores written to ``raster``."""
    count = len(zones.frame)
    acc = Accumulated(np.zeros((count, BINS + 1), np.int64), np.full((count, 2), np.nan),
                      np.full(count, np.nan), np.zeros(count, bool), [], [], np.zeros(count, np.int64))
    for batch in results:
        for result in batch:
            picks = list(result.unit.zones)
            acc.hist[picks] += result.hist
            acc.shift[picks] = result.shift
            acc.peak[picks] = result.peak
            acc.applied[picks] = result.applied
            acc.polygons.extend(result.polygons)
            acc.cnn.append(result.cnn)
            acc.obscured[picks] += result.obscured
            raster.write(result.score, result.unit.core, merge=not zones.cell_mode)
    return acc


@dataclass(frozen=True, slots=True)
class Scored:
    """A scene scored: what was gathered, the options that applied (``classical`` where the CNN abstained;
    ``bin`` the blocks scored) and the domain check of :func:`detector.fusion.domain_check` with the CNN's
    calibration (None for a method without a CNN)."""

    acc: Accumulated
    scan: ScanOptions
    check: dict[str, Any] | None
    raster: ScoreRaster


@contextmanager
def into_raster(new_raster: Callable[[], ScoreRaster]) -> Iterator[ScoreRaster]:
    """A new raster, discarded if the scan fails."""
    raster = new_raster()
    try:
        yield raster
    except BaseException:
        raster.discard()
        raise


class Spill:
    """The :class:`Evidence` of a scene's batches, its arrays kept in a temporary file until the scene's
    calibration is known (memory stays flat however large the scene); ``counts`` sums their calibration
    counts.  Added to and read by one thread."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="detector-evidence-")
        self._kept: list[tuple[Evidence, int]] = []
        self.counts = np.zeros(calibration.SIZE, np.int64)

    def add(self, found: Evidence) -> None:
        offset = self._file.seek(0, os.SEEK_END)
        try:
            for array in (found.classical, found.cnn, found.obscured):
                np.save(self._file, array)
        except OSError as exc:
            raise ScratchError(f"the scan's temporary file in {tempfile.gettempdir()} cannot grow past "
                               f"{offset / 2**20:.0f} MB ({first_line(exc)}): free space there, or point TMPDIR "
                               "at a disk with room") from None
        self._kept.append((replace(found, classical=EMPTY, cnn=EMPTY, obscured=EMPTY, counts=EMPTY), offset))
        self.counts += found.counts

    def __iter__(self) -> Iterator[Evidence]:
        for found, offset in self._kept:
            self._file.seek(offset)
            classical, cnn, obscured = (np.load(self._file) for _ in range(3))
            yield replace(found, classical=classical, cnn=cnn, obscured=obscured)

    def __enter__(self) -> Spill:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


EMPTY = np.zeros(0, np.float32)


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
