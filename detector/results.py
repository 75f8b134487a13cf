"""The results that ``run`` and ``batch`` share: the site table, change polygons, flags and the reviewer's
budget, the chip selection, carried-over verdicts, and the fields we own.

Both orchestrators (:mod:`detector.pipeline`, :mod:`detector.batch.run`)
call these on what the scan gathered; nothing here reads imagery.  Options
are named as the CLI names them unless the caller says otherwise
(:func:`apply_budget`'s ``name``).
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable, Collection
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import shapely

from aoi.cells import pixel_size_m
from detector import candidates
from detector.chips import chip_key
from detector.config import ReviewOptions, ScanOptions
from detector.errors import InputError
from detector.imagery import DateSource, Grid
from detector.methods import METHODS
from detector.options import flag
from detector.outputs import Staged
from detector.reviews import FIELDS as REVIEW_FIELDS
from detector.reviews import carry_over, labels, read_reviews
from detector.scan import Accumulated, Scored
from detector.scoring import ScoreRule, flags, site_table, threshold_for_max_flags, threshold_for_precision
from detector.zones import Zones

log = logging.getLogger(__name__)

OUR_FIELDS = ("site_id", "score", "rank", "flagged", "changed_area_m2", "changed_fraction", "valid_fraction",
              "cloud_fraction",
              "status", "shift_px", "shift_dy_px", "shift_dx_px", "shift_peak", "shift_corrected", "before_source",
              "after_source", "before_date", "after_date", "threshold", "method", *REVIEW_FIELDS,
              "chip_before", "chip_after", "chip_change", "cells", "cell_count")
KEPT = "reviews-kept.geojson"  # reviewed sites that a later run did not score
CANDIDATES = "candidates.geojson"  # cell mode: flagged cells merged into candidate sites (detector.candidates)
STYLES = ("sites.qml", "changes.qml", "change.qml")  # made by scripts/make_styles.py
RUN_OUTPUTS = ("sites.geojson", "changes.geojson", "change.tif", "chips", "report.html", "run.json", KEPT, *STYLES,
               "clouds_before.tif", "clouds_after.tif", CANDIDATES, "candidates.qml")


def renamed_user_columns(user: pd.DataFrame, ours: Collection[str]) -> pd.DataFrame:
    """The user's columns, each that clashes with one of ``ours`` renamed ``user_<name>`` (``user_<name>_2``...
    where that is taken too: a file that went through a run once already has ``user_score`` beside ``score``);
    names compared without case, as GeoPackage (SQLite) does."""
    clashing = {str(f).lower() for f in ours}
    taken = clashing | {str(c).lower() for c in user.columns}
    names = {}
    for column in (c for c in user.columns if str(c).lower() in clashing):
        name, k = f"user_{column}", 1
        while name.lower() in taken:
            k += 1
            name = f"user_{column}_{k}"
        taken.add(name.lower())
        names[column] = name
    return user.rename(columns=names)


def user_columns(sites: gpd.GeoDataFrame, more_fields: tuple[str, ...] = ()) -> list[str]:
    """The columns that came with the user's sites: not ours (nor ``more_fields``), not the geometry."""
    ours = {*OUR_FIELDS, *more_fields, sites.geometry.name}
    return [c for c in sites.columns if c not in ours]


def stage_styles(staging: Staged, names: tuple[str, ...]) -> None:
    """The QGIS styles: QGIS loads a same-named .qml beside a layer on its own."""
    for name in names:
        staging.path(name).write_bytes((resources.files("detector") / "styles" / name).read_bytes())


def chosen_for_chips(sites: gpd.GeoDataFrame, top: int) -> np.ndarray:
    """Sites that get chips: every flagged one and the ``top`` best ranked, where there is data."""
    ranked = pd.to_numeric(sites["rank"], errors="coerce").to_numpy(dtype=float)
    return ((sites["flagged"].to_numpy() | (ranked <= top)) & (sites["status"] != "no_coverage").to_numpy())


def with_chip_paths(sites: gpd.GeoDataFrame, chosen: np.ndarray) -> gpd.GeoDataFrame:
    """``chip_before``, ``chip_after``, ``chip_change``: paths relative to ``--out``, None without chips."""
    out = sites.copy()
    keys = [chip_key(r, i) if pick else None for r, i, pick in zip(out["rank"], out["site_id"], chosen, strict=True)]
    for kind in ("before", "after", "change"):
        out[f"chip_{kind}"] = [f"chips/{k}_{kind}.png" if k else None for k in keys]
    return out


def split_verdicts(verdicts: gpd.GeoDataFrame | None) -> tuple[gpd.GeoDataFrame | None, gpd.GeoDataFrame | None]:
    """Cell mode's earlier verdicts: those of cells, and those of candidate sites (ids ``cand-...``)."""
    if verdicts is None:
        return None, None
    mine = verdicts["site_id"].astype(str).str.startswith(candidates.PREFIX).to_numpy()
    return verdicts[~mine], verdicts[mine]


def candidate_results(cells: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, verdicts: gpd.GeoDataFrame | None,
                      kept: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Cell mode's candidate sites (:mod:`detector.candidates`) with the ids and verdicts of the earlier
    candidates (``verdicts``) they overlap; and ``kept`` (the cells' verdicts no cell took) with the candidate
    verdicts no candidate took."""
    found = candidates.keep_ids(candidates.merge(cells, changes), verdicts)
    found, left = carry_over(found, verdicts)
    found["flagged"] = True  # every candidate comes of flagged cells
    return found, gpd.GeoDataFrame(pd.concat([kept, left], ignore_index=True), crs=4326)


def candidate_changes(found: gpd.GeoDataFrame, changes: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The change polygons of each candidate's cells, under the candidate's id (for its chips)."""
    owner = {cell: cid for cid, cells in zip(found["site_id"], found["cells"], strict=True)
             for cell in cells.split(",")}
    mine = changes[changes["site_id"].isin(owner)].copy()
    mine["site_id"] = mine["site_id"].map(owner)
    return mine


def applied_rule(scene: Scored) -> dict[str, Any] | None:
    """What ``run.json`` says of how the scene was scored: the method that applied and the CNN's domain check
    (:func:`detector.fusion.domain_check`); None for a method without a CNN."""
    if scene.check is None:
        return None
    if scene.check["agreement"] is None:
        why = "too few classically changed pixels to check the CNN against"
    elif scene.check["in_domain"]:
        why = "the CNN agrees with the classical evidence often enough here"
    else:
        why = (f"the CNN agrees on {scene.check['agreement']:.1%} of the classically changed pixels, under "
               f"{scene.check['min_agreement']:.0%}: out of its domain")
        if METHODS[scene.scan.method].uses_model:
            why += " (kept: the method was asked for)"
    scale = scene.check.get("calibration") or {}
    if METHODS[scene.scan.method].uses_model and scale.get("cnn_probability_matched") is not None:
        why += (f"; the CNN calibrated to the scene by {scale['shift_logit']:+.2f} logits (a probability of "
                f"{scale['counts_as_half']:.3g} counts as 0.5: " +
                (f"limited to {scale['max_shift_logit']:g} logits, so it calls fewer pixels changed than"
                 if scale["limited"] else "it then calls as many pixels changed as") +
                f" the classical score, {scale['classical_changed_px']:,})")
    return {"rule": scene.scan.method, "why": why, **scene.check}


def earlier_reviews(out: Path, reviews: Path | None) -> gpd.GeoDataFrame | None:
    """Verdicts to carry over: those in ``out`` (kept reviews, then its sites and candidates), then ``reviews``;
    later win."""
    sources = [out / KEPT, out / "sites.geojson", out / CANDIDATES, reviews]
    found = [read_reviews(path).to_crs(4326) for path in sources if path is not None and path.is_file()]
    if reviews is not None and not reviews.is_file():
        read_reviews(reviews)  # the one-line error for a missing file
    if not found:
        return None
    return gpd.GeoDataFrame(pd.concat(found, ignore_index=True), crs=4326)


def apply_budget(review: ReviewOptions, rule: ScoreRule, sites: gpd.GeoDataFrame, labelled: pd.Series | None, *,
                 name: Callable[[str], str] = flag) -> tuple[gpd.GeoDataFrame, dict[str, Any]]:
    """Raise the threshold for ``max_flags`` or ``target_precision`` (else ``rule.threshold``); flag the sites
    again (:func:`detector.scoring.flags`), so flags an earlier budget set do not outlive it.

    ``name`` names an option as the user gave it (``--max-flags``, ``[run] max_flags``).
    Returns the sites and what ``run.json`` says of the threshold.
    """
    score = sites["score"].to_numpy(dtype=float)
    note: dict[str, Any] = {"chosen_by": name("threshold")}
    value = rule.threshold
    if review.max_flags is not None:
        eligible = flags(score, sites["status"].to_numpy(), -np.inf)  # every site the rule could flag
        value = threshold_for_max_flags(score, eligible, review.max_flags, floor=rule.threshold)
        note = {"chosen_by": f"{name('max_flags')} {review.max_flags}"}
    elif review.target_precision is not None:
        value, note = threshold_for_target(review, sites, labelled, name=name)
    out = sites.copy()
    out["flagged"] = flags(score, sites["status"].to_numpy(), value)
    out["threshold"] = value
    return out, {"value": value, "rule": rule.describe(value), **note}


def check_labelled(review: ReviewOptions, site_ids: pd.Series, labelled: pd.Series | None, *,
                   verdicts: bool) -> None:
    """Refuse ``target_precision`` before any scoring where no site can be labelled: ``labels`` that name none of
    the sites, or no labels and no earlier ``verdicts`` to carry over (:func:`threshold_for_target` needs some)."""
    if review.target_precision is None:
        return
    if labelled is not None and not np.isfinite(site_ids.astype(str).map(labelled).to_numpy(dtype=float)).any():
        raise InputError(f"--labels {review.labels} labels none of the {len(site_ids)} sites of this run (by "
                         "site_id): give the labels of these sites, or review them first")
    if labelled is None and not verdicts:
        raise InputError("--target-precision needs labelled sites: give --labels, or review the sites.geojson of "
                         "an earlier run in --out (or --reviews) first")


def threshold_for_target(review: ReviewOptions, sites: gpd.GeoDataFrame, labelled: pd.Series | None, *,
                         name: Callable[[str], str]) -> tuple[float, dict[str, Any]]:
    """The threshold of ``target_precision`` on the labelled sites (``labels``, else the carried verdicts)."""
    source = str(review.labels) if labelled is not None else "the carried-over review_status"
    if labelled is not None:
        truth = sites["site_id"].astype(str).map(labelled).to_numpy(dtype=float)
    else:
        truth = labels(sites["review_status"])
    target = float(review.target_precision or 1.0)
    choice = threshold_for_precision(sites["score"].to_numpy(dtype=float), truth, target)
    if choice is None:
        raise InputError(f"no threshold reaches precision {target} on the {int(np.isfinite(truth).sum())} labelled "
                         f"sites of {source}: lower {name('target_precision')} or label more sites")
    value, precision, recall = choice
    note = {"chosen_by": f"{name('target_precision')} {target}", "labels": source,
            "labelled_sites": int(np.isfinite(truth).sum()), "precision": round(precision, 4),
            "recall": round(recall, 4)}
    return value, {**note, **few_labels(truth, source)}


MIN_LABELS, MIN_POSITIVE_LABELS = 20, 5  # under these a precision on the labels says little


def few_labels(truth: np.ndarray, source: str) -> dict[str, str]:
    """A warning (and what ``run.json`` says) where too few sites are labelled for their precision to mean
    much: under :data:`MIN_LABELS` labelled sites or :data:`MIN_POSITIVE_LABELS` changed ones."""
    known = truth[np.isfinite(truth)]
    if len(known) >= MIN_LABELS and known.sum() >= MIN_POSITIVE_LABELS:
        return {}
    text = (f"only {len(known)} labelled sites ({int(known.sum())} changed) in {source}: a precision measured on "
            f"so few means little (at least {MIN_LABELS}, {MIN_POSITIVE_LABELS} changed, are wanted)")
    log.warning("%s", text)
    return {"warning": text}


def results(scan: ScanOptions, zones: Zones, acc: Accumulated, grid: Grid,
            dates: tuple[DateSource, DateSource]) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The ranked sites and their change polygons, both in EPSG:4326."""
    sites = site_results(scan, zones, acc, grid, *dates)
    # polygons carry zone numbers: map them with the zones' order, not the ranked sites'
    changes = change_frame(acc.polygons, zones.frame["site_id"].astype(str).to_numpy(), grid,
                           min_area_m2=scan.min_area_m2)
    return sites, changes


def site_results(scan: ScanOptions, zones: Zones, acc: Accumulated, grid: Grid, before: DateSource,
                 after: DateSource) -> gpd.GeoDataFrame:
    """One row per zone: the user's columns, the scores, the provenance; EPSG:4326."""
    frame = zones.frame
    geoms = frame.geometry.values
    centroids = gpd.GeoSeries(shapely.centroid(geoms), crs=grid.crs).to_crs(4326)
    pixel_h, pixel_w = pixel_size_m(grid.crs, grid.transform, centroids.x.to_numpy(), centroids.y.to_numpy())
    expected = shapely.area(geoms) / abs(grid.transform.determinant)
    table = site_table(acc.hist, expected, np.asarray(pixel_h) * np.asarray(pixel_w), rule=scan.rule,
                       obscured_px=acc.obscured)
    shift = np.round(acc.shift, 2)
    table["shift_px"] = np.round(np.hypot(shift[:, 0], shift[:, 1]), 2)
    table["shift_dy_px"], table["shift_dx_px"] = shift[:, 0], shift[:, 1]
    table["shift_peak"] = np.round(acc.peak, 1)
    table["shift_corrected"] = acc.applied
    table["before_source"], table["after_source"] = str(before.path), str(after.path)
    table["before_date"], table["after_date"] = before.date, after.date
    table["threshold"] = scan.rule.threshold
    table["method"] = scan.method
    user = renamed_user_columns(frame.drop(columns=[frame.geometry.name, "site_id"]), OUR_FIELDS)
    out = pd.concat([frame[["site_id"]], table.set_index(frame.index), user], axis=1)
    out = gpd.GeoDataFrame(out, geometry=frame.geometry.values, crs=grid.crs).to_crs(4326)
    return out.sort_values("rank", na_position="last", kind="stable")


def change_frame(polygons: list[tuple[int, float, Any]], site_ids: np.ndarray, grid: Grid, *,
                 min_area_m2: float) -> gpd.GeoDataFrame:
    """Change polygons with site id, area in m2 and mean score; small ones dropped."""
    zone = np.array([p[0] for p in polygons], dtype=np.int64)
    frame = gpd.GeoDataFrame({"site_id": site_ids[zone] if len(zone) else np.array([], dtype=object),
                              "score": np.round([p[1] for p in polygons], 4)},
                             geometry=[p[2] for p in polygons], crs=grid.crs)
    if frame.empty:
        frame["area_m2"] = np.zeros(0)
        return frame.to_crs(4326)
    metric = frame.to_crs(frame.estimate_utm_crs())
    frame["area_m2"] = np.round(metric.area.to_numpy(), 1)
    frame = frame[frame["area_m2"] >= min_area_m2]
    return frame.sort_values(["site_id", "area_m2"], ascending=[True, False]).to_crs(4326)


def versions() -> dict[str, str]:
    """Versions of Python, GDAL and the packages that shape the numbers."""
    found = {"python": platform.python_version(), "gdal": rasterio.__gdal_version__}
    for name in ("numpy", "scipy", "rasterio", "geopandas", "shapely", "pyproj", "pyogrio", "scikit-image", "torch"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found
