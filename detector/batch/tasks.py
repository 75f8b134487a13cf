"""One site of a batch, as a task that runs in a worker process: its candidate scenes, the pair it chooses,
and its scores, computed with the same scan and results as ``detector run``.

Tasks return plain data (:class:`detector.batch.store.Outcome`), never raise,
so the results do not depend on where they ran.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio

from detector.batch.catalog import Scene, site_cover
from detector.batch.config import BatchConfig
from detector.batch.pairing import Candidates, PairingRule, choose_pair, covering, in_windows, no_pair_reason, ordinal
from detector.batch.store import Outcome
from detector.config import ScanOptions
from detector.errors import DetectorError, InputError, first_line
from detector.imagery import DateSource, Grid, match_bands, overlap_window, reference_grid
from detector.memory import keep_freed_memory
from detector.methods import load_model
from detector.outputs import ScoreRaster
from detector.results import results, with_chip_paths
from detector.reviews import carry_over
from detector.scan import score_scene
from detector.tiling import intersect, union
from detector.zones import Zones, grid_factor, plan_site_zones

log = logging.getLogger(__name__)

PAIR_FIELDS = ("before_scene", "after_scene", "before_cloud", "after_cloud", "before_valid", "after_valid",
               "season_gap_days", "pairing", "bin_applied")  # bin_applied: the blocks scored on the pair's grid
WORKER_CACHE_MB = 128  # GDAL's block cache in a worker process: many of them share the machine


@dataclass(frozen=True, slots=True)
class SiteTask:
    """One site (a one-row EPSG:4326 frame: site_id, user columns, polygon) and its candidate scenes."""

    site: gpd.GeoDataFrame
    before: tuple[Scene, ...]
    after: tuple[Scene, ...]
    config: BatchConfig

    @property
    def site_id(self) -> str:
        return str(self.site["site_id"].iloc[0])


def plan_tasks(config: BatchConfig, sites: gpd.GeoDataFrame, scenes: list[Scene], *,
               skip: set[str]) -> list[SiteTask]:
    """One task per site not in ``skip``, with the scenes that cover it within each date window."""
    found = scenes_over(config, np.asarray(sites.geometry.values, dtype=object), scenes)
    return [SiteTask(sites.iloc[[i]], *found[i], config) for i, site_id in enumerate(sites["site_id"])
            if site_id not in skip]


def scenes_over(config: BatchConfig, places: np.ndarray, scenes: list[Scene]) -> list[tuple[tuple[Scene, ...],
                                                                                          tuple[Scene, ...]]]:
    """For each place (an EPSG:4326 geometry, a site or a region's block), the (before, after) scenes whose
    footprint covers it and whose date lies in that window."""
    days = np.array([ordinal(s.date) for s in scenes])
    windows = [in_windows(days, getattr(config, name), tolerance_days=config.tolerance_days)
               for name in ("before", "after")]
    place_of, scene_of = covering(places, np.array([s.footprint for s in scenes], dtype=object))
    starts = np.searchsorted(place_of, np.arange(len(places) + 1))
    found = []
    for i in range(len(places)):
        mine = scene_of[starts[i]:starts[i + 1]]
        before, after = (tuple(scenes[j] for j in mine[inside[mine]]) for inside in windows)
        found.append((before, after))
    return found


def pairing_rule(config: BatchConfig) -> PairingRule:
    return PairingRule(before=config.before, after=config.after, tolerance_days=config.tolerance_days,
                       same_season=config.same_season, max_cloud=config.max_cloud, min_valid=config.min_valid)


def worker_setup() -> None:
    """In each worker process: glibc keeps freed memory for reuse (as the CLI does), and the worker ends when
    the batch that started it dies (``kill -9`` included), instead of living on with no parent."""
    keep_freed_memory()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the batch's to handle: one line, not one per worker
    parent = os.getppid()
    threading.Thread(target=_end_with_parent, args=(parent,), name="detector-parent-watch", daemon=True).start()


def _end_with_parent(parent: int, *, every_s: float = 0.5) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)  # reparented: the batch is gone, nobody will read this worker's results


def score_site(task: SiteTask) -> Outcome:
    """Choose the site's scenes and score it; every failure is returned, never raised."""
    return guarded(task.site_id, lambda tic: scored_site(task, tic))


def guarded(task_id: str, work: Callable[[float], Outcome]) -> Outcome:
    """``work(start time)`` under the worker's GDAL cache; a failure, even a bug, as an :class:`Outcome`."""
    tic = time.perf_counter()
    try:
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": WORKER_CACHE_MB * 2**20}  # a user's wins
        with rasterio.Env(**cache):  # the scan's reader sets its own
            return work(tic)
    except DetectorError as exc:
        return Outcome(task_id, error=first_line(exc, limit=1000), seconds=time.perf_counter() - tic)
    except Exception as exc:  # a bug at one site is reported, and the batch goes on
        log.error("task %s: %s", task_id, traceback.format_exc())
        return Outcome(task_id, error=f"internal error {type(exc).__name__}: {first_line(exc, limit=1000)}",
                       seconds=time.perf_counter() - tic)


def scored_site(task: SiteTask, tic: float) -> Outcome:
    geom = task.site.geometry.iloc[0]
    chosen, facts = chosen_pair(task.config, task.before, task.after, geom)
    sites, changes, raster = score_pair(task, chosen)
    for name, value in facts.items():
        sites[name] = value
    return Outcome(task.site_id, sites=sites, changes=changes, raster=raster, before_scene=chosen[0].id,
                   after_scene=chosen[1].id, seconds=time.perf_counter() - tic)


def chosen_pair(config: BatchConfig, before_scenes: tuple[Scene, ...], after_scenes: tuple[Scene, ...], place: Any,
                *, what: str = "site") -> tuple[tuple[Scene, Scene], dict[str, Any]]:
    """The best pair of scenes over ``place`` (an EPSG:4326 geometry) and the :data:`PAIR_FIELDS` that say
    why; :class:`InputError` when none is usable."""
    before, after = (candidates(scenes, place) for scenes in (before_scenes, after_scenes))
    rule = pairing_rule(config)
    pair = choose_pair(before, after, rule, what=what)
    if pair is None:
        raise InputError(no_pair_reason(before, after, rule, what=what))
    chosen = (before_scenes[pair.before], after_scenes[pair.after])
    facts = {"before_scene": chosen[0].id, "after_scene": chosen[1].id,
             "before_cloud": _round(before.cloud[pair.before]), "after_cloud": _round(after.cloud[pair.after]),
             "before_valid": _round(before.valid[pair.before]), "after_valid": _round(after.valid[pair.after]),
             "season_gap_days": pair.season_gap_days, "pairing": pair.reason}
    return chosen, facts


def candidates(scenes: tuple[Scene, ...], site: Any) -> Candidates:
    """The candidate table of one date: each scene's valid and cloud share of the site, read in a coarse window."""
    shares = np.array([site_cover(s, site) for s in scenes], dtype=float).reshape(-1, 2)
    return Candidates(tuple(s.id for s in scenes), np.array([ordinal(s.date) for s in scenes], dtype=np.int64),
                      shares[:, 0], shares[:, 1])


def score_pair(task: SiteTask, chosen: tuple[Scene, Scene]) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, bytes]:
    """Score one site on two scenes as ``detector run`` would; the row, its polygons and its change raster."""
    scan = task.config.scan
    before, after = (scene.date_source() for scene in chosen)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{before.path} and {after.path} do not overlap over the site")
    zones = plan_site_zones(task.site, scan, grid, area, source=task.site_id)
    return scan_pair(scan, (before, after), names, grid, zones)


def scan_pair(scan: ScanOptions, dates: tuple[DateSource, DateSource], names: tuple[str, ...], grid: Grid,
              zones: Zones) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, bytes]:
    """The zones scored on two dates with ``run``'s scan and results, in one thread: their rows (verdict fields
    unreviewed, no chips, no rank yet), their change polygons and the change raster's bytes."""
    model = load_model(scan, names, factor=grid_factor(scan, grid))
    with tempfile.TemporaryDirectory(prefix="detector-site-") as tmp:
        scene = score_scene(scan, dates, names, grid, zones,
                            lambda: ScoreRaster(Path(tmp) / "change.tif", crs=grid.crs, transform=grid.transform,
                                                area=union([u.core for b in zones.batches for u in b.units])),
                            None, model, workers=1)
        try:
            scene.raster.finish()
        finally:
            scene.raster.discard()
        data = (Path(tmp) / "change.tif").read_bytes()
    scored, changes = results(scene.scan, zones, scene.acc, grid, dates)
    sites, _ = carry_over(scored, None)
    sites = with_chip_paths(sites, np.zeros(len(sites), bool))
    sites["bin_applied"] = scene.scan.bin  # run.json's bin_applied; here each site's pair has its own grid
    sites["rank"] = pd.array([None] * len(sites), dtype="Int64")  # ranked over the whole batch when it ends
    return sites, changes, data


def _round(value: float) -> float:
    return float(np.round(value, 4))  # NaN (unknown) stays NaN: a number column, NULL in the GeoPackage
