"""Reviewers' verdicts on sites: the review fields, carrying them over between runs, and labels.

Every ``sites.geojson`` has ``review_status`` (one of :data:`STATUSES`),
``reviewer`` and ``notes``.  A later run over the same sites takes them over
by ``site_id`` from the earlier ``sites.geojson`` (or from ``--reviews``), so
a reviewer's work is never lost; reviewed sites that the new run does not
score are kept in ``reviews-kept.geojson`` beside it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from detector.errors import InputError, MissingFileError, first_line

log = logging.getLogger(__name__)

STATUSES = ("unreviewed", "confirmed", "rejected", "unsure")
FIELDS = ("review_status", "reviewer", "notes")
POSITIVE = {"1", "true", "yes", "change", "changed", "confirmed", "positive", "new", "expanded"}
NEGATIVE = {"0", "false", "no", "no_change", "no change", "unchanged", "rejected", "negative", "false_positive"}
UNKNOWN = {"", "nan", "none", "null", "unknown", "unsure", "unreviewed", "?"}  # said as such: NaN


def read_reviews(path: Path) -> gpd.GeoDataFrame:
    """The reviewed sites of a sites file: ``site_id``, the review fields, geometry.

    Raises InputError when the file has no ``site_id`` or an unknown ``review_status``.
    """
    frame = _read_sites_file(path, "reviews")
    if frame.empty:
        return gpd.GeoDataFrame({"site_id": [], **{f: [] for f in FIELDS}}, geometry=[], crs=4326)
    if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry.name not in frame.columns:
        raise InputError(f"{path} has no geometry: give the sites.geojson written by `detector run`")
    if frame.crs is None:
        frame = frame.set_crs(4326)  # GeoJSON's own CRS
    return review_rows(frame, path)


def review_rows(frame: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    """``site_id``, the review fields (missing ones unreviewed, statuses checked) and geometry of sites read
    from ``path``."""
    frame = frame.copy()
    for field in FIELDS:
        if field not in frame.columns:
            frame[field] = "unreviewed" if field == "review_status" else ""
    status = frame["review_status"].fillna("unreviewed").astype(str).str.strip().str.lower()
    unknown = sorted(set(status) - set(STATUSES))
    if unknown:
        raise InputError(f"{path} has review_status {unknown[:3]}: use one of {', '.join(STATUSES)}")
    frame["review_status"] = status
    frame["site_id"] = frame["site_id"].astype(str)
    for field in ("reviewer", "notes"):
        frame[field] = frame[field].fillna("").astype(str)
    return frame[["site_id", *FIELDS, frame.geometry.name]]


def carry_over(sites: gpd.GeoDataFrame, reviews: gpd.GeoDataFrame | None, *,
               every_row: bool = False) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """``sites`` with the review fields filled from ``reviews`` by ``site_id``.

    A verdict is carried only to the same ground: the old and new outlines
    must overlap by more than half (intersection over union), so a cell id
    that names other ground after a change of ``--cell-m`` does not inherit
    it.  Later reviewed rows of ``reviews`` win over earlier ones; unreviewed
    rows say nothing and never hide a verdict, unless ``every_row`` (each
    row is a known edit, such as setting a site back to unreviewed).
    Returns the sites, and the reviewed rows that no site took (kept, not dropped).
    """
    out = sites.copy()
    out["review_status"], out["reviewer"], out["notes"] = "unreviewed", "", ""
    reviewed = reviews if reviews is None or every_row else reviews[reviews["review_status"] != "unreviewed"]
    if reviewed is None or reviewed.empty:
        return out, gpd.GeoDataFrame({"site_id": [], **{f: [] for f in FIELDS}}, geometry=[], crs=4326)
    known = reviewed.to_crs(4326).drop_duplicates("site_id", keep="last").set_index("site_id")
    ids = out["site_id"].astype(str)
    hit = ids.isin(known.index).to_numpy()
    old = known.geometry.reindex(ids[hit]).to_numpy()
    new = out.geometry.to_crs(4326).to_numpy()[hit]
    overlap = shapely.area(shapely.intersection(old, new)) / np.maximum(shapely.area(shapely.union(old, new)), 1e-18)
    take = np.flatnonzero(hit)[overlap > 0.5]
    for field in FIELDS:
        out.iloc[take, out.columns.get_loc(field)] = known.loc[ids.iloc[take], field].to_numpy()
    left = known.reset_index()
    left = left[~left["site_id"].isin(set(ids.iloc[take])) & (left["review_status"] != "unreviewed")]
    if len(left):
        log.warning("%d reviewed sites are not in this run (or lie elsewhere now); their verdicts are kept in "
                    "reviews-kept.geojson", len(left))
    return out, gpd.GeoDataFrame(left, geometry=left.geometry.name, crs=4326)


def labels(values: pd.Series) -> np.ndarray:
    """1 (changed), 0 (not) or NaN (unknown) per site, from a label or review_status column."""
    number = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    words = values.astype(str).str.strip().str.lower()
    found = np.where(words.isin(POSITIVE), 1.0, np.where(words.isin(NEGATIVE), 0.0, np.nan))
    return np.where(np.isin(number, (0.0, 1.0)), number, found)


def read_labels(path: Path) -> pd.Series:
    """1 / 0 / NaN per ``site_id`` from a labelled sites file (``label`` or ``review_status`` column)."""
    frame = _read_sites_file(path, "labels")
    return pd.Series(site_labels(frame, path), index=frame["site_id"].astype(str)).groupby(level=0).last()


def _read_sites_file(path: Path, role: str) -> gpd.GeoDataFrame:
    """A sites file written by ``detector run`` (then edited), or a one-line error naming it."""
    if not Path(path).is_file():
        raise MissingFileError(f"{role} file {path} does not exist: give a sites.geojson written by `detector run`")
    try:
        # GDAL's GeoJSON reader makes a text column of dates (notes) a datetime one unless told not to
        options = {"DATE_AS_STRING": "YES"} if Path(path).suffix.lower() in (".geojson", ".json") else {}
        frame = gpd.read_file(path, **options)
    except Exception as exc:
        raise InputError(f"{path} cannot be read as a vector file ({first_line(exc, limit=80)})") from None
    if len(frame) and "site_id" not in frame.columns:
        raise InputError(f"{path} has no site_id column: give a sites.geojson written by `detector run`")
    return frame


def site_labels(sites: pd.DataFrame, path: Path) -> np.ndarray:
    """:func:`labels` of a ``label`` column (preferred) or ``review_status``."""
    column = next((c for c in ("label", "review_status") if c in sites.columns), None)
    if column is None:
        raise InputError(f"{path} has no label or review_status column: review the sites first "
                         f"(found {list(sites.columns)})")
    found = labels(sites[column])
    words = sites[column].astype(str).str.strip().str.lower()
    odd = np.flatnonzero(np.isnan(found) & sites[column].notna().to_numpy() & ~words.isin(UNKNOWN).to_numpy())
    if odd.size:
        raise InputError(f"{path} row {int(odd[0]) + 1} has {column} '{sites[column].iloc[odd[0]]}': give 1 or 0 "
                         "(or yes / no, changed / unchanged, confirmed / rejected), or leave it empty where "
                         "unknown")
    return found
