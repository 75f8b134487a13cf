"""What is scored: candidate sites or a grid of cells, placed on the analysis grid and cut into tiles."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from rasterio import features
from rasterio.windows import Window

import aoi
from aoi.cells import cell_frame, cell_pixels, pixel_size_m
from detector.config import RunConfig, ScanOptions
from detector.errors import InputError
from detector.imagery import Grid
from detector.tiling import Batch, pixel_windows, plan_cells, plan_sites, tiles_per_batch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Zones:
    """What is scored: one polygon per site or cell on the analysis grid.

    Cells also keep their pixel windows (``windows``), which label a tile by
    filling rectangles instead of rasterizing polygons; sites have none.
    """

    frame: gpd.GeoDataFrame  # site_id, user columns, geometry in the grid CRS
    batches: list[Batch]
    windows: list[Window] | None = None

    @property
    def cell_mode(self) -> bool:
        return self.windows is not None

    def labels(self, zones: tuple[int, ...], core: Window, transform: Any) -> np.ndarray:
        """Raster of local zone numbers (position in ``zones`` + 1) over ``core``, 0 outside."""
        shape = (int(core.height), int(core.width))
        if self.windows is None:
            geoms = self.frame.geometry.values
            return features.rasterize([(geoms[z], k + 1) for k, z in enumerate(zones)], out_shape=shape,
                                      transform=transform, fill=0, dtype="int32")
        labels = np.zeros(shape, dtype=np.int32)
        for k, z in enumerate(zones):
            w = self.windows[z]
            r, c = int(w.row_off - core.row_off), int(w.col_off - core.col_off)
            labels[max(r, 0):r + int(w.height), max(c, 0):c + int(w.width)] = k + 1
        return labels


def plan_zones(config: RunConfig, grid: Grid, area: Window) -> Zones:
    """Sites from the site file, or cells over the overlap, with their batches of tiles."""
    if config.sites is None:
        return plan_cell_zones(config.cell_m, config.scan, grid, area)
    sites = aoi.read_site_files([config.sites], **asdict(config.site))
    return plan_site_zones(sites, config.scan, grid, area, source=str(config.sites))


def plan_site_zones(sites: gpd.GeoDataFrame, scan: ScanOptions, grid: Grid, area: Window, *, source: str) -> Zones:
    """Sites (``site_id``, user columns, polygons) placed on the grid, with their batches of tiles."""
    frame = sites.to_crs(grid.crs)
    warn_under_a_pixel(frame, grid, source)
    rows, cols = pixel_extents(frame.geometry.values, grid)
    windows = pixel_windows(rows, cols, area)
    if all(w is None for w in windows):
        raise InputError(
            f"none of the {len(sites)} sites in {source} overlaps the imagery of both dates: "
            "check the site coordinates or give imagery that covers them"
        )
    batches = plan_sites(windows, margin=scan.margin_px, height=grid.height, width=grid.width)
    return Zones(frame, batches)


MIN_CELL_PX = 3  # a cell of fewer pixels a side measures nothing: its score is one pixel's noise


def warn_under_a_pixel(frame: gpd.GeoDataFrame, grid: Grid, source: str) -> None:
    """Say so where sites are smaller than one pixel of the imagery: they get a pixel only where they cover a
    pixel's centre, and none (no coverage) elsewhere."""
    pixel_m2 = abs(grid.transform.determinant)
    if grid.crs.is_geographic:
        metric = frame.to_crs(frame.estimate_utm_crs())
        lon, lat = centre_lonlat(grid, Window(0, 0, grid.width, grid.height))
        h, w = pixel_size_m(grid.crs, grid.transform, lon, lat)
        areas, pixel_m2 = metric.area.to_numpy(), float(h) * float(w)
    else:
        areas = frame.area.to_numpy()
    small = int((areas < pixel_m2).sum())
    if small:
        log.warning("%d of the %d sites of %s are smaller than one pixel of the imagery (%.0f m2): each is scored "
                    "on the one pixel whose centre it covers, if any (else it shows no coverage); draw them larger "
                    "(points: --buffer-m at least %.0f m)", small, len(frame), source, pixel_m2, np.sqrt(pixel_m2))


def pixel_extents(geoms: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Fractional (min, max) rows and columns of each geometry's bounding box."""
    bounds = shapely.bounds(geoms)
    xs = bounds[:, [0, 2, 2, 0]]
    ys = bounds[:, [1, 1, 3, 3]]
    cols, rows = ~grid.transform @ (xs, ys)
    return np.stack([rows.min(1), rows.max(1)], 1), np.stack([cols.min(1), cols.max(1)], 1)


def plan_cell_zones(cell_m: float, scan: ScanOptions, grid: Grid, area: Window) -> Zones:
    """Square cells of ``cell_m`` metres over ``area``, with their batches of tiles."""
    lon, lat = centre_lonlat(grid, area)
    pixel = pixel_size_m(grid.crs, grid.transform, lon, lat)
    coarsest = max(float(pixel[0]), float(pixel[1]))
    if cell_m < coarsest * MIN_CELL_PX:
        raise InputError(f"--cell-m {cell_m:g} is under {MIN_CELL_PX} pixels of the imagery ({coarsest:.1f} m each): "
                         f"give --cell-m {coarsest * MIN_CELL_PX:.0f} or more")
    cell_h, cell_w = cell_pixels(cell_m, pixel)
    cells, batches = plan_cells(area, cell_h=cell_h, cell_w=cell_w, tile_px=scan.tile_px,
                                margin=scan.margin_px, height=grid.height, width=grid.width,
                                batch_tiles=tiles_per_batch(scan.tile_px, grid_factor(scan, grid)))
    n_cols = -(-int(area.width) // cell_w)
    frame = cell_frame(cells, (len(cells) // n_cols, n_cols), grid.transform, grid.crs)
    return Zones(frame, batches, windows=cells)


def grid_pixel_m(grid: Grid) -> float:
    """The grid's pixel size in metres at its centre (mean of height and width): what decides the blocks scored
    (:meth:`detector.config.ScanOptions.factor`) and the metres of the kernels' constants."""
    lon, lat = centre_lonlat(grid, Window(0, 0, grid.width, grid.height))
    return float(np.mean(pixel_size_m(grid.crs, grid.transform, lon, lat)))


def grid_factor(scan: ScanOptions, grid: Grid) -> int:
    """The blocks ``scan`` scores ``grid`` on (:meth:`detector.config.ScanOptions.factor` of :func:`grid_pixel_m`)."""
    return scan.factor(grid_pixel_m(grid))


def centre_lonlat(grid: Grid, area: Window) -> tuple[float, float]:
    x, y = grid.transform @ (area.col_off + area.width / 2, area.row_off + area.height / 2)
    point = gpd.GeoSeries(gpd.points_from_xy([x], [y]), crs=grid.crs).to_crs(4326).iloc[0]
    return float(point.x), float(point.y)
