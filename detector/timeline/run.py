"""``detector timeline``: sites and a catalog of dated scenes in; per site, when it was built and whether it is
new or an expansion, out.

The orchestrator: it reads the sites and the catalog, runs one task per site
(:func:`site_task`, in this process or in worker processes or on Dask, as
``batch`` does), keeps each finished site durable (:class:`SiteStore`: a
killed timeline resumes where it stopped), and writes the outputs from the
store, staged like ``run``'s: the whole folder appears at once or not at all.
Memory stays flat in the number of sites: a task returns only its row, its
parts and its two pictures.
"""

from __future__ import annotations

import csv
import io
import os
import time
import traceback
from collections.abc import Callable
from contextlib import closing
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely

from aoi import read_site_files
from detector import __version__
from detector.batch import executors
from detector.batch.catalog import Scene, read_catalog
from detector.batch.pairing import covering
from detector.batch.tasks import WORKER_CACHE_MB, worker_setup
from detector.chips import chip_key
from detector.config import SiteOptions, as_table, plain
from detector.errors import DetectorError, InputError, first_line
from detector.files import file_record, write_json
from detector.imagery import DateSource
from detector.methods import METHODS, load_model, model_path
from detector.outputs import NewFolder, check_out, write_geojson
from detector.results import renamed_user_columns, versions
from detector.timeline.figures import chart, filmstrip_png, report
from detector.timeline.site import SiteSeries, TimelineRule, site_series
from detector.timeline.store import SiteStore

OUTPUTS = ("timeline.geojson", "timeline.qml", "parts.geojson", "parts.qml", "timeline.csv", "sites", "report.html",
           "timeline.json")
STYLES = ("timeline.qml", "parts.qml")
CSV_FIELDS = ("site_id", "date", "scene", "built_m2", "changed_m2", "site_score", "cloud_fraction", "valid_fraction")
Progress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class TimelineConfig:
    """Everything that decides what ``timeline`` computes and where it writes.  ``dates`` (first, last; ISO)
    keeps the catalog's scenes in that span (a batch file's date windows); None keeps all."""

    sites: tuple[Path, ...]
    catalog: Path
    out: Path
    rule: TimelineRule
    overwrite: bool = False
    bands: str | None = None
    site: SiteOptions = field(default_factory=SiteOptions)
    dates: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class TimelineTask:
    """One site (a one-row EPSG:4326 frame with ``site_id``), the catalog's scenes, the rule."""

    site: gpd.GeoDataFrame
    scenes: tuple[Scene, ...]
    rule: TimelineRule

    @property
    def site_id(self) -> str:
        return str(self.site["site_id"].iloc[0])


def timeline(config: TimelineConfig, *, workers: int = 1, dask: str | None = None, command: list[str] | None = None,
             progress: Progress | None = None) -> dict[str, Any]:
    """Every site's timeline, written to ``config.out``; the ``timeline.json`` record."""
    tic = time.perf_counter()
    check_out(config.out, overwrite=config.overwrite, ours=OUTPUTS)
    sites = read_site_files(list(config.sites), **asdict(config.site)).to_crs(4326)
    scenes = catalog_scenes(config)
    load_model(config.rule.scan, ("red", "green", "blue"))  # refused before any site, as site_task loads it
    tasks = plan_tasks(sites, scenes, config.rule)
    if not any(task.scenes for task in tasks):
        raise InputError(f"none of the {len(sites)} sites lies in a scene of the catalog {config.catalog}: "
                         "check that its scenes cover the sites (and the sites' coordinates)")
    if dask:
        executors.check_address(dask, reach=True)  # before the state folder is made
    store = SiteStore(config.out, fingerprint(config, sites, scenes))
    tasks = [task for task in tasks if task.site_id not in store.done]
    run = (executors.dask(site_task, tasks, address=dask, initializer=worker_setup) if dask else
           executors.local(site_task, tasks, workers=workers, initializer=worker_setup) if workers > 1 else
           ((task, site_task(task)) for task in tasks))
    with closing(run):  # type: ignore[arg-type]
        for count, (task, result) in enumerate(run, start=1):
            row, drawn = result if isinstance(result, tuple) else (failed(task.site_id, result), {})
            store.add(row, drawn)
            if progress is not None:
                progress(count, len(tasks))
    rows = {r["site_id"]: r for r in store.results()}
    results = [rows[str(s)] for s in sites["site_id"]]
    frame = site_frame(sites, results)
    with NewFolder(config.out) as staging:
        write_outputs(staging, frame, results, store)
        record = timeline_record(config, frame, results, scenes, command, time.perf_counter() - tic,
                                 ran=len(tasks), workers=workers, dask=dask)
        write_json(record, staging.path("timeline.json"))
        report(frame, record, staging.path("report.html"))
        staging.commit()
    return record


def plan_tasks(sites: gpd.GeoDataFrame, scenes: list[Scene], rule: TimelineRule) -> list[TimelineTask]:
    """One task per site, with only the scenes that cover it (a task stays small however large the catalog)."""
    site_of, scene_of = covering(np.asarray(sites.geometry.values, dtype=object),
                                 np.array([s.footprint for s in scenes], dtype=object))
    starts = np.searchsorted(site_of, np.arange(len(sites) + 1))
    return [TimelineTask(sites.iloc[[i]], tuple(scenes[j] for j in scene_of[starts[i]:starts[i + 1]]), rule)
            for i in range(len(sites))]


def catalog_scenes(config: TimelineConfig) -> list[Scene]:
    scenes = read_catalog(config.catalog, bands=config.bands, key="--bands")
    if config.dates is not None:
        scenes = [s for s in scenes if config.dates[0] <= s.date <= config.dates[1]]
    dates = {s.date for s in scenes}
    least = config.rule.kind.min_dates  # under it every site is insufficient_data
    if len(dates) < least:
        within = f" between {config.dates[0]} and {config.dates[1]}" if config.dates else ""
        raise InputError(f"{config.catalog} holds scenes of {len(dates)} date{'' if len(dates) == 1 else 's'}"
                         f"{within}: a timeline needs at least {least} dated scenes (YYYY-MM-DD in each name)")
    return scenes


def fingerprint(config: TimelineConfig, sites: gpd.GeoDataFrame, scenes: list[Scene]) -> dict[str, Any]:
    """What decides the per-site results: a state made with anything else is not resumed."""
    return {"sites": sorted(str(s) for s in sites["site_id"]), "scenes": sorted(s.id for s in scenes),
            "catalog": str(config.catalog.resolve()), "bands": config.bands, "site": asdict(config.site),
            "rule": plain(as_table(config.rule)), "model": str(model_path(config.rule.scan)),
            "fusion": METHODS[config.rule.scan.method].rule, "version": __version__}


_MODELS: dict[Any, Any] = {}


def site_task(task: TimelineTask) -> tuple[dict[str, Any], dict[str, bytes]] | str:
    """One site's row, parts, CSV rows and pictures, as plain data; a failure is returned as its message."""
    try:
        scan = task.rule.scan
        if scan.uses_model and scan not in _MODELS:
            _MODELS[scan] = load_model(scan, ("red", "green", "blue"))
        cache = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": WORKER_CACHE_MB * 2**20}  # a user's wins
        with rasterio.Env(**cache):
            series = site_series(task.site, list(task.scenes), task.rule, _MODELS.get(scan))
        return site_result(series), pictures(series)
    except DetectorError as exc:
        return first_line(exc, limit=1000)
    except Exception as exc:  # a bug at one site is reported, and the others go on
        traceback.print_exc()
        return f"internal error {type(exc).__name__}: {first_line(exc, limit=1000)}"


def failed(site_id: str, error: str | BaseException) -> dict[str, Any]:
    """The row of a site whose task failed (its message) or whose worker died (the exception)."""
    why = error if isinstance(error, str) else f"its worker process died: {first_line(error, limit=1000)}"
    return {"site_id": site_id, "kind": "failed", "kind_reason": why, "parts": [], "rows": [], "dates_used": [],
            "dates_skipped": [], "scenes": []}


def site_result(s: SiteSeries) -> dict[str, Any]:
    """The plain record of a site's series (what the store keeps and the outputs are made of)."""
    return {
        "site_id": s.site_id, "kind": s.kind, "kind_reason": s.why, "onset_after": s.onset_after,
        "onset_before": s.onset_before,
        "built_m2_first": float(s.built_m2[0]) if len(s.built_m2) else None,
        "built_m2_last": float(s.built_m2[-1]) if len(s.built_m2) else None,
        "dates_used": s.dates, "dates_skipped": s.skipped, "scenes": [sc.id for sc in s.scenes],
        "method": s.method or None, "domain_check": s.check, "bin": s.bin,
        "parts": [{"wkt": shapely.to_wkt(g, rounding_precision=7), "onset_after": s.dates[k - 1],
                   "onset_before": s.dates[k]} for g, k in s.parts],
        "rows": [[s.dates[i], s.scenes[i].id, float(s.built_m2[i]), float(s.changed_m2[i]), float(s.site_score[i]),
                  float(s.cloud_fraction[i]), float(s.valid_fraction[i])] for i in range(len(s.built_m2))],
    }


def pictures(s: SiteSeries) -> dict[str, bytes]:
    out = {}
    if s.dates:
        out["chart"] = chart(s)
    if s.frames:
        out["filmstrip"] = filmstrip_png(s)
    return out


def site_frame(sites: gpd.GeoDataFrame, results: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """One row per site (in ``sites`` order): kind, onset, built areas, dates used and skipped; ranked by growth."""
    rows = pd.DataFrame({
        "site_id": [r["site_id"] for r in results],
        "kind": [r["kind"] for r in results],
        "kind_reason": [r["kind_reason"] for r in results],
        "onset_after": [r.get("onset_after") for r in results],
        "onset_before": [r.get("onset_before") for r in results],
        "built_m2_first": [r.get("built_m2_first") for r in results],
        "built_m2_last": [r.get("built_m2_last") for r in results],
        "dates_used": [", ".join(r["dates_used"]) for r in results],
        "dates_skipped": ["; ".join(r["dates_skipped"]) for r in results],
        "method": [r.get("method") for r in results],
    })
    growth = (rows["built_m2_last"].astype(float).fillna(-1) - rows["built_m2_first"].astype(float).fillna(0))
    order = np.lexsort((rows["site_id"].to_numpy(), -growth.to_numpy()))
    rows["rank"] = pd.array(np.argsort(order) + 1, dtype="Int64")
    keys = [chip_key(int(r), s) for r, s in zip(rows["rank"], rows["site_id"], strict=True)]
    rows["chart"] = [f"sites/{k}_chart.png" if r["dates_used"] else None for k, r in zip(keys, results, strict=True)]
    rows["filmstrip"] = [f"sites/{k}_filmstrip.png" if r["rows"] else None for k, r in zip(keys, results, strict=True)]
    user = renamed_user_columns(sites.drop(columns=[sites.geometry.name, "site_id"]).reset_index(drop=True),
                                rows.columns)
    frame = gpd.GeoDataFrame(pd.concat([rows, user], axis=1), geometry=sites.geometry.to_numpy(), crs=4326)
    return frame.iloc[order].reset_index(drop=True)


def parts_frame(results: list[dict[str, Any]]) -> gpd.GeoDataFrame:
    """Every dated part of every site: ``site_id``, ``onset_after``, ``onset_before``, ``onset_year``, ``area_m2``."""
    rows = [{"site_id": r["site_id"], "onset_after": p["onset_after"], "onset_before": p["onset_before"],
             "onset_year": int(p["onset_before"][:4]), "geometry": shapely.from_wkt(p["wkt"])}
            for r in results for p in r["parts"]]
    if not rows:
        return gpd.GeoDataFrame({k: [] for k in ("site_id", "onset_after", "onset_before", "onset_year", "area_m2")},
                                geometry=gpd.GeoSeries([], crs=4326))
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326)
    frame["area_m2"] = frame.to_crs(frame.estimate_utm_crs()).area.round(1)
    return frame


def series_csv(results: list[dict[str, Any]]) -> str:
    """``timeline.csv``: one row per site and usable date."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in results:
        writer.writerows([r["site_id"], *row] for row in r["rows"])
    return out.getvalue()


def write_outputs(staging: NewFolder, frame: gpd.GeoDataFrame, results: list[dict[str, Any]],
                  store: SiteStore) -> None:
    write_geojson(frame, staging.path("timeline.geojson"))
    write_geojson(parts_frame(results), staging.path("parts.geojson"))
    staging.path("timeline.csv").write_text(series_csv(results), encoding="utf-8")
    for name in STYLES:
        staging.path(name).write_bytes((resources.files("detector") / "styles" / name).read_bytes())
    staging.path("sites").mkdir()
    for row in frame.itertuples():
        for kind in ("chart", "filmstrip"):
            source = store.picture(str(row.site_id), kind)
            if getattr(row, kind) and source is not None:
                os.link(source, staging.path(getattr(row, kind)))


def timeline_record(config: TimelineConfig, frame: gpd.GeoDataFrame, results: list[dict[str, Any]],
                    scenes: list[Scene], command: list[str] | None, seconds: float, *, ran: int, workers: int,
                    dask: str | None) -> dict[str, Any]:
    """Everything needed to reproduce and defend the timelines: inputs, every scene's files and hashes, the model,
    the rules; per site the scenes used, the dates skipped and the rule that applied."""
    used = {sc for r in results for sc in r["scenes"]}
    hashes = {sc.id: [file_record(f) for f in DateSource(sc.source, sc.bands, sc.date).local_files]
              for sc in scenes if sc.id in used}  # the tasks checked the files: not opened again
    scan = config.rule.scan
    return {
        "detector_version": __version__,
        "command": command,
        "inputs": {"sites": [file_record(p) for p in config.sites], "catalog": str(config.catalog),
                   "dates": config.dates, "scenes": hashes},
        "parameters": {"bands": config.bands, "site": plain(asdict(config.site)),
                       "rule": plain(as_table(config.rule))},
        "rule": config.rule.kind.describe(),
        "method": scan.method,
        "fusion": METHODS[scan.method].rule,
        "model": file_record(model_path(scan)) if scan.uses_model else None,
        "sites": {r["site_id"]: {k: r.get(k) for k in ("kind", "kind_reason", "scenes", "dates_skipped", "method",
                                                      "domain_check", "bin")} for r in results},
        "counts": {"sites": len(results), "ran_this_time": ran, **frame["kind"].value_counts().to_dict()},
        "executor": f"dask {dask}" if dask else f"{workers} local process(es)",
        "versions": versions(),
        "seconds": round(seconds, 2),
    }
