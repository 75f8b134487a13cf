"""``detector batch``: many sites, a catalog of scenes, one task per site; durable, resumable, scalable.

The orchestrator of a batch, beside ``detector run``'s (:mod:`detector.pipeline`):
the plan (sites, catalog, candidate scenes per site) is made here; each
site task (:mod:`detector.batch.tasks`) chooses its pair of scenes and scores
it; the results are made durable one site at a time by
:class:`detector.batch.store.ResultStore`; the end of the batch
(:mod:`detector.batch.finish`) ranks, carries verdicts over and writes the
files to review.  Tasks run in local worker processes or on Dask
(:mod:`detector.batch.executors`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import geopandas as gpd

from detector import __version__
from detector.batch import executors
from detector.batch.catalog import Scene, read_catalog
from detector.batch.config import BatchConfig, scoring_part
from detector.batch.finish import FINISHED, Finished, check_finish_inputs, finish_record, finish_sites
from detector.batch.store import Outcome, ResultStore, folder_lock
from detector.batch.tasks import PAIR_FIELDS, plan_tasks, score_site, worker_setup
from detector.errors import InputError, first_line
from detector.files import write_json, write_json_atomic
from detector.outputs import Staging
from detector.report import render
from detector.results import OUR_FIELDS, user_columns, versions

log = logging.getLogger(__name__)


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


def run_batch(config: BatchConfig, *, workers: int = 0, dask: str | None = None,
              progress: BatchProgress | None = None) -> dict[str, Any]:
    """Score every site not yet done in ``config.out``; return the ``batch.json`` record."""
    start = time.perf_counter()
    sites = config.read_sites()
    scenes = read_catalog(config.catalog, bands=config.bands, key=f"{config.path.name}: [imagery] bands")
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
    earlier = scoring_part(json.loads(record.read_text(encoding="utf-8")).get("config") or {})
    now = scoring_part(config.to_json())
    if earlier != now:
        changed = sorted(k for k in now if earlier.get(k) != now[k])
        raise InputError(f"{config.out} holds results of another batch configuration (differs in {changed}): "
                         f"give a new [output] dir in {config.path}, or restore the earlier settings")


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
