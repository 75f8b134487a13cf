"""A grid of square cells over the imagery or over a region, to discover sites nobody has listed."""

from __future__ import annotations

from dataclasses import dataclass

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
    ids = cell_ids(rows, cols)
    return gpd.GeoDataFrame({"site_id": ids, "cell_row": rows, "cell_col": cols}, geometry=polygons, crs=crs)


@dataclass(frozen=True, slots=True)
class CellGrid:
    """The cells of a region: squares of ``cell_m`` metres in a metric CRS, ``rows`` x ``cols`` of them from the
    top-left corner ``x0``, ``y0``; the cell in row ``r``, column ``c`` is ``r<r>c<c>``, as in cell mode.

    One cell is one pixel of :attr:`transform`, so the pixel windows of the tiling core are windows of cells.
    """

    crs: str  # WKT or EPSG code: it travels to worker processes as text
    x0: float
    y0: float
    cell_m: float
    rows: int
    cols: int

    @property
    def transform(self) -> Affine:
        return Affine(self.cell_m, 0.0, self.x0, 0.0, -self.cell_m, self.y0)

    def boxes(self, window: Window) -> np.ndarray:
        """The cells of ``window`` (of cells) as polygons in :attr:`crs`, shape (height, width), row-major."""
        rows, cols = np.mgrid[int(window.row_off):int(window.row_off + window.height),
                              int(window.col_off):int(window.col_off + window.width)]
        x, y = self.x0 + cols * self.cell_m, self.y0 - rows * self.cell_m
        return shapely.box(x, y - self.cell_m, x + self.cell_m, y)

    def window_box(self, window: Window) -> shapely.Polygon:
        """The outline of a window of cells, in :attr:`crs`."""
        left, top = self.transform * (window.col_off, window.row_off)
        right, bottom = self.transform * (window.col_off + window.width, window.row_off + window.height)
        return shapely.box(left, bottom, right, top)


def region_cell_grid(region: gpd.GeoDataFrame, cell_m: float) -> CellGrid:
    """The cell grid over a region (any CRS): in the UTM zone of its centre, corners on whole multiples of
    ``cell_m`` (so a grid over a larger region holds the same cells where they overlap, in one zone).

    Bounds within a thousandth of a cell of a cell's edge count as on it: a polygon drawn on the cells and
    stored in degrees (7 decimals, about 1 cm) gets no extra row or column of slivers.
    """
    crs = region.estimate_utm_crs()
    minx, miny, maxx, maxy = np.asarray(region.to_crs(crs).total_bounds) / cell_m
    x0, y0 = np.floor(round(minx, 3)), np.ceil(round(maxy, 3))
    cols = max(1, int(np.ceil(round(maxx - x0, 3))))
    rows = max(1, int(np.ceil(round(y0 - miny, 3))))
    return CellGrid(crs.to_string(), float(x0 * cell_m), float(y0 * cell_m), float(cell_m), rows, cols)


def cell_blocks(grid: CellGrid, block_cells: int) -> list[Window]:
    """Blocks of ``block_cells`` x ``block_cells`` cells over the grid, row by row (the last cut at its edge)."""
    return [Window(c, r, min(block_cells, grid.cols - c), min(block_cells, grid.rows - r))
            for r in range(0, grid.rows, block_cells) for c in range(0, grid.cols, block_cells)]


def cell_ids(rows: ArrayLike, cols: ArrayLike) -> list[str]:
    """The ids ``r<row>c<col>`` of cells (cell mode's, and a region's)."""
    return [f"r{r}c{c}" for r, c in zip(np.ravel(rows).tolist(), np.ravel(cols).tolist(), strict=True)]
