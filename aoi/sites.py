"""Read candidate sites from any common vector format or a CSV of coordinates.

The result is always a GeoDataFrame in EPSG:4326 with one polygon per site,
a unique string ``site_id`` and the user's attributes unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from detector.errors import InputError, MissingFileError, first_line

log = logging.getLogger(__name__)

LON_NAMES = ("lon", "long", "longitude", "lng", "x")
LAT_NAMES = ("lat", "latitude", "y")
ID_NAMES = ("site_id", "id", "name_code", "name", "number")


def read_sites(
    path: str | Path,
    *,
    buffer_m: float = 500.0,
    id_col: str | None = None,
    lon_col: str | None = None,
    lat_col: str | None = None,
) -> gpd.GeoDataFrame:
    """Read a site file and return one polygon per site in EPSG:4326.

    Parameters
    ----------
    path : GeoJSON, GeoPackage, Shapefile, KML or any vector format GDAL reads,
        or a CSV with longitude/latitude columns.
    buffer_m : radius in metres of the disc around point (and line) sites.
    id_col, lon_col, lat_col : column names that override detection.

    Returns
    -------
    GeoDataFrame with ``site_id`` first, the user's columns, and polygon geometry.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: give an existing site file")
    frame = _read_csv(path, lon_col, lat_col) if path.suffix.lower() in (".csv", ".txt") else _read_vector(path)
    if frame.empty:
        raise InputError(f"{path} holds no sites: add at least one feature or row")
    frame = _repair(frame, path)
    source_crs = frame.crs
    frame = frame.to_crs(4326)
    _check_degrees(frame, path, source_crs)
    frame = frame.set_geometry(buffer_sites(frame.geometry.values, buffer_m=buffer_m))
    ids, source = site_ids(frame, path, id_col)
    log.info("%s: site ids from %s", path.name, source)
    if "site_id" in frame.columns and source != "column 'site_id'":  # the user's own column, not the ids: kept
        frame = frame.rename(columns={"site_id": "user_site_id"})
        log.warning("%s: its site_id column is not unique, so the ids come from %s; it is kept as user_site_id",
                    path.name, source)
    frame = frame.drop(columns=[c for c in frame.columns if c == "site_id"])
    frame.insert(0, "site_id", ids)
    return frame.reset_index(drop=True)


def read_site_files(paths: list[Path], *, buffer_m: float = 500.0, id_col: str | None = None,
                    lon_col: str | None = None, lat_col: str | None = None) -> gpd.GeoDataFrame:
    """Every site of every file (:func:`read_sites`), one frame; ids must be unique across the files."""
    frames = [read_sites(p, buffer_m=buffer_m, id_col=id_col, lon_col=lon_col, lat_col=lat_col) for p in paths]
    for frame in frames:
        frame["site_id"] = frame["site_id"].astype(str)
    sites = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=4326)
    sites = sites.rename(columns=case_clashes(list(sites.columns), paths))
    repeated = sites["site_id"][sites["site_id"].duplicated()].unique()
    if len(repeated):
        raise InputError(f"site ids repeat across {[str(p) for p in paths]}: {list(repeated[:5])}; "
                         "give unique ids (or name a unique column as the id: --id-col, [run] id_col)")
    return sites


def _read_vector(path: Path) -> gpd.GeoDataFrame:
    try:
        frame = gpd.read_file(path, layer=_layer(path))
    except Exception as exc:  # pyogrio raises several unrelated types
        what = ("a folder GDAL cannot read as one vector dataset: give the site file in it (a .shp, .gpkg or "
                ".geojson)" if path.is_dir() else "not a vector file GDAL can read")
        raise InputError(
            f"{path} is {what} ({first_line(exc, limit=1000)}): "
            "give GeoJSON, GeoPackage, Shapefile, KML or a CSV with lon/lat columns"
        ) from None
    if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry.name not in frame:
        raise InputError(f"{path} has no geometry column: give a vector layer of points or polygons")
    if frame.crs is None:
        raise InputError(f"{path} has no coordinate reference system: add a .prj or save it with a CRS")
    return frame


def _layer(path: Path) -> str | None:
    """The layer to read: the only one, or ``sites`` (a batch's ``sites.gpkg``); a source of several layers
    without one named so is refused, naming them (GDAL would quietly read the first)."""
    import pyogrio

    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception:  # not a vector source: read_file says so in its own words
        return None
    if len(layers) <= 1:
        return None
    if "sites" in layers:
        return "sites"
    raise InputError(f"{path} holds {len(layers)} layers ({', '.join(layers[:5])}): give a file of one layer "
                     "(export the one of the sites), or name it sites")


def _read_csv(path: Path, lon_col: str | None, lat_col: str | None) -> gpd.GeoDataFrame:
    try:
        table = pd.read_csv(path)
    except Exception as exc:
        raise InputError(
            f"{path} is not a readable CSV ({first_line(exc, limit=1000)}): save it as comma-separated UTF-8"
        ) from None
    lon = lon_col or _find_column(table.columns, LON_NAMES)
    lat = lat_col or _find_column(table.columns, LAT_NAMES)
    missing = [name for name, col in (("longitude", lon), ("latitude", lat)) if col not in table.columns]
    if missing:
        raise InputError(
            f"{path} has no {' or '.join(missing)} column: found {list(table.columns)}; "
            "name them lon/lat or pass --lon-col/--lat-col"
        )
    x = pd.to_numeric(table[lon], errors="coerce").to_numpy()
    y = pd.to_numeric(table[lat], errors="coerce").to_numpy()
    bad = np.flatnonzero(~np.isfinite(x) | ~np.isfinite(y) | (np.abs(x) > 180) | (np.abs(y) > 90))
    if bad.size:
        row = int(bad[0]) + 2  # 1-based, after the header line
        given_x, given_y = table[lon].iloc[bad[0]], table[lat].iloc[bad[0]]
        swapped = np.abs(y[bad[0]]) > 90 and np.abs(x[bad[0]]) <= 90
        hint = (f"are {lon} and {lat} swapped? name them so, or pass --lon-col/--lat-col" if swapped else
                "give decimal degrees")
        raise InputError(f"{path} line {row} has no valid coordinates ({lon}={given_x}, {lat}={given_y}): {hint}")
    return gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(x, y), crs=4326)


def _find_column(columns: pd.Index, names: tuple[str, ...]) -> str | None:
    lower = {str(c).lower(): str(c) for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def _check_degrees(frame: gpd.GeoDataFrame, path: Path, source_crs: object) -> None:
    """Refuse sites whose coordinates, in EPSG:4326, are no longitude and latitude: numbers of a projected grid
    in a file that says degrees (a GeoJSON is always degrees), or a CRS that does not fit them.  Longitudes past
    +-180 (a polygon across the antimeridian written unwrapped, or 0..360) are degrees too, up to +-360."""
    bounds = shapely.bounds(frame.geometry.values)  # minx, miny, maxx, maxy
    out = ~(np.abs(bounds) <= np.array([360.0, 90.0, 360.0, 90.0]))  # NaN and inf are out too
    bad = np.flatnonzero(out.any(axis=1))
    if bad.size:
        row = int(bad[0])
        k = int(np.argmax(out[row]))
        raise InputError(f"{path} row {row + 1} lies at {'xy'[k % 2]}={bounds[row, k]:.6g} in EPSG:4326, outside "
                         f"longitude -360..360 and latitude -90..90: its coordinates do not fit its CRS "
                         f"({source_crs}); save the file with the CRS its numbers are in (GeoJSON: degrees)")


def _repair(frame: gpd.GeoDataFrame, path: Path) -> gpd.GeoDataFrame:
    geoms = frame.geometry.values
    empty = np.flatnonzero(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if empty.size:
        raise InputError(
            f"{path} row {int(empty[0]) + 1} has no geometry: fix or remove it"
        )
    invalid = ~shapely.is_valid(geoms)
    if invalid.any():
        log.warning("%s: repaired %d invalid geometries (rows %s)", path, invalid.sum(),
                    [int(i) + 1 for i in np.flatnonzero(invalid)[:10]])
        fixed = shapely.make_valid(geoms[invalid])
        if (shapely.is_empty(fixed) | (shapely.area(fixed) == 0) & (shapely.get_type_id(geoms[invalid]) >= 3)).any():
            row = int(np.flatnonzero(invalid)[0]) + 1
            raise InputError(f"{path} row {row} has an invalid geometry that cannot be repaired: redraw it")
        geoms = geoms.copy()
        geoms[invalid] = fixed
        frame = frame.set_geometry(gpd.GeoSeries(geoms, crs=frame.crs, index=frame.index))
    return frame


def buffer_sites(geoms: np.ndarray, *, buffer_m: float) -> np.ndarray:
    """Buffer points and lines by ``buffer_m`` metres; keep polygons as they are.

    Each geometry is buffered in the UTM zone of its own centroid, so sites
    spread over several zones keep metric discs.

    Parameters
    ----------
    geoms : ndarray of shapely geometries in EPSG:4326.
    """
    out = np.array(geoms, dtype=object)
    polygonal = np.isin(shapely.get_type_id(out), (3, 6))
    todo = np.flatnonzero(~polygonal)
    if todo.size == 0:
        return out
    if buffer_m <= 0:
        raise InputError(f"--buffer-m is {buffer_m}: point sites need a positive buffer in metres")
    centroids = shapely.centroid(out[todo])
    zones = utm_epsg(shapely.get_x(centroids), shapely.get_y(centroids))
    for epsg in np.unique(zones):
        pick = todo[zones == epsg]
        local = gpd.GeoSeries(out[pick], crs=4326).to_crs(int(epsg))
        out[pick] = local.buffer(buffer_m, quad_segs=16).to_crs(4326).values
    return out


def utm_epsg(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """EPSG code of the WGS84 UTM zone of each longitude/latitude."""
    zone = np.clip(np.floor((np.asarray(lon) + 180.0) / 6.0).astype(int) + 1, 1, 60)
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


def site_ids(frame: gpd.GeoDataFrame, path: Path, id_col: str | None) -> tuple[list[str], str]:
    """A stable, unique string id per site (an id or name column, else a geometry hash) and, in words, where
    the ids came from."""
    if id_col is not None:
        if id_col not in frame.columns:
            raise InputError(f"{path} has no column {id_col!r}: found {list(frame.columns)}")
        values = frame[id_col]
        if values.isna().any() or values.astype(str).duplicated().any():
            raise InputError(f"{path} column {id_col!r} has empty or repeated values: give a unique id column")
        return values.astype(str).tolist(), f"column {id_col!r}"
    lower = {str(c).lower(): c for c in frame.columns if c != frame.geometry.name}
    for name in ID_NAMES:
        col = lower.get(name)
        if col is not None and frame[col].notna().all() and not frame[col].astype(str).duplicated().any():
            return frame[col].astype(str).tolist(), f"column {col!r}"
    return geometry_ids(frame.geometry.values), "a hash of each geometry (no unique id column)"


def case_clashes(columns: list[str], paths: list[Path]) -> dict[str, str]:
    """New names for columns that differ from an earlier one only in case (``Name`` and ``name`` of two
    files): GeoPackage and SQLite field names ignore case.  Said in a warning."""
    taken = {str(c).lower() for c in columns}
    seen: set[str] = set()
    renamed = {}
    for column in columns:
        low = str(column).lower()
        if low not in seen:
            seen.add(low)
            continue
        k = 2
        while f"{low}_{k}" in taken:
            k += 1
        renamed[column] = f"{column}_{k}"
        taken.add(f"{low}_{k}")
    if renamed:
        log.warning("columns of %s that differ only in case are renamed (GeoPackage ignores case): %s",
                    ", ".join(p.name for p in paths), ", ".join(f"{a} -> {b}" for a, b in renamed.items()))
    return renamed


def geometry_ids(geoms: np.ndarray) -> list[str]:
    """Ids derived from the geometry alone (rounded to 1e-7 degrees), unique."""
    wkb = shapely.to_wkb(shapely.set_precision(geoms, 1e-7), output_dimension=2)
    ids = ["s" + hashlib.sha256(b).hexdigest()[:10] for b in wkb]
    seen: dict[str, int] = {}
    out = []
    for i in ids:
        seen[i] = seen.get(i, 0) + 1
        out.append(i if seen[i] == 1 else f"{i}-{seen[i]}")
    return out
