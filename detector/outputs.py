"""Write results: every file goes to a temporary name in the output folder and
is renamed into place only when all of them are complete (:class:`Staging`);
the GeoJSON writer and the change raster."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from detector.errors import OutputExistsError
from detector.files import TMP_GLOB, absolute, remove, temporary_name

RECORDS = ("run.json", "batch.json")  # written last: a record beside the results says they are complete

log = logging.getLogger(__name__)


CHIP_NAME = re.compile(r"\d{4}_[0-9a-f]{8}_(before|after|change)\.png")  # chips.chip_key + kind


def check_out(out: Path, *, overwrite: bool, ours: tuple[str, ...] = (), inside: bool = False) -> None:
    """Refuse an ``out`` that is a file or cannot be written (:func:`check_writable`; ``inside``: the results
    are written into ``out`` itself, not beside it), that holds results while ``overwrite`` is off, or that
    holds files we did not write (``ours``: the names a result folder holds; ``chips/`` holds our chips only).

    Touches nothing, so it can run before the inputs are checked.
    """
    check_writable(out, inside=inside)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty: pass --overwrite or choose another --out")
    foreign = foreign_files(out, ours) if out.is_dir() else []
    if foreign:
        raise OutputExistsError(f"{out} holds files detector did not write ({', '.join(foreign[:3])}"
                                f"{' …' if len(foreign) > 3 else ''}): --overwrite replaces only our results; "
                                "move them, or choose another --out")


def check_writable(out: Path, *, key: str = "--out", inside: bool = False) -> None:
    """Refuse an ``out`` that is a file, or whose folder this user cannot write: ``out`` itself where the
    results go into it (``inside``, as a batch's and ``evaluate``'s do) and it exists, else the folder it is
    made in (a run's results are written beside ``out`` first, then put in its place); a folder not made yet
    counts as its nearest existing parent."""
    out = absolute(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: give a folder for {key}")
    base = out if inside and out.exists() else out.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise OutputExistsError(f"{out} cannot be made: {base} is a file; give a folder path for {key}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise OutputExistsError(f"{out} cannot be written: {base} is not writable by this user; give a folder "
                                f"you can write for {key}")


def foreign_files(out: Path, ours: tuple[str, ...]) -> list[str]:
    """The files in ``out`` that are not ours: unknown names, other files in ``chips/``, a ``run.json`` or
    ``batch.json`` that is not our record."""
    found = []
    for path in sorted(out.iterdir()):
        if path.match(TMP_GLOB):
            continue
        if path.name not in ours:
            found.append(path.name)
        elif path.name == "chips" and path.is_dir():
            found += [f"chips/{c.name}" for c in sorted(path.iterdir()) if not CHIP_NAME.fullmatch(c.name)]
        elif path.name in RECORDS and not _our_record(path):
            found.append(path.name)
    return found


def _our_record(path: Path) -> bool:
    try:
        return "detector_version" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return False


class Staging:
    """Temporary files in ``out`` that become the results only on :meth:`commit`.

    Used as a context manager: on error every temporary file is removed and
    the files already in ``out`` stay as they were.  A staged name may be a
    folder (``chips``): the caller creates it; it replaces the old one whole.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, Path] = {}
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(TMP_GLOB):  # left by a run that was killed
            remove(stale)

    def path(self, name: str) -> Path:
        tmp = temporary_name(self.out / name)
        self.pending[name] = tmp
        return tmp

    def commit(self) -> None:
        """Rename every staged file into place, the record (``run.json``, ``batch.json``) last: it marks a
        complete set."""
        for name in sorted(self.pending, key=lambda n: n in RECORDS):
            tmp, target = self.pending[name], self.out / name
            if tmp.is_dir() and target.is_dir():
                old = temporary_name(self.out / name, suffix="-old")
                os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    os.replace(old, target)
                    raise
                remove(old)
            else:
                os.replace(tmp, target)
        self.pending.clear()

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp in list(self.pending.values()) + list(self.out.glob(f".*.{os.getpid()}.tmp*")):
            remove(tmp)


class NewFolder:
    """A result folder written whole beside ``out`` and put in its place at once on :meth:`commit`.

    Files go into ``.<out>.<pid>.new`` next to ``out``; ``commit`` syncs them
    to disk and exchanges the two folders in one atomic rename (Linux
    ``renameat2(RENAME_EXCHANGE)``), then removes the old results.  Killed at
    any moment, ``out`` is wholly the old results or wholly the new, and the
    next run removes what the killed one left beside it.  The new folder
    carries every verdict over before anything old is removed.  Where the
    exchange is not available, two renames leave ``out`` missing for an
    instant (the old results then lie in ``.<out>.<pid>.old``).
    """

    def __init__(self, out: Path) -> None:
        self.out = out = absolute(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in [*out.parent.glob(f".{out.name}.*.new"), *out.parent.glob(f".{out.name}.*.old")]:
            remove(stale)  # left by a run that was killed
        self.work = out.parent / f".{out.name}.{os.getpid()}.new"
        self.work.mkdir()

    def path(self, name: str) -> Path:
        return self.work / name

    def commit(self) -> None:
        _sync_tree(self.work)
        if self.out.exists():
            _exchange(self.work, self.out)
            remove(self.work)  # the old results, now that the new ones are in place
            if self.work.exists():
                log.warning("the new results are in %s, but the old ones could not all be removed from %s: "
                            "delete it by hand", self.out, self.work)
        else:
            os.replace(self.work, self.out)
        _sync_dir(self.out.parent)

    def __enter__(self) -> NewFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        remove(self.work)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one rename where the kernel can, else in two."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE
        if libc.renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
            return
    except (OSError, AttributeError):
        pass
    old = b.with_name(b.name.join((".", f".{os.getpid()}.old")))
    os.replace(b, old)
    os.replace(a, b)
    os.replace(old, a)


def _sync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


Staged = Staging | NewFolder  # what stages a result's files: ``path(name)``


def write_geojson(frame: gpd.GeoDataFrame, path: Path) -> None:
    """RFC 7946 GeoJSON: WGS84 lon/lat, right-hand rings, 7 decimals.

    Written through Arrow (``use_arrow``): the same bytes as pyogrio's
    feature-by-feature writer, which holds the GIL while it writes, in two
    thirds of the time (48,400 cells: 2.3 s against 3.6 s).
    """
    frame.to_crs(4326).to_file(path, driver="GeoJSON", engine="pyogrio", use_arrow=True,
                               layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": "7",
                                              "WRITE_NAME": "NO"})


class ScoreRaster:
    """A float32 raster of change scores over an area of the analysis grid.

    Windows are written, as they come, into a tiled (512 px), ZSTD-compressed
    (level 1: half the CPU of DEFLATE for a smaller file) GeoTIFF, merged by
    maximum where windows overlap; GDAL compresses a block once it is complete.
    :meth:`finish` adds averaged overviews down to one block, so QGIS shows
    the raster at once at any zoom.
    """

    def __init__(self, path: Path, *, crs: CRS, transform: Affine, area: Window) -> None:
        self.area, self.path = area, path
        self.dst = rasterio.open(
            path, "w+", driver="GTiff", width=int(area.width), height=int(area.height), count=1,
            dtype="float32", crs=crs, transform=transform @ Affine.translation(area.col_off, area.row_off),
            nodata=np.nan, tiled=True,
            blockxsize=512, blockysize=512, compress="zstd", zstd_level=1, NUM_THREADS="ALL_CPUS",
            BIGTIFF="IF_SAFER", SPARSE_OK="TRUE",
        )

    def write(self, score: np.ndarray, window: Window, *, merge: bool) -> None:
        """Write ``score`` (H, W) at ``window`` of the analysis grid (NaN = not analysed)."""
        local = Window(window.col_off - self.area.col_off, window.row_off - self.area.row_off,
                       window.width, window.height)
        if merge:
            score = np.fmax(self.dst.read(1, window=local), score)
        self.dst.write(score.astype(np.float32, copy=False), 1, window=local)

    def finish(self) -> None:
        factors = overview_factors(max(self.dst.width, self.dst.height), block=512)
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", COMPRESS_OVERVIEW="ZSTD", ZSTD_LEVEL_OVERVIEW="1",
                          GDAL_TIFF_OVR_BLOCKSIZE="512"):
            if factors:
                self.dst.build_overviews(factors, Resampling.average)
            self.dst.close()

    def discard(self) -> None:
        if not self.dst.closed:
            self.dst.close()


def overview_factors(size: int, *, block: int) -> list[int]:
    """Powers of two that shrink ``size`` pixels step by step down to one block."""
    factors: list[int] = []
    while size / 2 ** len(factors) > block:
        factors.append(2 ** (len(factors) + 1))
    return factors


