"""The end of a batch: ranks, carried-over verdicts, the reviewer's budget, chips, the report; for a region
batch, the candidate sites merged over the whole region (:func:`finish_region`).

It runs in the main process once the sites have run, and again at every
later run of the same batch, so a new review, label file or budget needs no
site scored again.  The stored rows get their rank, flag, threshold, verdicts
and chip paths in one SQLite transaction; the files made whole each time
(``sites.geojson``, ``changes.geojson``, ``reviews-kept.geojson``, ``chips/``,
``report.html``, the styles) are staged and renamed into place by the caller,
``batch.json`` last.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np

from detector.batch.catalog import Scene
from detector.batch.config import BatchConfig
from detector.batch.store import ResultStore
from detector.batch.verdicts import previous_state, verdict_edits, verdicts_of
from detector.chips import quiet_nodata, write_part
from detector.errors import DetectorError, first_line
from detector.files import file_record
from detector.imagery import match_bands, reference_grid
from detector.methods import METHODS, model_path
from detector.outputs import Staging, write_geojson
from detector.results import (
    CANDIDATES,
    KEPT,
    apply_budget,
    candidate_results,
    check_labelled,
    chosen_for_chips,
    earlier_reviews,
    split_verdicts,
    stage_styles,
    with_chip_paths,
)
from detector.reviews import FIELDS as REVIEW_FIELDS
from detector.reviews import carry_over, read_labels, review_rows

log = logging.getLogger(__name__)

FINISHED = ("rank", "flagged", "threshold", *REVIEW_FIELDS, "chip_before", "chip_after", "chip_change")
CHIP_THREADS = 4  # GDAL releases the GIL while it opens and reads
STYLES = ("sites.qml", "changes.qml")  # for sites.geojson and changes.geojson


def toml_key(key: str) -> str:
    """An option as a batch file names it."""
    return f"[run] {key}"


def check_finish_inputs(config: BatchConfig, sites: gpd.GeoDataFrame) -> None:
    """Read ``[run] reviews`` and ``labels`` once before any site runs, so a bad file stops the batch early; and
    refuse a ``target_precision`` that no site's label could serve (:func:`detector.results.check_labelled`)."""
    verdicts = earlier_reviews(config.out, config.review.reviews)
    labelled = read_labels(config.review.labels) if config.review.labels is not None else None
    if config.region is None:  # a region's cells are not known before they are scanned
        check_labelled(config.review, sites["site_id"], labelled,
                       verdicts=verdicts is not None or (config.out / "sites.gpkg").exists())


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
    review = config.review
    stored = store.ranked_sites(order)
    edits, given = verdict_edits(config.out, review.reviews, review_rows(stored, store.gpkg),
                                 previous_state(config.out))
    sites, kept = carry_over(stored, edits, every_row=True)
    labelled = read_labels(review.labels) if review.labels else None
    sites, threshold = apply_budget(review, config.scan.rule, sites, labelled, name=toml_key)
    changes = store.changes()
    chosen = sites[chosen_for_chips(sites, review.chips)]
    made = write_batch_chips(config, chosen, changes, scenes, store, staging.path("chips"))
    sites = with_chip_paths(sites, sites["site_id"].isin(made).to_numpy())
    write_geojson(sites, staging.path("sites.geojson"))
    write_geojson(changes, staging.path("changes.geojson"))
    if len(kept) or (config.out / KEPT).exists():  # an old one must not outlive its verdicts
        write_geojson(kept, staging.path(KEPT))
    stage_styles(staging, STYLES)
    return Finished(sites, threshold, {"verdicts": verdicts_of(sites), "given": given})


@dataclass(frozen=True, slots=True)
class RegionFinished:
    """The end of a region batch: the cells ranked and flagged, their candidate sites, the threshold."""

    cells: gpd.GeoDataFrame
    candidates: gpd.GeoDataFrame
    threshold: dict[str, Any]


REGION_FINISHED = ("rank", "flagged", "threshold")  # what the end of a region batch sets in its stored cells
REGION_STYLES = ("candidates.qml",)


def finish_region(config: BatchConfig, store: ResultStore, staging: Staging) -> RegionFinished:
    """Rank and flag every stored cell, merge the flagged ones into candidates over the whole region (across
    block borders), carry verdicts on earlier candidates over by outline, as ``run`` does in cell mode;
    stage ``candidates.geojson`` and ``reviews-kept.geojson``.

    The caller stores the cells' :data:`REGION_FINISHED` columns once every staged file is complete.
    """
    review = config.review
    cells = store.ranked_cells()
    labelled = read_labels(review.labels) if review.labels else None
    cells, threshold = apply_budget(review, config.scan.rule, cells, labelled, name=toml_key)
    cell_verdicts, candidate_verdicts = split_verdicts(earlier_reviews(config.out, review.reviews))
    _, kept = carry_over(cells.iloc[:0], cell_verdicts)  # reviewed cells wait in reviews-kept, never dropped
    found, kept = candidate_results(cells, store.changes(), candidate_verdicts, kept)
    found = with_chip_paths(found, np.zeros(len(found), bool))
    write_geojson(found, staging.path(CANDIDATES))
    if len(kept) or (config.out / KEPT).exists():
        write_geojson(kept, staging.path(KEPT))
    stage_styles(staging, REGION_STYLES)
    return RegionFinished(cells, found, threshold)


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
                       pixel_threshold=config.scan.rule.pixel_threshold)
        except (DetectorError, OSError) as exc:
            log.warning("site %s: no chips (%s)", site_id, first_line(exc))
            return None
        return site_id

    with quiet_nodata(), ThreadPoolExecutor(max_workers=CHIP_THREADS) as pool:
        made = pool.map(one, [chosen.iloc[[i]] for i in range(len(chosen))])
        return {site_id for site_id in made if site_id is not None}


def finish_record(config: BatchConfig, threshold: dict[str, Any] | None) -> dict[str, Any]:
    """What ``batch.json`` and the report say of the method, the model and the threshold."""
    scan = config.scan
    return {
        "method": scan.method,
        "fusion": METHODS[scan.method].rule,
        "model": file_record(model_path(scan)) if scan.uses_model else None,
        "threshold": threshold or {"value": scan.rule.threshold, "rule": scan.rule.describe(scan.rule.threshold),
                                   "chosen_by": toml_key("threshold")},
    }
