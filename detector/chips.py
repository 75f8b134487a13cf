"""Before/after chips of the sites a reviewer should look at.

For each chosen site: ``<key>_before.png`` and ``<key>_after.png`` (true
colour, or the first three bands, the after date normalized to the before
date and both shown with one 2-98 % stretch taken over both, so a difference
in the chips is a difference on the ground), and ``<key>_change.png`` (the after
date greyed, the change score in red-yellow where it reaches the pixel
threshold, change polygons in white and the site outline in cyan).

The pure part (:func:`stretch`, :func:`overlay`) takes arrays; :func:`write_chips`
reads the windows and writes the PNGs.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image
from rasterio import features
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from detector.change import normalize
from detector.imagery import DateReader, DateSource, Grid
from detector.tiling import bounds_window, pad

MARGIN = 0.15  # context around the site, as a share of its size
SIZE = 512  # longest side of a chip at most, in pixels
CYAN, WHITE = (0, 220, 255), (255, 255, 255)
CACHE_MB = 64  # GDAL block cache while chips are read: GDAL's default (5 % of memory) pushed a run past 2 GB


def chip_key(rank: object, site_id: str) -> str:
    """A file-name-safe key: the rank and a hash of the id (ids may hold any script or character)."""
    digest = hashlib.sha1(str(site_id).encode("utf-8")).hexdigest()[:8]
    number = int(rank) if isinstance(rank, int | np.integer) else 0  # type: ignore[call-overload]
    return f"{number:04d}_{digest}"


def rgb_bands(names: tuple[str, ...]) -> list[int]:
    """Indices of red, green, blue among ``names``, else the first three bands (or one, repeated)."""
    if all(b in names for b in ("red", "green", "blue")):
        return [names.index(b) for b in ("red", "green", "blue")]
    return [min(i, len(names) - 1) for i in range(3)]


def stretch(*images: np.ndarray) -> tuple[np.ndarray, ...]:
    """The dates as uint8 RGB with one 2-98 % stretch per band, taken over all of them together.

    Parameters
    ----------
    images : ndarrays, shape (3, H, W), float32, NaN = nodata (before and after; or every date)

    Returns
    -------
    as many ndarrays, shape (H, W, 3), uint8; nodata black.
    """
    flat = np.concatenate([x.reshape(3, -1) for x in images], axis=1)
    valid = np.isfinite(flat).all(axis=0)
    if not valid.any():
        low, high = np.zeros((3, 1, 1)), np.ones((3, 1, 1))
    else:
        low, high = (np.percentile(flat[:, valid], q, axis=1)[:, None, None] for q in (2, 98))

    def scale(x: np.ndarray) -> np.ndarray:
        y = np.clip((x - low) / np.maximum(high - low, 1e-6), 0, 1) * 255
        return np.moveaxis(np.nan_to_num(y), 0, -1).astype(np.uint8)

    return tuple(scale(x) for x in images)


def overlay(after_rgb: np.ndarray, score: np.ndarray, edges: np.ndarray, outline: np.ndarray, *,
            pixel_threshold: float) -> np.ndarray:
    """The change picture: greyed after date, score colours, polygon edges and site outline.

    Parameters
    ----------
    after_rgb : ndarray, shape (H, W, 3), uint8
    score : ndarray, shape (H, W), float32 in [0, 1], NaN = not scored
    edges, outline : ndarray, shape (H, W), bool
    """
    grey = after_rgb.mean(axis=2, keepdims=True) * 0.6
    out = np.repeat(grey, 3, axis=2)
    hot = np.nan_to_num(score) >= pixel_threshold
    value = np.clip(np.nan_to_num(score), 0, 1)[..., None]
    colour = np.concatenate([np.full_like(value, 255), 255 * (value - pixel_threshold) / (1 - pixel_threshold + 1e-6),
                             np.zeros_like(value)], axis=2)
    out[hot] = 0.35 * out[hot] + 0.65 * colour[hot]
    out[edges] = WHITE
    out[outline] = CYAN
    return np.clip(out, 0, 255).astype(np.uint8)


def write_chips(sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, dates: tuple[DateSource, DateSource],
                names: tuple[str, ...], grid: Grid, change_tif: Path, folder: Path, *,
                pixel_threshold: float, workers: int = 2) -> None:
    """Write the chips of every site in ``sites`` into ``folder``, ``workers`` threads each with its own files."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = [sites.iloc[i::workers] for i in range(workers)]
    with quiet_nodata(), ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda part: write_part(part, changes, dates, names, grid, change_tif, folder,
                                              pixel_threshold=pixel_threshold), parts))


@contextmanager
def quiet_nodata() -> Iterator[None]:
    """No RuntimeWarning for all-nodata corners of a window.  Warning filters are process-wide: hold this
    around the threads that call :func:`write_part`, never inside them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def write_part(sites: gpd.GeoDataFrame, changes: gpd.GeoDataFrame, dates: tuple[DateSource, DateSource],
               names: tuple[str, ...], grid: Grid, change_tif: Path, folder: Path, *,
               pixel_threshold: float) -> None:
    """Write the chips of ``sites`` into ``folder`` in this thread, with its own open files."""
    shapes = sites.to_crs(grid.crs)
    jobs = list(zip(shapes["site_id"], shapes["rank"], shapes.geometry, strict=True))
    _write_part(jobs, changes.to_crs(grid.crs), dates, names, grid, change_tif, folder, pixel_threshold)


def _write_part(jobs: list, polygons: gpd.GeoDataFrame, dates: tuple[DateSource, DateSource],
                names: tuple[str, ...], grid: Grid, change_tif: Path, folder: Path, pixel_threshold: float) -> None:
    bands = rgb_bands(names)
    picked = tuple(names[i] for i in dict.fromkeys(bands))
    order = [picked.index(names[i]) for i in bands]
    with rasterio.Env(GDAL_CACHEMAX=CACHE_MB * 2**20), DateReader(dates[0], picked, grid) as first, \
            DateReader(dates[1], picked, grid) as second, rasterio.open(change_tif) as scores:
        for site_id, rank, shape in jobs:
            window = site_window(shape.bounds, grid)
            if window is None:
                continue
            before, after = first.read(window)[order], second.read(window)[order]
            after = normalize(before[None], after[None])[0]
            transform = window_transform(window, grid.transform)
            size = (int(window.height), int(window.width))
            edges = _edges(list(polygons.geometry[polygons["site_id"] == site_id]), size, transform)
            b, a = stretch(before, after)
            pictures = {"before": b, "after": a,
                        "change": overlay(a, read_scores(scores, window, grid), edges,
                                          _edges([shape], size, transform), pixel_threshold=pixel_threshold)}
            key = chip_key(rank, site_id)
            for kind, picture in pictures.items():
                save_png(picture, folder / f"{key}_{kind}.png")


def site_window(bounds: tuple[float, float, float, float], grid: Grid) -> Window | None:
    """The site's bounding box with ``MARGIN`` of context, on the grid."""
    w = bounds_window(bounds, grid.transform)
    return pad(w, int(max(w.width, w.height) * MARGIN) + 2, within=Window(0, 0, grid.width, grid.height))


def read_scores(src: rasterio.DatasetReader, window: Window, grid: Grid) -> np.ndarray:
    """The change raster over a window of the grid, NaN where it has none."""
    bounds = rasterio.windows.bounds(window, grid.transform)
    own = bounds_window(bounds, src.transform)
    inside = (own.col_off >= 0 and own.row_off >= 0 and own.col_off + own.width <= src.width
              and own.row_off + own.height <= src.height)
    data = src.read(1, window=own) if inside else src.read(1, window=own, boundless=True, fill_value=np.nan)
    return data[:int(window.height), :int(window.width)]


def _edges(geometries: list, size: tuple[int, int], transform: object) -> np.ndarray:
    if not geometries:
        return np.zeros(size, bool)
    lines = [g.boundary for g in geometries if not g.is_empty]
    return features.rasterize(lines, out_shape=size, transform=transform, default_value=1, all_touched=True) > 0


def save_png(picture: np.ndarray, path: Path) -> None:
    """An (H, W, 3) uint8 picture as PNG, shrunk (area average) so its longest side is at most ``SIZE``.

    Small chips stay at their own pixels: the report and QGIS enlarge them
    without inventing detail, and they cost little to encode.
    """
    image = Image.fromarray(picture)
    scale = SIZE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BOX)
    image.save(path, format="PNG", compress_level=1)  # zlib level 6 made PNG encoding most of the chips time
