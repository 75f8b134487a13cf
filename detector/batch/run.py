"""``detector batch``: many sites (or a region's cells), a catalog of scenes, one task per site (or block of
cells); durable, resumable, scalable.

The orchestrator of a batch, beside ``detector run``'s (:mod:`detector.pipeline`):
the plan (sites, catalog, candidate scenes per site) is made here; each
site task (:mod:`detector.batch.tasks`) chooses its pair of scenes and scores
it; the results are made durable one site at a time by
:class:`detector.batch.store.ResultStore`; the end of the batch
(:mod:`detector.batch.finish`) ranks, carries verdicts over and writes the
files to review.  A region batch (``[region]``) runs blocks of cells
(:mod:`detector.batch.blocks`) through the same store and executors, and
its end merges the flagged cells into candidate sites over the whole region.
Tasks run in local worker processes or on Dask (:mod:`detector.batch.executors`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass
from typing import Any

import geopandas as gpd

from detector import __version__
from detector.batch import executors
from detector.batch.blocks import KEY, plan_blocks, score_block
from detector.batch.catalog import Scene, read_catalog
from detector.batch.config import BatchConfig, Region, scoring_part
from detector.batch.finish import (
    FINISHED,
    REGION_FINISHED,
    check_finish_inputs,
    finish_record,
    finish_region,
    finish_sites,
)
from detector.batch.store import LOCK, Outcome, ResultStore, folder_lock
from detector.batch.tasks import PAIR_FIELDS, plan_tasks, score_site, worker_setup
from detector.errors import InputError, first_line
from detector.files import TMP_GLOB, write_json, write_json_atomic
from detector.methods import METHODS, check_model
from detector.outputs import Staging, check_writable
from detector.report import render
from detector.results import CANDIDATES, OUR_FIELDS, user_columns, versions

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BatchStatus:
    """Where a batch stands: tasks (sites or blocks) done and failed (all runs), run this time of ``to_run``,
    seconds, and the task that just finished."""

    done: int
    failed: int
    total: int
    ran: int
    to_run: int
    seconds: float
    site_id: str = ""
    error: str | None = None  # why the site just finished failed
    unit: str = "sites"  # what a task is: a site, or a block of a region's cells

    @property
    def rate(self) -> float:
        """Tasks per second this time."""
        return self.ran / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        return (self.to_run - self.ran) / self.rate if self.rate > 0 else None


BatchProgress = Callable[[BatchStatus], None]


def run_batch(config: BatchConfig, *, workers: int = 0, dask: str | None = None,
              progress: BatchProgress | None = None) -> dict[str, Any]:
    """Score every site (or block of a region's cells) not yet done in ``config.out``; return the
    ``batch.json`` record."""
    start = time.perf_counter()
    check_writable(config.out, key=f"[output] dir in {config.path}", inside=True)
    check_batch_folder(config)  # before the lock, whose file would stay in the folder refused
    check_model(config.scan)
    sites = config.read_sites() if config.region is None else config.read_region()
    scenes = read_catalog(config.catalog, bands=config.bands, key=f"{config.path.name}: [imagery] bands")
    check_finish_inputs(config, sites)
    if dask:
        executors.check_address(dask, reach=True)  # before the folder is made
    run = Runner(workers=workers, dask=dask, progress=progress)
    with folder_lock(config.out):
        check_same_batch(config)
        if config.region is not None:
            return scanned_region(config, config.region, sites, scenes, run, start=start)
        return scored_batch(config, sites, scenes, ResultStore(config.out), run, start=start)


@dataclass(frozen=True, slots=True)
class Runner:
    """Where and how the tasks run (``--workers``, ``--dask``), and who hears of each one done."""

    workers: int = 0
    dask: str | None = None
    progress: BatchProgress | None = None

    def run(self, store: ResultStore, fn: Callable[[Any], Outcome], tasks: list[Any], *, total: int,
            unit: str = "sites") -> None:
        """Run ``tasks`` (each with a ``site_id``, the store's key) and make each result durable as it comes."""
        run = (executors.dask(fn, tasks, address=self.dask, initializer=worker_setup) if self.dask else
               executors.local(fn, tasks, workers=self.workers or os.cpu_count() or 1, initializer=worker_setup))
        tic = time.perf_counter()
        with closing(run):
            for count, (task, result) in enumerate(run, start=1):
                outcome = (result if isinstance(result, Outcome) else
                           Outcome(task.site_id, error=f"its worker process died: {first_line(result, limit=1000)}"))
                store.add(outcome)
                if outcome.error and self.progress is None:
                    log.warning("%s %s failed: %s", unit.removesuffix("s"), outcome.site_id, outcome.error)
                if self.progress is not None:
                    self.progress(BatchStatus(len(store.done), len(store.failed), total, count, len(tasks),
                                              time.perf_counter() - tic, outcome.site_id, outcome.error, unit))

    @property
    def name(self) -> str:
        return f"dask {self.dask}" if self.dask else f"local processes ({self.workers or os.cpu_count()})"


def scored_batch(config: BatchConfig, sites: gpd.GeoDataFrame, scenes: list[Scene], store: ResultStore,
                 run: Runner, *, start: float) -> dict[str, Any]:
    """Run the tasks of the sites not yet done, write each result as it comes, rank at the end."""
    tasks = plan_tasks(config, sites, scenes, skip=store.done)
    total = len(sites)
    log.info("%d sites, %d scenes; %d done before, %d to run", total, len(scenes), len(store.done), len(tasks))
    run.run(store, score_site, tasks, total=total)
    tic = time.perf_counter()
    with Staging(config.out) as staging:
        finished = finish_sites(config, store, sites["site_id"].tolist(), scenes, staging) if store.done else None
        flagged = int(finished.sites["flagged"].sum()) if finished is not None else 0
        record = batch_record(config, store, total, run, threshold=None if finished is None else finished.threshold,
                              counts={"sites": total, **task_counts(store), "flagged": flagged,
                                      "ran_this_time": len(tasks)}, seconds=time.perf_counter() - start)
        if finished is not None:
            record["review_state"] = finished.review_state
        record["finish_seconds"] = round(time.perf_counter() - tic, 2)  # ranks, verdicts, budget, chips
        write_json(record, staging.path("batch.json"))
        if finished is not None:
            staging.path("report.html").write_text(report(config, finished.sites, record), encoding="utf-8")
            # the rows change last before the files go in place: a kill between the two leaves the rows
            # newer than batch.json's review state, which the next end reads as the same edits again
            store.update_sites(finished.sites, FINISHED)
        staging.commit()
    return record


def scanned_region(config: BatchConfig, spec: Region, region: gpd.GeoDataFrame, scenes: list[Scene],
                   run: Runner, *, start: float) -> dict[str, Any]:
    """Run the blocks of the region not yet done, write each as it comes; at the end rank and flag the cells
    and merge the flagged ones into candidate sites over the whole region."""
    store = ResultStore(config.out, key=KEY)
    plan = plan_blocks(config, spec, region, scenes, skip=store.done)
    log.info("%.1f km2 in %d blocks of %d x %d cells of %g m, %d scenes; %d done before, %d to run",
             plan.area_km2, plan.blocks, spec.block_cells, spec.block_cells, spec.cell_m, len(scenes),
             len(store.done), len(plan.tasks))
    run.run(store, score_block, plan.tasks, total=plan.blocks, unit="blocks")
    tic = time.perf_counter()
    with Staging(config.out) as staging:
        finished = finish_region(config, store, staging) if store.done else None
        counts = {"blocks": plan.blocks, **task_counts(store), "cells": 0, "flagged": 0, "candidates": 0,
                  "ran_this_time": len(plan.tasks)}
        if finished is not None:
            counts.update(cells=len(finished.cells), flagged=int(finished.cells["flagged"].sum()),
                          candidates=len(finished.candidates))
        record = batch_record(config, store, plan.blocks, run,
                              threshold=None if finished is None else finished.threshold, counts=counts,
                              seconds=time.perf_counter() - start)
        record["region"] = {"area_km2": round(plan.area_km2, 3), "cell_m": spec.cell_m,
                            "block_cells": spec.block_cells, "grid": asdict(plan.grid)}
        record["fields"] = [*record["fields"], KEY]
        record["finish_seconds"] = round(time.perf_counter() - tic, 2)  # ranks, flags, candidates
        write_json(record, staging.path("batch.json"))
        if finished is not None:
            staging.path("report.html").write_text(
                report(config, finished.candidates, record, listed=CANDIDATES), encoding="utf-8")
            store.update_sites(finished.cells, REGION_FINISHED)
        staging.commit()
    return record


def report(config: BatchConfig, sites: gpd.GeoDataFrame, record: dict[str, Any], *,
           listed: str = "sites.geojson") -> str:
    """``report.html`` of a batch: the date windows and catalog stand for run's two inputs."""
    inputs = {name: {"path": str(config.catalog), "date": " .. ".join(getattr(config, name))}
              for name in ("before", "after")}
    return render(sites, {**record, "mode": "batch", "inputs": inputs}, user_columns(sites, PAIR_FIELDS),
                  listed=listed)


OWN_BEFORE_BATCH = (LOCK, "timeline", ".timeline.state")  # a folder a timeline of the configuration wrote first


def check_batch_folder(config: BatchConfig) -> None:
    """Refuse an output folder that is not a batch's: the results of ``detector run``, or, with no
    ``batch.json`` in it, any file at all (the user's own, a catalog's rasters): a batch writes its
    ``sites.geojson``, ``report.html`` and more there."""
    out = config.out
    if (out / "run.json").exists():
        raise InputError(f"{out} holds the results of `detector run`: give another [output] dir in {config.path}")
    if out.is_dir() and not (out / "batch.json").exists():
        found = [p.name for p in sorted(out.iterdir()) if p.name not in OWN_BEFORE_BATCH and not p.match(TMP_GLOB)]
        if found:
            raise InputError(f"{out} holds files that are not a batch's ({', '.join(found[:3])}"
                             f"{' …' if len(found) > 3 else ''}): give a new or empty [output] dir in {config.path}, "
                             "or the folder of an earlier batch to resume it")


def check_same_batch(config: BatchConfig) -> None:
    """Refuse to resume into a folder whose results came from another configuration or another fusion rule (a
    batch begun before the rule changed would rank scores of two rules together)."""
    record = config.out / "batch.json"
    rule = METHODS[config.scan.method].rule
    if not record.exists():
        config.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic({"config": config.to_json(), "fusion": rule, "complete": False}, record)
        return
    found = json.loads(record.read_text(encoding="utf-8"))
    earlier = scoring_part(found.get("config") or {})
    now = scoring_part(config.to_json())
    if earlier != now:
        changed = sorted(k for k in now if earlier.get(k) != now[k])
        raise InputError(f"{config.out} holds results of another batch configuration (differs in {changed}): "
                         f"give a new [output] dir in {config.path}, or restore the earlier settings")
    if found.get("fusion") != rule:
        raise InputError(f"{config.out} was begun with another fusion rule ({found.get('fusion') or 'not recorded'}; "
                         f"this version: {rule}): give a new [output] dir in {config.path}, or finish it with the "
                         "version that began it")


def task_counts(store: ResultStore) -> dict[str, int]:
    """The tasks (sites or blocks) done and failed over all runs."""
    return {"done": len(store.done), "failed": len(store.failed)}


def batch_record(config: BatchConfig, store: ResultStore, total: int, run: Runner, *,
                 threshold: dict[str, Any] | None, counts: dict[str, int], seconds: float) -> dict[str, Any]:
    """What ``batch.json`` says: the configuration, the method and threshold, the ``counts``, where it ran, the
    versions (the caller adds the review state the next end of the batch starts from)."""
    failed = store.failed
    return {
        "detector_version": __version__,
        "config": config.to_json(),
        **finish_record(config, threshold),
        "complete": len(store.done) + len(failed) == total,
        "counts": counts,
        "failed": failed,
        "executor": run.name,
        "seconds_this_time": round(seconds, 2),
        "fields": [*OUR_FIELDS, *PAIR_FIELDS],
        "versions": versions(),
    }
