"""Candidate sites: in cell mode, the flagged cells' change polygons that touch (or lie within ``GAP_M`` of each
other) merged into one site each, so a compound that spans eight cells is one row to review, not eight.

A flagged cell is one piece (its change polygons); flagged cells whose pieces lie within the gap of each
other merge, so no candidate is split inside a cell and there are never more candidates than flagged cells.
A candidate's outline is the union of its change polygons, grown by half the gap (and a flagged cell
without polygons stands for itself); its ``score`` is the best of its cells', ``changed_area_m2`` the area
of its polygons, ``cells`` the ids of the cells it spans.  Its ``site_id`` is the id of the earlier
candidate whose outline it overlaps by more than half (intersection over union), so ids and verdicts carry
over from run to run; a new one gets ``cand-`` and a hash of its outline.  A candidate file is a site file:
``--sites candidates.geojson`` scores those outlines again.
"""

from __future__ import annotations

import hashlib

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy import sparse
from scipy.sparse import csgraph

from detector.scoring import rank

PREFIX = "cand-"  # the ids of candidate sites (never a cell's id, r<row>c<col>)
GAP_M = 50.0  # change polygons this close belong to one candidate
PROVENANCE = ("before_source", "after_source", "before_date", "after_date", "threshold", "method")


def merge(cells: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, *, gap_m: float = GAP_M) -> gpd.GeoDataFrame:
    """Candidates (EPSG:4326, ranked) of the flagged ``cells`` and the ``changes`` polygons inside them.

    A flagged cell is one piece (its change polygons, or itself when it kept none); two pieces within
    ``gap_m`` of each other are one candidate, so there are never more candidates than flagged cells.
    """
    flagged = cells[cells["flagged"].astype(bool)].reset_index(drop=True)
    if flagged.empty:
        return empty(cells)
    utm = flagged.estimate_utm_crs()
    polygons = changes[changes["site_id"].isin(set(flagged["site_id"]))].to_crs(utm)
    by_cell = polygons.dissolve(by="site_id").geometry
    area = polygons.geometry.area.groupby(polygons["site_id"]).sum()
    ids = flagged["site_id"].to_numpy()
    pieces = np.array([by_cell.get(i, g) for i, g in zip(ids, flagged.to_crs(utm).geometry, strict=True)],
                      dtype=object)
    group = connected(pieces, gap_m)
    rows = []
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        outline = shapely.union_all(shapely.buffer(pieces[members], gap_m / 2))
        rows.append({"score": float(flagged["score"].iloc[members].max()),
                     "changed_area_m2": round(float(area.reindex(ids[members]).fillna(0).sum()), 1),
                     "cells": ",".join(sorted(ids[members])), "cell_count": len(members), "geometry": outline})
    out = gpd.GeoDataFrame(rows, geometry="geometry", crs=utm).to_crs(4326)
    first = flagged.iloc[0]
    for field in PROVENANCE:
        out[field] = first[field]
    out["rank"] = pd.array(rank(out["score"].to_numpy(), out["changed_area_m2"].to_numpy()), dtype="Int64")
    out["site_id"] = [new_id(g) for g in out.geometry]
    return out.sort_values("rank", kind="stable").reset_index(drop=True)


def connected(pieces: np.ndarray, gap_m: float) -> np.ndarray:
    """The group of each piece: pieces within ``gap_m`` of each other, directly or through others, share one."""
    left, right = shapely.STRtree(pieces).query(pieces, predicate="dwithin", distance=gap_m)
    graph = sparse.coo_matrix((np.ones(len(left)), (left, right)), shape=(len(pieces), len(pieces)))
    return csgraph.connected_components(graph, directed=False)[1]


def new_id(outline: object) -> str:
    """``cand-`` and a hash of the outline (7 decimals, as the GeoJSON holds it)."""
    return PREFIX + hashlib.sha1(shapely.to_wkb(shapely.set_precision(outline, 1e-7)), usedforsecurity=False
                                  ).hexdigest()[:10]


def keep_ids(candidates: gpd.GeoDataFrame, earlier: gpd.GeoDataFrame | None) -> gpd.GeoDataFrame:
    """Each candidate takes the ``site_id`` of the earlier candidate it overlaps by more than half (IoU), so
    verdicts carried over by id find it."""
    if earlier is None or earlier.empty or candidates.empty:
        return candidates
    old = earlier.to_crs(4326).geometry.to_numpy()
    new = candidates.geometry.to_numpy()
    pairs = shapely.STRtree(old).query(new, predicate="intersects")
    if not pairs.size:
        return candidates
    iou = shapely.area(shapely.intersection(new[pairs[0]], old[pairs[1]])) / np.maximum(
        shapely.area(shapely.union(new[pairs[0]], old[pairs[1]])), 1e-18)
    out = candidates.copy()
    ids = out["site_id"].to_numpy(dtype=object)
    for n, o, v in sorted(zip(pairs[0], pairs[1], iou, strict=True), key=lambda t: t[2]):  # the best one last
        if v > 0.5:
            ids[n] = earlier["site_id"].iloc[o]
    out["site_id"] = ids
    return out


def empty(cells: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    columns = ["site_id", "score", "rank", "changed_area_m2", "cells", "cell_count", *PROVENANCE]
    return gpd.GeoDataFrame({c: [] for c in columns}, geometry=gpd.GeoSeries([], crs=4326))
