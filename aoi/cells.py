"""A grid of square cells over the imagery, to discover sites nobody has listed."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from numpy.typing import ArrayLike
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.windows import Window

GEOD = Geod(ellps="WGS84")


def pixel_size_m(crs: CRS, transform: Affine, lon: ArrayLike, lat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Ground size (height, width) in metres of one pixel near each ``lon``, ``lat``.

    ``lon`` and ``lat`` are scalars or arrays of the same shape; the result
    has their shape.
    """
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    step_y = np.hypot(transform.d, transform.e)
    step_x = np.hypot(transform.a, transform.b)
    if crs.is_geographic:
        _, _, height = GEOD.inv(lon, lat, lon, lat + step_y)
        _, _, width = GEOD.inv(lon, lat, lon + step_x, lat)
        return np.asarray(height, dtype=float), np.asarray(width, dtype=float)
    unit = crs.linear_units_factor[1]
    return np.full(lon.shape, step_y * unit), np.full(lon.shape, step_x * unit)


def cell_pixels(cell_m: float, pixel_hw_m: tuple[np.ndarray, np.ndarray]) -> tuple[int, int]:
    """Cell size in pixels (rows, cols) closest to ``cell_m`` metres on the ground."""
    return max(1, round(cell_m / float(pixel_hw_m[0]))), max(1, round(cell_m / float(pixel_hw_m[1])))


def cell_frame(cells: list[Window], shape: tuple[int, int], transform: Affine, crs: CRS) -> gpd.GeoDataFrame:
    """Cells as polygons with ids ``r<row>c<col>`` (row and column of the cell grid).

    Parameters
    ----------
    cells : windows from :func:`detector.tiling.cell_windows`, row-major
    shape : number of cell rows and columns
    """
    rows, cols = np.divmod(np.arange(len(cells)), shape[1])
    r0 = np.array([w.row_off for w in cells], dtype=float)
    c0 = np.array([w.col_off for w in cells], dtype=float)
    r1 = r0 + np.array([w.height for w in cells])
    c1 = c0 + np.array([w.width for w in cells])
    corners = [transform @ (c, r) for c, r in ((c0, r0), (c1, r0), (c1, r1), (c0, r1))]  # type: ignore[operator]
    ring = np.stack([np.stack(xy, axis=-1) for xy in corners] + [np.stack(corners[0], axis=-1)], axis=1)
    polygons = shapely.polygons(ring)
    ids = [f"r{r}c{c}" for r, c in zip(rows.tolist(), cols.tolist(), strict=True)]
    return gpd.GeoDataFrame({"site_id": ids, "cell_row": rows, "cell_col": cols}, geometry=polygons, crs=crs)
