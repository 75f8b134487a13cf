"""The end of a batch: ranks, carried-over verdicts, the reviewer's budget, chips, the report.

It runs in the main process once the sites have run, and again at every
later run of the same batch, so a new review, label file or budget needs no
site scored again.  The stored rows get their rank, flag, threshold, verdicts
and chip paths in one SQLite transaction; the files made whole each time
(``sites.geojson``, ``changes.geojson``, ``reviews-kept.geojson``, ``chips/``,
``report.html``, the styles) are staged and renamed into place by the caller,
``batch.json`` last.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from detector import fusion
from detector.catalog import Scene
from detector.chips import quiet_nodata, write_part
from detector.config import BatchConfig
from detector.errors import DetectorError, first_line
from detector.imagery import match_bands, reference_grid
from detector.outputs import Staging, file_record, write_geojson
from detector.pipeline import (
    KEPT,
    apply_budget,
    chosen_for_chips,
    earlier_reviews,
    flag_rule,
    model_path,
    stage_styles,
    with_chip_paths,
)
from detector.reviews import FIELDS as REVIEW_FIELDS
from detector.reviews import carry_over, read_labels, read_reviews, review_rows
from detector.store import ResultStore

log = logging.getLogger(__name__)

VERDICT = ("site_id", *REVIEW_FIELDS)
UNREVIEWED = ("unreviewed", "", "")
FINISHED = ("rank", "flagged", "threshold", *REVIEW_FIELDS, "chip_before", "chip_after", "chip_change")
CHIP_THREADS = 4  # GDAL releases the GIL while it opens and reads
STYLES = ("sites.qml", "changes.qml")  # for sites.geojson and changes.geojson


def check_finish_inputs(config: BatchConfig) -> None:
    """Read ``[run] reviews`` and ``labels`` once before any site runs, so a bad file stops the batch early."""
    earlier_reviews(config.run)
    if config.run.labels is not None:
        read_labels(config.run.labels)


@dataclass(frozen=True, slots=True)
class Finished:
    """The end of a batch: the sites as in ``sites.geojson``, what ``batch.json`` says of the threshold, and
    the review state it records."""

    sites: gpd.GeoDataFrame
    threshold: dict[str, Any]
    review_state: dict[str, Any]


def finish_sites(config: BatchConfig, store: ResultStore, order: list[str], scenes: list[Scene],
                 staging: Staging) -> Finished:
    """Rank the done sites, carry verdicts over, apply the budget, write chips; stage the vector outputs.

    The caller stores ``sites`` into the GeoPackage (:data:`FINISHED` columns)
    once every staged file is complete, then commits them.
    """
    run = config.run
    stored = store.ranked_sites(order)
    edits, given = verdict_edits(config, review_rows(stored, store.gpkg), previous_state(config.out))
    sites, kept = carry_over(stored, edits, every_row=True)
    sites, threshold = apply_budget(run, sites, read_labels(run.labels) if run.labels else None)
    changes = store.changes()
    chosen = sites[chosen_for_chips(sites, run.chips)]
    made = write_batch_chips(config, chosen, changes, scenes, store, staging.path("chips"))
    sites = with_chip_paths(sites, sites["site_id"].isin(made).to_numpy())
    write_geojson(sites, staging.path("sites.geojson"))
    write_geojson(changes, staging.path("changes.geojson"))
    if len(kept) or (config.out / KEPT).exists():  # an old one must not outlive its verdicts
        write_geojson(kept, staging.path(KEPT))
    stage_styles(staging, STYLES)
    return Finished(sites, threshold, {"verdicts": verdicts_of(sites), "given": given})


def previous_state(out: Path) -> dict[str, Any]:
    """The review state the last end of this batch recorded in ``batch.json``; empty before the first."""
    record = out / "batch.json"
    return (json.loads(record.read_text(encoding="utf-8")).get("review_state") or {}) if record.is_file() else {}


def verdict_edits(config: BatchConfig, own: gpd.GeoDataFrame,
                  state: dict[str, Any]) -> tuple[gpd.GeoDataFrame, dict[str, list[str]]]:
    """Verdict rows to carry over, later ones winning, and the verdicts ``[run] reviews`` holds now.

    At the first end of a batch every reviewed row counts, in this order: the
    stored rows (``own``), ``reviews-kept.geojson``, ``sites.geojson``,
    ``[run] reviews``.  Later, only what changed since the last end does, so
    the latest edit wins and a file that stays in the configuration undoes
    nothing: each site's verdict as last written; kept rows of sites not
    written; then the rows of ``[run] reviews``, ``sites.gpkg`` and
    ``sites.geojson`` whose verdict differs from what that file said at the
    last end (an edit, even back to unreviewed, or a note).  A site edited
    differently in both files since then takes ``sites.geojson``'s verdict,
    with a warning.
    """
    out, given_path = config.out, config.run.reviews
    kept, given, published = (read_reviews(p) if p is not None and p.is_file() else own.iloc[:0]
                              for p in (out / KEPT, given_path, out / "sites.geojson"))
    if "verdicts" not in state:
        frames = [reviewed(f) for f in (own, kept, published, given)]  # as `run` orders them
    else:
        written = {k: tuple(v) for k, v in state["verdicts"].items()}
        said = {k: tuple(v) for k, v in (state.get("given") or {}).items()}
        frames = [as_written(own, written), reviewed(kept[~kept["site_id"].isin(written.keys())]),
                  edited(given, said), edited(own, written), edited(published, written)]
        warn_conflicts(frames[3], frames[4])
    edits = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry=own.geometry.name, crs=4326)
    return edits, verdicts_of(given)


def verdicts_of(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Each site's verdict, where it is not the default (unreviewed, no reviewer, no notes)."""
    return {str(site_id): list(verdict) for site_id, *verdict in frame[list(VERDICT)].itertuples(index=False)
            if tuple(verdict) != UNREVIEWED}


def warn_conflicts(in_gpkg: gpd.GeoDataFrame, in_geojson: gpd.GeoDataFrame) -> None:
    both = in_gpkg.merge(pd.DataFrame(in_geojson[list(VERDICT)]), on="site_id", suffixes=("", "_json"))
    differ = np.zeros(len(both), dtype=bool)
    for field in VERDICT[1:]:
        differ |= (both[field] != both[f"{field}_json"]).to_numpy()
    for site_id in both["site_id"][differ]:
        log.warning("site %s was reviewed differently in sites.gpkg and sites.geojson since the last run; "
                    "the verdict of sites.geojson is kept", site_id)


def reviewed(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return frame[frame["review_status"] != "unreviewed"]


def as_written(own: gpd.GeoDataFrame, written: dict[str, tuple[str, ...]]) -> gpd.GeoDataFrame:
    """The stored rows with the verdicts the last end wrote (a row edited since may say otherwise)."""
    rows = own[own["site_id"].isin(written.keys())].copy()
    for k, field in enumerate(VERDICT[1:]):
        rows[field] = [written[s][k] for s in rows["site_id"]]
    return rows


def edited(frame: gpd.GeoDataFrame, written: dict[str, tuple[str, ...]]) -> gpd.GeoDataFrame:
    """Rows whose verdict differs from what the last end wrote for their site."""
    now = zip(frame["review_status"], frame["reviewer"], frame["notes"], strict=True)
    return frame[[v != written.get(s, UNREVIEWED) for s, v in zip(frame["site_id"], now, strict=True)]]


def write_batch_chips(config: BatchConfig, chosen: gpd.GeoDataFrame, changes: gpd.GeoDataFrame,
                      scenes: list[Scene], store: ResultStore, folder: Path) -> set[str]:
    """The chips of the ``chosen`` sites, each from its own pair of scenes and change raster; the ids made.

    Sites run in a few threads (opening the files is most of the time).  A
    site whose scenes left the catalog, or whose files cannot be read any
    more, gets no chips and a warning: its score stands.
    """
    folder.mkdir()
    by_id = {scene.id: scene for scene in scenes}

    def one(site: gpd.GeoDataFrame) -> str | None:
        site_id = str(site["site_id"].iloc[0])
        pair = (by_id.get(str(site["before_scene"].iloc[0])), by_id.get(str(site["after_scene"].iloc[0])))
        if pair[0] is None or pair[1] is None:
            log.warning("site %s: its scenes are no longer in %s; no chips", site_id, config.catalog)
            return None
        try:
            dates = (pair[0].date_source(), pair[1].date_source())
            names = match_bands(*dates)
            write_part(site, changes[changes["site_id"] == site_id], dates, names, reference_grid(dates[0], names),
                       config.out / store.raster_name(site_id), folder,
                       pixel_threshold=config.run.rule.pixel_threshold)
        except (DetectorError, OSError) as exc:
            log.warning("site %s: no chips (%s)", site_id, first_line(exc))
            return None
        return site_id

    with quiet_nodata(), ThreadPoolExecutor(max_workers=CHIP_THREADS) as pool:
        made = pool.map(one, [chosen.iloc[[i]] for i in range(len(chosen))])
        return {site_id for site_id in made if site_id is not None}


def finish_record(config: BatchConfig, threshold: dict[str, Any] | None) -> dict[str, Any]:
    """What ``batch.json`` and the report say of the method, the model and the threshold."""
    run = config.run
    return {
        "method": run.method,
        "fusion": fusion.RULE if run.method == "fused" else None,
        "model": None if run.method == "classical" else file_record(model_path(run)),
        "threshold": threshold or {"value": run.rule.threshold, "rule": flag_rule(run.rule, run.rule.threshold),
                                   "chosen_by": "--threshold"},
    }
