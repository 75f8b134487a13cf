"""``detector batch``: many sites, a catalog of scenes, one task per site; durable, resumable, scalable.

The plan (sites, catalog, candidate scenes per site) is made here; each site
task chooses its pair of scenes (:mod:`detector.pairing`) and scores it with
the same code as ``detector run``; the results are made durable one site at
a time by :class:`detector.store.ResultStore`.  Tasks run in local worker
processes or on Dask (:mod:`detector.executors`); they return plain data, so
the results do not depend on where they ran.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

import aoi
from detector import __version__, executors
from detector.batch_finish import FINISHED, Finished, check_finish_inputs, finish_record, finish_sites
from detector.catalog import Scene, read_catalog, site_cover
from detector.config import BatchConfig, scoring_part
from detector.errors import DetectorError, InputError, first_line
from detector.imagery import match_bands, overlap_window, reference_grid
from detector.outputs import ScoreRaster, Staging, write_json
from detector.pairing import Candidates, PairingRule, choose_pair, covering, in_windows, no_pair_reason, ordinal
from detector.pipeline import OUR_FIELDS, load_model, results, user_columns, versions, with_chip_paths
from detector.report import render
from detector.reviews import carry_over
from detector.scan import score_zones
from detector.store import Outcome, ResultStore, folder_lock
from detector.tiling import intersect, union
from detector.zones import plan_site_zones

log = logging.getLogger(__name__)

PAIR_FIELDS = ("before_scene", "after_scene", "before_cloud", "after_cloud", "before_valid", "after_valid",
               "season_gap_days", "pairing")


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a batch stands: sites done and failed (all runs), sites run this time of ``to_run``, seconds,
    and the site that just finished."""

    done: int
    failed: int
    total: int
    ran: int
    to_run: int
    seconds: float
    site_id: str = ""
    error: str | None = None  # why the site just finished failed

    @property
    def rate(self) -> float:
        """Sites per second this time."""
        return self.ran / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.to_run - self.ran) / self.rate if self.rate > 0 else None


BatchProgress = Callable[[BatchStatus], None]


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


def run_batch(config: BatchConfig, *, workers: int = 0, dask: str | None = None,
              progress: BatchProgress | None = None) -> dict[str, Any]:
    """Score every site not yet done in ``config.out``; return the ``batch.json`` record."""
    start = time.perf_counter()
    sites = read_all_sites(config)
    scenes = read_catalog(config.catalog)
    check_finish_inputs(config)
    with folder_lock(config.out):
        check_same_batch(config)
        store = ResultStore(config.out)
        return scored_batch(config, sites, scenes, store, workers=workers, dask=dask, progress=progress,
                            start=start)


def scored_batch(config: BatchConfig, sites: gpd.GeoDataFrame, scenes: list[Scene], store: ResultStore, *,
                 workers: int, dask: str | None, progress: BatchProgress | None, start: float) -> dict[str, Any]:
    """Run the tasks of the sites not yet done, write each result as it comes, rank at the end."""
    tasks = plan_tasks(config, sites, scenes, skip=store.done)
    total = len(sites)
    log.info("%d sites, %d scenes; %d done before, %d to run", total, len(scenes), len(store.done), len(tasks))
    run = (executors.dask(score_site, tasks, address=dask, initializer=worker_setup) if dask else
           executors.local(score_site, tasks, workers=workers or os.cpu_count() or 1, initializer=worker_setup))
    tic = time.perf_counter()
    with closing(run):
        for count, (task, result) in enumerate(run, start=1):
            outcome = (result if isinstance(result, Outcome) else
                       Outcome(task.site_id, error=f"its worker process died: {first_line(result, limit=1000)}"))
            store.add(outcome)
            if outcome.error and progress is None:
                log.warning("site %s failed: %s", outcome.site_id, outcome.error)
            if progress is not None:
                progress(BatchStatus(len(store.done), len(store.failed), total, count, len(tasks),
                                     time.perf_counter() - tic, outcome.site_id, outcome.error))
    tic = time.perf_counter()
    with Staging(config.out) as staging:
        finished = finish_sites(config, store, sites["site_id"].tolist(), scenes, staging) if store.done else None
        record = batch_record(config, store, total, finished, dask=dask, workers=workers,
                              seconds=time.perf_counter() - start, ran=len(tasks))
        record["finish_seconds"] = round(time.perf_counter() - tic, 2)  # ranks, verdicts, budget, chips
        write_json(record, staging.path("batch.json"))
        if finished is not None:
            staging.path("report.html").write_text(report(config, finished.sites, record), encoding="utf-8")
            # the rows change last before the files go in place: a kill between the two leaves the rows
            # newer than batch.json's review state, which the next end reads as the same edits again
            store.update_sites(finished.sites, FINISHED)
        staging.commit()
    return record


def report(config: BatchConfig, sites: gpd.GeoDataFrame, record: dict[str, Any]) -> str:
    """``report.html`` of a batch: the date windows and catalog stand for run's two inputs."""
    inputs = {name: {"path": str(config.catalog), "date": " .. ".join(getattr(config, name))}
              for name in ("before", "after")}
    return render(sites, {**record, "mode": "batch", "inputs": inputs}, user_columns(sites, PAIR_FIELDS))


def read_all_sites(config: BatchConfig) -> gpd.GeoDataFrame:
    """Every site of every site file, one frame; ids must be unique across the files."""
    run = config.run
    frames = [aoi.read_sites(p, buffer_m=run.buffer_m, id_col=run.id_col, lon_col=run.lon_col, lat_col=run.lat_col)
              for p in config.sites]
    for frame in frames:
        frame["site_id"] = frame["site_id"].astype(str)
    sites = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=4326)
    repeated = sites["site_id"][sites["site_id"].duplicated()].unique()
    if len(repeated):
        raise InputError(f"site ids repeat across {[str(p) for p in config.sites]}: {list(repeated[:5])}; "
                         "give unique ids (or [run] id_col naming a unique column)")
    return sites


def check_same_batch(config: BatchConfig) -> None:
    """Refuse to resume into a folder whose results came from another configuration."""
    record = config.out / "batch.json"
    if (config.out / "run.json").exists():
        raise InputError(f"{config.out} holds the results of `detector run`: give another [output] dir in "
                         f"{config.path}")
    if not record.exists():
        config.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"config": config.to_json(), "complete": False}, record)
        return
    import json

    earlier = scoring_part(json.loads(record.read_text(encoding="utf-8")).get("config") or {})
    now = scoring_part(config.to_json())
    if earlier != now:
        changed = sorted(k for k in now if earlier.get(k) != now[k])
        raise InputError(f"{config.out} holds results of another batch configuration (differs in {changed}): "
                         f"give a new [output] dir in {config.path}, or restore the earlier settings")


def plan_tasks(config: BatchConfig, sites: gpd.GeoDataFrame, scenes: list[Scene], *,
               skip: set[str]) -> list[SiteTask]:
    """One task per site not in ``skip``, with the scenes that cover it within each date window."""
    days = np.array([ordinal(s.date) for s in scenes])
    windows = {name: in_windows(days, getattr(config, name), tolerance_days=config.tolerance_days)
               for name in ("before", "after")}
    site_of, scene_of = covering(np.asarray(sites.geometry.values, dtype=object),
                                 np.array([s.footprint for s in scenes], dtype=object))
    starts = np.searchsorted(site_of, np.arange(len(sites) + 1))
    tasks = []
    for i, site_id in enumerate(sites["site_id"]):
        if site_id in skip:
            continue
        found = scene_of[starts[i]:starts[i + 1]]
        picks = {name: tuple(scenes[j] for j in found[inside[found]]) for name, inside in windows.items()}
        tasks.append(SiteTask(sites.iloc[[i]], picks["before"], picks["after"], config))
    return tasks


def pairing_rule(config: BatchConfig) -> PairingRule:
    return PairingRule(before=config.before, after=config.after, tolerance_days=config.tolerance_days,
                       same_season=config.same_season, max_cloud=config.max_cloud, min_valid=config.min_valid)


def worker_setup() -> None:
    """In each worker process: glibc keeps freed memory (as the CLI does), GDAL's cache stays small."""
    from detector.cli import keep_freed_memory

    keep_freed_memory()
    os.environ.setdefault("GDAL_CACHEMAX", "128")


def score_site(task: SiteTask) -> Outcome:
    """Choose the site's scenes and score it; every failure is returned, never raised."""
    tic = time.perf_counter()
    try:
        return scored_site(task, tic)
    except DetectorError as exc:
        return Outcome(task.site_id, error=first_line(exc, limit=1000), seconds=time.perf_counter() - tic)
    except Exception as exc:  # a bug at one site is reported, and the batch goes on
        log.error("site %s: %s", task.site_id, traceback.format_exc())
        return Outcome(task.site_id, error=f"internal error {type(exc).__name__}: {first_line(exc, limit=1000)}",
                       seconds=time.perf_counter() - tic)


def scored_site(task: SiteTask, tic: float) -> Outcome:
    geom = task.site.geometry.iloc[0]
    before, after = (candidates(scenes, geom) for scenes in (task.before, task.after))
    rule = pairing_rule(task.config)
    pair = choose_pair(before, after, rule)
    if pair is None:
        raise InputError(no_pair_reason(before, after, rule))
    chosen = (task.before[pair.before], task.after[pair.after])
    sites, changes, raster = score_pair(task, chosen)
    facts = {"before_scene": chosen[0].id, "after_scene": chosen[1].id,
             "before_cloud": _round(before.cloud[pair.before]), "after_cloud": _round(after.cloud[pair.after]),
             "before_valid": _round(before.valid[pair.before]), "after_valid": _round(after.valid[pair.after]),
             "season_gap_days": pair.season_gap_days, "pairing": pair.reason}
    for name, value in facts.items():
        sites[name] = value
    return Outcome(task.site_id, sites=sites, changes=changes, raster=raster, before_scene=chosen[0].id,
                   after_scene=chosen[1].id, seconds=time.perf_counter() - tic)


def candidates(scenes: tuple[Scene, ...], site: Any) -> Candidates:
    """The candidate table of one date: each scene's valid and cloud share of the site, read in a coarse window."""
    shares = np.array([site_cover(s, site) for s in scenes], dtype=float).reshape(-1, 2)
    return Candidates(tuple(s.id for s in scenes), np.array([ordinal(s.date) for s in scenes], dtype=np.int64),
                      shares[:, 0], shares[:, 1])


def score_pair(task: SiteTask, chosen: tuple[Scene, Scene]) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, bytes]:
    """Score one site on two scenes as ``detector run`` would; the row, its polygons and its change raster."""
    config = task.config.run
    before, after = (scene.date_source() for scene in chosen)
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = intersect(overlap_window(grid, after), overlap_window(grid, before))
    if area is None:
        raise InputError(f"{before.path} and {after.path} do not overlap over the site")
    zones = plan_site_zones(task.site, config, grid, area, source=task.site_id)
    model = load_model(config, names)
    with tempfile.TemporaryDirectory(prefix="detector-site-") as tmp:
        raster = ScoreRaster(Path(tmp) / "change.tif", crs=grid.crs, transform=grid.transform,
                             area=union([u.core for b in zones.batches for u in b.units]))
        try:
            acc = score_zones(config, (before, after), names, grid, zones, raster, None, model)
            raster.finish()
        finally:
            raster.discard()
        data = (Path(tmp) / "change.tif").read_bytes()
    scored, changes = results(config, zones, acc, grid, (before, after))
    sites, _ = carry_over(scored, None)
    sites = with_chip_paths(sites, np.zeros(len(sites), bool))
    sites["rank"] = pd.array([None] * len(sites), dtype="Int64")  # ranked over the whole batch when it ends
    return sites, changes, data


def _round(value: float) -> float:
    return float(np.round(value, 4))  # NaN (unknown) stays NaN: a number column, NULL in the GeoPackage


def batch_record(config: BatchConfig, store: ResultStore, total: int, finished: Finished | None, *,
                 dask: str | None, workers: int, seconds: float, ran: int) -> dict[str, Any]:
    """What ``batch.json`` says: the configuration, the method and threshold, the counts, where it ran, the
    versions, and the review state the next end of the batch starts from."""
    failed = store.failed
    sites = finished.sites if finished is not None else None
    return {
        "detector_version": __version__,
        "config": config.to_json(),
        **finish_record(config, finished.threshold if finished is not None else None),
        "complete": len(store.done) + len(failed) == total,
        "counts": {"sites": total, "done": len(store.done), "failed": len(failed),
                   "flagged": int(sites["flagged"].sum()) if sites is not None else 0,
                   "ran_this_time": ran},
        "failed": failed,
        "executor": f"dask {dask}" if dask else f"local processes ({workers or os.cpu_count()})",
        "seconds_this_time": round(seconds, 2),
        "fields": [*OUR_FIELDS, *PAIR_FIELDS],
        "versions": versions(),
        **({"review_state": finished.review_state} if finished is not None else {}),
    }


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_json(data, tmp)
    os.replace(tmp, path)
