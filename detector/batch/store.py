"""The durable results of a batch, appended site by site: ``sites.gpkg`` and ``manifest.csv``.

Each finished site is written in this order: its change raster (temporary
file, then rename), its change polygons (layer ``changes``), its row (layer
``sites``; each append is one SQLite transaction), then its line in
``manifest.csv`` (flushed and synced).  The manifest is the record of what is
done: when a batch starts, a torn last line is cut off and rows of the
GeoPackage whose site the manifest does not list as done (a kill between two
writes) are deleted, so the site runs again exactly once.

A region batch stores by block the same way: its key is ``block_id`` (the
manifest's first column, and a column of every cell row and change polygon),
so a block's cells appear whole or not at all.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio

from detector.errors import InputError, first_line
from detector.files import TMP_GLOB, atomic, remove
from detector.scoring import rank

MANIFEST_FIELDS = ("site_id", "status", "reason", "before_scene", "after_scene", "seconds", "finished_utc")
LAYERS = ("sites", "changes")
GPKG_OPTIONS = {"SPATIAL_INDEX": "NO"}  # no R-tree triggers, so rows can be deleted with plain SQLite


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one task returns: its rows and polygons, or the reason it failed; ``site_id`` is the task's key
    (a site's id, or a region block's ``block_id``)."""

    site_id: str
    sites: gpd.GeoDataFrame | None = None
    changes: gpd.GeoDataFrame | None = None
    raster: bytes | None = None
    error: str | None = None
    before_scene: str = ""
    after_scene: str = ""
    seconds: float = 0.0


class ResultStore:
    """``sites.gpkg``, ``manifest.csv`` and ``change/`` in one output folder, one task per ``key`` value."""

    def __init__(self, out: Path, *, key: str = "site_id") -> None:
        self.out, self.key = out, key
        self.fields = (key, *MANIFEST_FIELDS[1:])
        self.gpkg = out / "sites.gpkg"
        self._columns: dict[str, set[str]] = {}  # each stored layer's columns, read once
        self.manifest = out / "manifest.csv"
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob(TMP_GLOB), *out.glob(f"change/{TMP_GLOB}")]:  # left by a batch that was killed
            remove(stale)
        latest = self._read_manifest()
        self.done = {k for k, row in latest.items() if row["status"] == "done"}
        self.failed = {k: row["reason"] for k, row in latest.items() if row["status"] == "failed"}
        self._drop_unfinished()

    def add(self, outcome: Outcome) -> None:
        """Make one site's results durable (see the module docstring for the order)."""
        if outcome.error is None and outcome.sites is not None:
            if outcome.raster is not None:
                self._write_raster(outcome)
            changes = outcome.changes
            if changes is None:
                changes = outcome.sites.iloc[:0][list(dict.fromkeys(["site_id", self.key,
                                                                      outcome.sites.geometry.name]))]
            if not self.gpkg.exists():
                self._create(outcome.sites, changes)
            else:
                if len(changes):
                    self._append("changes", changes)
                self._append("sites", outcome.sites)
        self._append_manifest(outcome)
        if outcome.error:
            self.failed[outcome.site_id] = outcome.error
        else:
            self.done.add(outcome.site_id)
            self.failed.pop(outcome.site_id, None)

    def _create(self, sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame) -> None:
        """The GeoPackage with both layers, from the first site's frames, made whole before it appears."""
        with atomic(self.gpkg, suffix=".gpkg") as tmp:  # GDAL wants the extension
            for layer, frame in (("sites", sites), ("changes", changes)):
                pyogrio.write_dataframe(frame.to_crs(4326), tmp, layer=layer, driver="GPKG", promote_to_multi=True,
                                        geometry_type="MultiPolygon", layer_options=GPKG_OPTIONS)

    def raster_name(self, site_id: str) -> str:
        return f"change/{safe_name(site_id)}.tif"

    def _write_raster(self, outcome: Outcome) -> None:
        target = self.out / self.raster_name(outcome.site_id)
        target.parent.mkdir(exist_ok=True)
        with atomic(target) as tmp:
            tmp.write_bytes(outcome.raster or b"")

    def _append(self, layer: str, frame: gpd.GeoDataFrame) -> None:
        self._add_columns(layer, frame)
        pyogrio.write_dataframe(frame.to_crs(4326), self.gpkg, layer=layer, driver="GPKG", append=True,
                                promote_to_multi=True)

    def _add_columns(self, layer: str, frame: gpd.GeoDataFrame) -> None:
        """The columns of ``frame`` that the stored layer lacks (a batch begun by an earlier version of the tool
        and resumed by this one), added empty: the rows stored before keep NULL there."""
        if layer not in self._columns:
            self._columns[layer] = set(pyogrio.read_info(self.gpkg, layer=layer)["fields"])
        new = [c for c in frame.columns if c != frame.geometry.name and c not in self._columns[layer]]
        if new:
            with sqlite3.connect(self.gpkg) as db:
                for c in new:
                    db.execute(f'ALTER TABLE "{layer}" ADD COLUMN "{c}" {_sql_type(frame[c])}')
            db.close()
            self._columns[layer].update(new)

    def _append_manifest(self, outcome: Outcome) -> None:
        row = {self.key: outcome.site_id, "status": "failed" if outcome.error else "done",
               "reason": outcome.error or "", "before_scene": outcome.before_scene,
               "after_scene": outcome.after_scene, "seconds": f"{outcome.seconds:.3f}",
               "finished_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        text = io.StringIO()
        writer = csv.DictWriter(text, self.fields, lineterminator="\n")
        if not self.manifest.exists() or self.manifest.stat().st_size == 0:
            writer.writeheader()
        writer.writerow(row)
        with self.manifest.open("a", encoding="utf-8", newline="") as f:
            f.write(text.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def _read_manifest(self) -> dict[str, dict[str, str]]:
        if not self.manifest.exists():
            return {}
        data = self.manifest.read_bytes()
        if data and not data.endswith(b"\n"):  # a kill in the middle of a line: that site is not done
            with self.manifest.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[:data.rfind(b"\n") + 1]
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
        if rows and set(rows[0]) != set(self.fields):
            raise InputError(f"{self.manifest} is not a batch manifest (columns {list(rows[0])}): "
                             "choose an empty [output] dir")
        return {row[self.key]: row for row in rows}

    def _drop_unfinished(self) -> None:
        if not self.gpkg.exists():
            return
        done = sorted(self.done)  # a GeoPackage appears whole (see _create): only rows can be left over
        try:
            with sqlite3.connect(self.gpkg) as db:
                db.execute("CREATE TEMP TABLE done (task TEXT PRIMARY KEY)")
                db.executemany("INSERT INTO done VALUES (?)", [(s,) for s in done])
                tables = {r[0] for r in db.execute("SELECT table_name FROM gpkg_contents")}
                for layer in LAYERS:
                    if layer in tables:
                        db.execute(f'DELETE FROM {layer} WHERE "{self.key}" NOT IN (SELECT task FROM done)')
            db.close()
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.gpkg} is not the GeoPackage of a batch ({first_line(exc)}): move it away, "
                             "or give another [output] dir") from None

    def ranked_sites(self, order: list[str]) -> gpd.GeoDataFrame:
        """Every done site, ranked by score, then changed area, then ``order`` (the sites' input order)."""
        sites = pyogrio.read_dataframe(self.gpkg, layer="sites")
        position = {site_id: k for k, site_id in enumerate(order)}
        sites = sites.iloc[np.argsort([position.get(s, len(position)) for s in sites["site_id"]], kind="stable")]
        return ranked(sites)

    def ranked_cells(self) -> gpd.GeoDataFrame:
        """Every stored cell of a region batch, ranked by score, then changed area, then row and column."""
        cells = pyogrio.read_dataframe(self.gpkg, layer="sites")
        return ranked(cells.sort_values(["cell_row", "cell_col"], kind="stable"))

    def changes(self) -> gpd.GeoDataFrame:
        """The change polygons of every done site (in the order of their sites' ids, then as stored)."""
        changes = pyogrio.read_dataframe(self.gpkg, layer="changes")
        return changes.sort_values("site_id", kind="stable").reset_index(drop=True)

    def update_sites(self, sites: pd.DataFrame, columns: tuple[str, ...]) -> None:
        """Set ``columns`` of the stored rows to those of ``sites`` (by site_id), in one transaction."""
        names = ", ".join(f'"{c}" = ?' for c in columns)
        values = [sites[c].tolist() for c in columns]  # a region's millions of cells: no row objects
        rows = [(*(_sql_value(v) for v in row), str(site_id))
                for *row, site_id in zip(*values, sites["site_id"].tolist(), strict=True)]
        with sqlite3.connect(self.gpkg) as db:
            db.executemany(f"UPDATE sites SET {names} WHERE site_id = ?", rows)
        db.close()


def ranked(sites: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """``sites`` with their ``rank`` by score, then changed area, then their order; in rank order."""
    score = pd.to_numeric(sites["score"], errors="coerce").to_numpy(dtype=float)
    changed = np.nan_to_num(pd.to_numeric(sites["changed_area_m2"], errors="coerce").to_numpy(dtype=float))
    sites["rank"] = pd.array(rank(score, changed), dtype="Int64")
    return sites.sort_values("rank", na_position="last", kind="stable")


def _sql_type(column: pd.Series) -> str:
    """The GeoPackage type of a column of this dtype."""
    kind = column.dtype.kind
    return {"b": "BOOLEAN", "i": "INTEGER", "u": "INTEGER", "f": "REAL"}.get(kind, "TEXT")


def _sql_value(value: object) -> object:
    """A value SQLite takes: None for NA, Python numbers for numpy ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


LOCK = ".batch.lock"


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """One batch at a time per output folder (an exclusive lock on ``out/.batch.lock``)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    with (out / LOCK).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"another batch is writing into {out}: wait for it to end, "
                             "or give another [output] dir") from None
        yield


def safe_name(site_id: str) -> str:
    """A file name for a site id: its letters and digits, and a short hash that keeps it unique."""
    import hashlib

    plain = "".join(c if c.isascii() and c.isalnum() else "_" for c in site_id)[:40]
    return f"{plain}-{hashlib.sha256(site_id.encode()).hexdigest()[:8]}"
