"""Write results: every file goes to a temporary name in the output folder and
is renamed into place only when all of them are complete (:class:`Staging`);
the GeoJSON writer and the change raster."""

from __future__ import annotations

import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from detector.errors import OutputExistsError
from detector.files import TMP_GLOB, remove, temporary_name

RECORDS = ("run.json", "batch.json")  # written last: a record beside the results says they are complete


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, or that holds results while ``overwrite`` is off.

    Touches nothing, so it can run before the inputs are checked.
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file: give a folder for --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} already exists and is not empty: pass --overwrite or choose another --out")


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


def write_geojson(frame: gpd.GeoDataFrame, path: Path) -> None:
    """RFC 7946 GeoJSON: WGS84 lon/lat, right-hand rings, 7 decimals."""
    frame.to_crs(4326).to_file(path, driver="GeoJSON", engine="pyogrio",
                               layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": "7",
                                              "WRITE_NAME": "NO"})


class ScoreRaster:
    """A float32 raster of change scores over an area of the analysis grid.

    Windows are written, as they come, into a tiled (512 px), DEFLATE-compressed
    GeoTIFF, merged by maximum where windows overlap; GDAL compresses a block
    once it is complete.  :meth:`finish` adds averaged overviews down to one
    block, so QGIS shows the raster at once at any zoom.
    """

    def __init__(self, path: Path, *, crs: CRS, transform: Affine, area: Window) -> None:
        self.area, self.path = area, path
        self.dst = rasterio.open(
            path, "w+", driver="GTiff", width=int(area.width), height=int(area.height), count=1,
            dtype="float32", crs=crs, transform=transform @ Affine.translation(area.col_off, area.row_off),
            nodata=np.nan, tiled=True,
            blockxsize=512, blockysize=512, compress="deflate", zlevel=1, NUM_THREADS="ALL_CPUS",
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
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", COMPRESS_OVERVIEW="DEFLATE", GDAL_TIFF_OVR_BLOCKSIZE="512"):
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


