"""One site over every usable date of a catalog: the dates, the change maps, the persistence fit, the parts.

Each usable date is read onto the grid of the earliest usable one (the
reference), over the site's window, and scored against it with the same core
and CNN as ``detector run`` (:func:`detector.change.score_tiles`: normalized
to the reference and registered to it; then :func:`detector.scan.method_score`).
The dates are a batch of tiles of one window, so the whole series is a few
vectorized calls.  Where the CNN is out of its domain over the site's dates
(:func:`detector.fusion.domain_check`), the series is the classical one.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform
from scipy import ndimage

from aoi.cells import pixel_size_m
from detector import fusion
from detector.batch.catalog import Scene, site_cover
from detector.binning import bin_any, bin_mean
from detector.change import linear_energy, score_tiles
from detector.chips import rgb_bands, stretch
from detector.config import ScanOptions
from detector.errors import InputError
from detector.imagery import MASKS, DateReader, DateSource, reference_grid
from detector.methods import METHODS
from detector.options import check, option
from detector.scan import method_score
from detector.tiling import bounds_window, intersect, site_read_window
from detector.timeline.series import NEVER, KindRule, built_series, kind, onsets

CHUNK = 4  # dates scored per call: memory stays flat in the number of dates
BUILT_EDGE_RATIO = 8.0  # straight-edge energy over the window's median that reads as an edge of a building
DENSE_M, DENSE_SHARE = 100.0, 0.4  # built-up: at least 40 % of the pixels within 100 m are such edges
PART_SHARE = 0.7  # a pixel of a built site is part of it at 0.7 of the pixel threshold (0.35 by default)
CLOSE_M = 40.0  # gaps between the buildings of one compound, filled
NEAR_M = 50.0  # built-up at the reference counts where it touches a part built later: an expansion


@dataclass(frozen=True, slots=True)
class TimelineRule:
    """What decides a site's series: usable dates, the scan, the kind."""

    scan: ScanOptions
    kind: KindRule = field(default_factory=KindRule)
    max_cloud: float = option(0.5, float, low=0, high=1, low_closed=True)
    min_valid: float = option(0.9, float, low=0, high=1)

    def __post_init__(self) -> None:
        check(self)


@dataclass(slots=True)
class SiteSeries:
    """The timeline of one site (areas in m², dates ISO)."""

    site_id: str
    dates: list[str] = field(default_factory=list)
    scenes: list[Scene] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "date scene: why"
    built_m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    changed_m2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cloud_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    valid_fraction: np.ndarray = field(default_factory=lambda: np.zeros(0))
    onset: int | None = None  # index of the first date with construction
    kind: str = "insufficient_data"
    why: str = ""
    method: str = ""
    check: dict[str, Any] | None = None
    bin: int | None = None  # the side of the blocks scored (ScanOptions.factor at the site)
    parts: list[tuple[Any, int]] = field(default_factory=list)  # (EPSG:4326 polygon, onset index)
    site_score: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the site's score against the reference
    frames: list[np.ndarray] = field(default_factory=list)  # (h, w, 3) uint8 per date, one stretch
    outline: np.ndarray | None = None  # (h, w) bool: the site's edge on the frames

    @property
    def onset_after(self) -> str | None:
        return self.dates[self.onset - 1] if self.onset else None

    @property
    def onset_before(self) -> str | None:
        return self.dates[self.onset] if self.onset else None


def usable_scenes(site: Any, scenes: list[Scene], rule: TimelineRule) -> tuple[list[Scene], list[str]]:
    """Of the scenes covering ``site`` (EPSG:4326), the usable ones, one per date (the clearest), in date order;
    and the others with why."""
    kept: dict[str, tuple[float, Scene]] = {}
    skipped = []
    for scene in scenes:
        valid, cloud = site_cover(scene, site)
        cloudy = 0.0 if np.isnan(cloud) else cloud
        if valid < rule.min_valid or cloudy > rule.max_cloud:
            skipped.append(f"{scene.date} {scene.id}: {valid:.0%} of the site with data, {cloudy:.0%} cloud "
                           f"(needs >= {rule.min_valid:.0%} and <= {rule.max_cloud:.0%})")
            continue
        cost = cloudy - valid
        if scene.date in kept:
            other = kept[scene.date][1] if cost < kept[scene.date][0] else scene
            skipped.append(f"{scene.date} {other.id}: another scene of that date is clearer")
            if cost >= kept[scene.date][0]:
                continue
        kept[scene.date] = (cost, scene)
    return [kept[d][1] for d in sorted(kept)], sorted(skipped)


def common_bands(sources: list[DateSource]) -> tuple[str, ...]:
    names = tuple(n for n in sources[0].names if n not in MASKS and all(n in s.names for s in sources[1:]))
    if not names:
        raise InputError(f"the scenes over the site share no band ({sources[0].path} has {list(sources[0].names)}): "
                         "give a catalog whose scenes have the same bands")
    return names


def site_series(site: gpd.GeoDataFrame, scenes: list[Scene], rule: TimelineRule, model: Any) -> SiteSeries:
    """The timeline of one site (a one-row EPSG:4326 frame with ``site_id``)."""
    site_id = str(site["site_id"].iloc[0])
    geom = site.geometry.iloc[0]
    usable, skipped = usable_scenes(geom, scenes, rule)
    series = SiteSeries(site_id, [s.date for s in usable], usable, skipped)
    if len(usable) < rule.kind.min_dates:
        series.kind, series.why = kind(0.0, 0.0, len(usable), rule.kind, onset=False)
        if not scenes:
            series.why = "no scene of the catalog covers the site"
        return series
    sources = [s.date_source() for s in usable]
    names = common_bands(sources)
    grid = reference_grid(sources[0], names)
    lon, lat = shapely.centroid(geom).x, shapely.centroid(geom).y
    h, w = pixel_size_m(grid.crs, grid.transform, np.array([lon]), np.array([lat]))
    factor = series.bin = rule.scan.factor(float(np.sqrt(h[0] * w[0])))
    shape = site.to_crs(grid.crs).geometry.iloc[0]
    whole = Window(0, 0, grid.width, grid.height)
    core = intersect(bounds_window(shape.bounds, grid.transform), whole)
    if core is None:
        raise InputError(f"site {site_id} lies outside {sources[0].path}")
    padded = site_read_window(core, margin=rule.scan.margin_px, height=grid.height, width=grid.width)
    window = Window(padded.col_off, padded.row_off, padded.width - padded.width % factor,
                    padded.height - padded.height % factor)
    stack, obscured, valid = read_dates(sources, names, grid, window, factor)
    transform = window_transform(window, grid.transform) * Affine.scale(factor)
    inside = features.geometry_mask([shape], stack.shape[-2:], transform, invert=True)
    pixel_m2 = float(h[0] * w[0]) * factor**2
    pixel_m = float(np.sqrt(pixel_m2))
    score, series.method, series.check = change_maps(stack, names, rule.scan, model, pixel_m=pixel_m,
                                                      factor=factor)
    flags = site_flags(score, inside, rule.scan)
    first = int(onsets(flags[:, None, None], min_persistence=rule.kind.min_persistence)[0, 0])
    onset = pixel_onsets(changed_pixels(score, rule.scan), inside, first, rule.kind, pixel_m=pixel_m)
    before = built_at_reference(stack[0], names, onset, pixel_m=pixel_m) & inside
    built = built_series(np.where(before, NEVER, onset), inside, len(usable), pixel_m2) + before.sum() * pixel_m2
    series.built_m2 = np.round(built, 1)
    series.changed_m2 = np.round(np.nansum((score >= rule.scan.rule.pixel_threshold) & inside, axis=(1, 2))
                                 * pixel_m2, 1)
    total = max(int(inside.sum()), 1)
    series.cloud_fraction = np.round((obscured & inside).sum(axis=(1, 2)) / total, 4)
    series.valid_fraction = np.round((valid & inside).sum(axis=(1, 2)) / total, 4)
    series.site_score = np.round(site_scores(score, inside, rule.scan), 4)
    series.kind, series.why = kind(float(built[0]), float(built[-1]), len(usable), rule.kind, onset=first != NEVER)
    grown = np.flatnonzero(built - built[0] >= rule.kind.min_built_m2)  # the parts date it, not the site's
    series.onset = int(grown[0]) if series.kind in ("new", "expanded") and len(grown) else None  # score alone
    series.parts = dated_parts(onset, inside, transform, grid.crs, min_px=rule.scan.min_area_m2 / pixel_m2)
    series.frames, series.outline = filmstrip(stack, names, inside)
    return series


def read_dates(sources: list[DateSource], names: tuple[str, ...], grid: Any, window: Window,
               factor: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every date over ``window`` of the reference grid, block-averaged by ``factor``.

    Returns (stack (T, C, h, w) float32 NaN = nodata or obscured, obscured (T, h, w) bool, valid (T, h, w) bool).
    """
    stack, cloud = [], []
    for source in sources:
        with DateReader(source, names, grid) as reader:
            raw = reader.read_raw(window)
        binned = raw.physical(bin_mean(raw.values, factor))
        binned[:, bin_any(raw.invalid, factor)] = np.nan
        stack.append(binned)
        cloud.append(bin_any(raw.obscured, factor))
    data = np.stack(stack).astype(np.float32)
    return data, np.stack(cloud), np.asarray(np.isfinite(data).all(axis=1))


def change_maps(stack: np.ndarray, names: tuple[str, ...], scan: ScanOptions, model: Any, *,
                pixel_m: float, factor: int = 1) -> tuple[np.ndarray, str, dict[str, Any] | None]:
    """Every date's change score against the reference (T, h, w) float32 (date 0: 0; NaN without data); the
    method that applied, and the CNN's domain check.  ``stack`` is on the grid block-averaged by ``factor``
    (``scan.max_shift_px`` counts pixels of the grid, as in ``detector run``)."""
    method = METHODS[scan.method]
    t = len(stack)
    scores = {name: np.full(stack.shape[:1] + stack.shape[2:], np.nan, np.float32)
              for name in ("classical", scan.method)}
    agreement = np.zeros(2, np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows (a date without data there)
        for start in range(1, t, CHUNK):
            chunk(stack, start, names, scan, model, pixel_m, factor, scores, agreement)
    check = fusion.domain_check(agreement) if method.uses_model else None
    applied = scan.method
    if check is not None and not check["in_domain"] and method.falls_back_to:
        applied = method.falls_back_to
    chosen = scores[applied]
    chosen[0] = np.where(np.isfinite(stack[0]).all(axis=0), 0.0, np.nan)
    return chosen, applied, check


def changed_pixels(score: np.ndarray, scan: ScanOptions) -> np.ndarray:
    """1 where a pixel's score reaches ``PART_SHARE`` of the pixel threshold, 0 where not, NaN without data:
    (T, h, w).  Lower than ``run``'s: only a site whose own score persists gets parts, and within it the
    fit wants the compound's whole ground, not only its brightest roofs."""
    at = PART_SHARE * scan.rule.pixel_threshold
    return np.where(np.isfinite(score), (score >= at).astype(np.float32), np.nan)


def site_scores(score: np.ndarray, inside: np.ndarray, scan: ScanOptions) -> np.ndarray:
    """The site's score at every date, as ``run`` scores a site (the rule's quantile of its pixel scores)."""
    values = np.where(inside, score, np.nan).reshape(len(score), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanquantile(values, scan.rule.quantile, axis=1)


def site_flags(score: np.ndarray, inside: np.ndarray, scan: ScanOptions) -> np.ndarray:
    """1 where the site's score reaches the site threshold, 0 where not, NaN where it has no data: (T,)."""
    site = site_scores(score, inside, scan)
    flags = np.where(np.isfinite(site), (site >= scan.rule.threshold).astype(np.float32), np.nan)
    flags[0] = 0.0
    return flags


def pixel_onsets(changed: np.ndarray, inside: np.ndarray, first: int, rule: KindRule, *,
                 pixel_m: float) -> np.ndarray:
    """Each pixel's onset (:func:`detector.timeline.series.onsets`), none before the site's own ``first``
    (what flickers under the site's threshold is not construction), the gaps between a compound's buildings
    filled (a closing over ``CLOSE_M``) date by date, and smoothed by :func:`majority`."""
    if first == NEVER:
        return np.full(changed.shape[1:], NEVER, np.int64)
    raw = onsets(changed, min_persistence=rule.min_persistence)
    raw = np.where(raw >= first, raw, NEVER)
    filled = np.full(raw.shape, NEVER, np.int64)
    steps = max(1, int(round(CLOSE_M / pixel_m)))
    for t in range(first, len(changed)):
        built = ndimage.binary_closing((raw != NEVER) & (raw <= t), iterations=steps) & inside
        filled[built & (filled == NEVER)] = t
    return majority(filled, inside)


def chunk(stack: np.ndarray, start: int, names: tuple[str, ...], scan: ScanOptions, model: Any, pixel_m: float,
          factor: int, scores: dict[str, np.ndarray], agreement: np.ndarray) -> None:
    """Score dates ``start`` to ``start + CHUNK`` against the reference, into ``scores`` and ``agreement``."""
    after = stack[start:start + CHUNK]
    before = np.repeat(stack[:1], len(after), axis=0)
    tiles = score_tiles(before, after, names, pixel_m=pixel_m, max_shift_px=scan.shift_limit(factor),
                        min_peak=scan.min_peak, params=scan.params)
    score, _, counts = method_score(scan, model, names, tiles.score, before, tiles.after, pixel_m=pixel_m)
    scores["classical"][start:start + CHUNK] = tiles.score
    scores[scan.method][start:start + CHUNK] = score
    agreement += counts.sum(axis=0)


def majority(onset: np.ndarray, inside: np.ndarray, size: int = 3) -> np.ndarray:
    """Each pixel's onset replaced by the most common one over ``size`` x ``size`` (NEVER included), inside the
    site: one neighbourhood is built at one date, not pixel by pixel."""
    values = np.unique(onset[inside])
    if len(values) < 2:
        return onset
    votes = np.stack([ndimage.uniform_filter((onset == v).astype(np.float32), size) for v in values])
    return np.where(inside, values[np.argmax(votes, axis=0)], onset)


def built_at_reference(image: np.ndarray, names: tuple[str, ...], onset: np.ndarray, *, pixel_m: float) -> np.ndarray:
    """What an expansion grew from: pixels already built at the reference date, next to what was built later.

    A pixel reads as built where straight edges are dense: at least ``DENSE_SHARE`` of the pixels within
    ``DENSE_M`` have a local edge energy ``BUILT_EDGE_RATIO`` times the window's median (a road alone is too
    thin to pass).  Only the dense areas that never changed and touch a part built later (within ``NEAR_M``)
    count: a compound that grew.  A proxy from one date: a mountain foot or a field mosaic beside a new
    compound can still pass; the chips and ``built_m2_first`` say what it found.
    """
    visible = [i for i, n in enumerate(names) if n in ("red", "green", "blue")] or list(range(len(names)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels without data in every band
        light = np.nanmean(image[visible], axis=0)
    local = ndimage.uniform_filter(np.nan_to_num(linear_energy(light[None])[0]), 5)
    edges = local >= BUILT_EDGE_RATIO * (np.nanmedian(local) + 1e-6)
    dense = ndimage.uniform_filter(edges.astype(np.float32), max(3, int(DENSE_M / pixel_m) | 1)) >= DENSE_SHARE
    dense &= np.isfinite(light) & (onset == NEVER)
    later = ndimage.binary_dilation(onset != NEVER, iterations=max(1, int(NEAR_M / pixel_m)))
    labels, _ = ndimage.label(dense)
    touching = np.unique(labels[later & dense])
    return np.isin(labels, touching[touching > 0])


def dated_parts(onset: np.ndarray, inside: np.ndarray, transform: Any, crs: Any, *,
                min_px: float) -> list[tuple[Any, int]]:
    """Connected pixels built at one date, at least ``min_px`` of them, as (EPSG:4326 polygon, onset index)."""
    parts = []
    for value in np.unique(onset[inside & (onset != NEVER)]):
        labels, count = ndimage.label(inside & (onset == value))
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = np.isin(labels, np.flatnonzero(sizes >= max(min_px, 1))[1:])
        for geometry, _ in features.shapes(keep.astype(np.uint8), mask=keep, transform=transform):
            parts.append((shapely.geometry.shape(geometry), int(value)))
    if not parts:
        return []
    frame = gpd.GeoDataFrame({"onset": [p[1] for p in parts]}, geometry=[p[0] for p in parts], crs=crs).to_crs(4326)
    return list(zip(frame.geometry, frame["onset"], strict=True))


def filmstrip(stack: np.ndarray, names: tuple[str, ...], inside: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Every date as true colour with one stretch over all dates (a difference is a difference on the ground),
    and the site's outline."""
    frames = list(stretch(*stack[:, rgb_bands(names)]))
    edge = inside & ~ndimage.binary_erosion(inside)
    return frames, edge
