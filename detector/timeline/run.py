"""``detector timeline``: sites and a catalog of dated scenes in; per site, when it was built and whether it is
new or an expansion, out.

The orchestrator: it reads the sites and the catalog, computes each site's
series (:mod:`detector.timeline.site`) and writes the outputs, staged like
``run``'s: the whole folder appears at once or not at all.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from aoi import read_site_files
from detector import __version__
from detector.batch.catalog import Scene, read_catalog
from detector.chips import chip_key
from detector.config import SiteOptions, as_table, plain
from detector.errors import InputError
from detector.files import file_record, write_json
from detector.methods import METHODS, load_model
from detector.outputs import NewFolder, check_out, write_geojson
from detector.results import versions
from detector.timeline.figures import chart, filmstrip_png, report
from detector.timeline.site import SiteSeries, TimelineRule, site_series

OUTPUTS = ("timeline.geojson", "timeline.qml", "parts.geojson", "parts.qml", "timeline.csv", "sites", "report.html",
           "timeline.json")
STYLES = ("timeline.qml", "parts.qml")


@dataclass(frozen=True, slots=True)
class TimelineConfig:
    """Everything that decides what ``timeline`` computes and where it writes."""

    sites: Path
    catalog: Path
    out: Path
    rule: TimelineRule
    overwrite: bool = False
    bands: str | None = None
    site: SiteOptions = field(default_factory=SiteOptions)


def timeline(config: TimelineConfig, *, command: list[str] | None = None,
             progress: Any = None) -> dict[str, Any]:
    """Every site's timeline, written to ``config.out``; the ``timeline.json`` record."""
    tic = time.perf_counter()
    check_out(config.out, overwrite=config.overwrite, ours=OUTPUTS)
    sites = read_site_files([config.sites], **asdict(config.site)).to_crs(4326)
    scenes = read_catalog(config.catalog, bands=config.bands, key="--bands")
    if len({s.date for s in scenes}) < 2:
        raise InputError(f"{config.catalog} holds scenes of {len({s.date for s in scenes})} date: a timeline needs "
                         "several dated scenes (YYYY-MM-DD in each name)")
    model = load_model(config.rule.scan, ("red", "green", "blue")) if config.rule.scan.uses_model else None
    series = []
    for i in range(len(sites)):
        series.append(site_series(sites.iloc[[i]], scenes, config.rule, model))
        if progress is not None:
            progress(i + 1, len(sites))
    frame = site_frame(sites, series)
    with NewFolder(config.out) as staging:
        write_outputs(staging, frame, series, sites)
        record = timeline_record(config, frame, series, scenes, command, model, time.perf_counter() - tic)
        write_json(record, staging.path("timeline.json"))
        report(frame, series, record, staging.path("report.html"))
        staging.commit()
    return record


def site_frame(sites: gpd.GeoDataFrame, series: list[SiteSeries]) -> gpd.GeoDataFrame:
    """One row per site: kind, onset, built areas, the dates used and skipped; ranked by growth."""
    rows = pd.DataFrame({
        "site_id": [s.site_id for s in series],
        "kind": [s.kind for s in series],
        "kind_reason": [s.why for s in series],
        "onset_after": [s.onset_after for s in series],
        "onset_before": [s.onset_before for s in series],
        "built_m2_first": [float(s.built_m2[0]) if len(s.built_m2) else None for s in series],
        "built_m2_last": [float(s.built_m2[-1]) if len(s.built_m2) else None for s in series],
        "dates_used": [", ".join(s.dates) for s in series],
        "dates_skipped": ["; ".join(s.skipped) for s in series],
        "method": [s.method or None for s in series],
    })
    growth = (rows["built_m2_last"].fillna(-1) - rows["built_m2_first"].fillna(0)).to_numpy()
    order = np.lexsort((rows["site_id"].to_numpy(), -growth))
    rows["rank"] = pd.array(np.argsort(order) + 1, dtype="Int64")
    key = [chip_key(int(r), sid) for r, sid in zip(rows["rank"], rows["site_id"], strict=True)]
    rows["chart"] = [f"sites/{k}_chart.png" if len(s.dates) else None for k, s in zip(key, series, strict=True)]
    rows["filmstrip"] = [f"sites/{k}_filmstrip.png" if s.frames else None for k, s in zip(key, series, strict=True)]
    user = sites.drop(columns=[sites.geometry.name, "site_id"])
    user = user.rename(columns={c: f"user_{c}" for c in user.columns if c in rows.columns})
    frame = gpd.GeoDataFrame(pd.concat([rows, user.reset_index(drop=True)], axis=1),
                             geometry=sites.geometry.to_numpy(), crs=4326)
    return frame.iloc[order].reset_index(drop=True)


def parts_frame(series: list[SiteSeries]) -> gpd.GeoDataFrame:
    rows = [{"site_id": s.site_id, "onset_after": s.dates[k - 1], "onset_before": s.dates[k],
             "onset_year": int(s.dates[k][:4]), "area_m2": None, "geometry": geom}
            for s in series for geom, k in s.parts]
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=4326) if rows else gpd.GeoDataFrame(
        {"site_id": [], "onset_after": [], "onset_before": [], "onset_year": [], "area_m2": []},
        geometry=gpd.GeoSeries([], crs=4326))
    if len(frame):
        frame["area_m2"] = frame.to_crs(frame.estimate_utm_crs()).area.round(1)
    return frame


def series_csv(series: list[SiteSeries]) -> str:
    """``timeline.csv``: one row per site and usable date."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["site_id", "date", "scene", "built_m2", "changed_m2", "site_score", "cloud_fraction",
                     "valid_fraction"])
    for s in series:
        for i, date in enumerate(s.dates):
            if i < len(s.built_m2):
                writer.writerow([s.site_id, date, s.scenes[i].id, s.built_m2[i], s.changed_m2[i], s.site_score[i],
                                 s.cloud_fraction[i], s.valid_fraction[i]])
    return out.getvalue()


def write_outputs(staging: NewFolder, frame: gpd.GeoDataFrame, series: list[SiteSeries],
                  sites: gpd.GeoDataFrame) -> None:
    from importlib import resources

    write_geojson(frame, staging.path("timeline.geojson"))
    write_geojson(parts_frame(series), staging.path("parts.geojson"))
    staging.path("timeline.csv").write_text(series_csv(series), encoding="utf-8")
    for name in STYLES:
        staging.path(name).write_bytes((resources.files("detector") / "styles" / name).read_bytes())
    folder = staging.path("sites")
    folder.mkdir()
    by_id = {s.site_id: s for s in series}
    for row in frame.itertuples():
        s = by_id[row.site_id]
        if row.chart:
            chart(s, staging.path(row.chart))
        if row.filmstrip:
            filmstrip_png(s, staging.path(row.filmstrip))


def timeline_record(config: TimelineConfig, frame: gpd.GeoDataFrame, series: list[SiteSeries], scenes: list[Scene],
                    command: list[str] | None, model: Any, seconds: float) -> dict[str, Any]:
    """Everything needed to reproduce and defend the timelines: inputs, every scene's files and hashes, the model,
    the rules; per site the scenes used and the rule that applied."""
    used = {sc.id for s in series for sc in s.scenes}
    hashes = {sc.id: [file_record(f) for f in sc.date_source().local_files] for sc in scenes if sc.id in used}
    return {
        "detector_version": __version__,
        "command": command,
        "inputs": {"sites": file_record(config.sites), "catalog": str(config.catalog), "scenes": hashes},
        "parameters": {"bands": config.bands, "max_cloud": config.rule.max_cloud, "min_valid": config.rule.min_valid,
                       "site": plain(asdict(config.site)), "scan": plain(as_table(config.rule.scan)),
                       "kind": asdict(config.rule.kind)},
        "rule": config.rule.kind.describe(),
        "method": config.rule.scan.method,
        "fusion": METHODS[config.rule.scan.method].rule,
        "model": model.record() if model is not None else None,
        "sites": {s.site_id: {"kind": s.kind, "why": s.why, "scenes": [sc.id for sc in s.scenes],
                              "skipped": s.skipped, "method": s.method, "domain_check": s.check}
                  for s in series},
        "counts": {"sites": len(series), **frame["kind"].value_counts().to_dict()},
        "versions": versions(),
        "seconds": round(seconds, 2),
    }

