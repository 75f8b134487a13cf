"""Which verdicts the end of a batch carries over: the review state between runs of one batch.

A batch's verdicts live in two files a reviewer may edit (``sites.gpkg`` and
``sites.geojson``) and may come from a third (``[run] reviews``).
``batch.json`` records the state the last end wrote, so that later only
what was edited since counts (:func:`verdict_edits`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd

from detector.results import KEPT
from detector.reviews import FIELDS as REVIEW_FIELDS
from detector.reviews import read_reviews

log = logging.getLogger(__name__)

VERDICT = ("site_id", *REVIEW_FIELDS)
UNREVIEWED = ("unreviewed", "", "")


def previous_state(out: Path) -> dict[str, Any]:
    """The review state the last end of this batch recorded in ``batch.json``; empty before the first."""
    record = out / "batch.json"
    return (json.loads(record.read_text(encoding="utf-8")).get("review_state") or {}) if record.is_file() else {}


def verdict_edits(out: Path, given_path: Path | None, own: gpd.GeoDataFrame,
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
