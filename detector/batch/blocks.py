"""A region batch's tasks: the region cut into cells (:class:`aoi.cells.CellGrid`), the cells grouped into
blocks of ``block_cells`` x ``block_cells``, one task per block.

A block chooses one pair of scenes for all its cells, by the rule of a site
batch (:mod:`detector.batch.pairing`) applied to the part of the region in the
block, and scores its cells with ``run``'s cell-mode scan, on a grid in the
cell grid's CRS at the before scene's resolution (rounded so that a cell is a
whole number of pixels), with ``[run] margin_px`` of context around the
block.  Its cells keep their ids on the region's grid (``r<row>c<col>``), so
cells of two blocks never share an id; cells of the block outside the region
are scored (the scan works on rectangles) but not kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from aoi.cells import CellGrid, cell_blocks, cell_ids, cell_pixels, pixel_size_m, region_cell_grid
from detector.batch.catalog import Scene
from detector.batch.config import BatchConfig, Region
from detector.batch.store import Outcome
from detector.batch.tasks import chosen_pair, guarded, scan_pair, scenes_over
from detector.errors import InputError
from detector.imagery import Grid, match_bands, reference_grid
from detector.zones import MIN_CELL_PX, plan_cell_zones

KEY = "block_id"  # what a region batch's store keys its rows by


@dataclass(frozen=True, slots=True)
class BlockTask:
    """One block of a region's cells: its window of cells, the part of the region in it (in the grid's CRS and
    in EPSG:4326) and the candidate scenes of each date."""

    block_id: str
    window: Window
    grid: CellGrid
    part: Any
    part_4326: Any
    before: tuple[Scene, ...]
    after: tuple[Scene, ...]
    config: BatchConfig

    @property
    def site_id(self) -> str:
        """The task's key in the store and manifest (:data:`KEY`)."""
        return self.block_id


@dataclass(frozen=True, slots=True)
class RegionPlan:
    """The cell grid over the region, its blocks that hold any of it, their area, and the tasks to run."""

    grid: CellGrid
    blocks: int
    area_km2: float
    tasks: list[BlockTask]


def plan_blocks(config: BatchConfig, spec: Region, region: gpd.GeoDataFrame, scenes: list[Scene], *,
                skip: set[str]) -> RegionPlan:
    """The blocks of ``spec`` (``config.region``) that hold part of the ``region``'s polygons, each a task
    unless its id is in ``skip``."""
    grid = region_cell_grid(region, spec.cell_m)
    shape = shapely.union_all(region.to_crs(grid.crs).geometry.to_numpy())
    windows = cell_blocks(grid, spec.block_cells)
    parts = shapely.intersection(np.array([grid.window_box(w) for w in windows], dtype=object), shape)
    keep = np.flatnonzero(shapely.area(parts) > 0)
    parts_4326 = gpd.GeoSeries(parts[keep], crs=grid.crs).to_crs(4326).to_numpy()
    found = scenes_over(config, parts_4326, scenes)
    tasks = []
    for k, i in enumerate(keep):
        block_id = block_name(windows[i], spec.block_cells)
        if block_id not in skip:
            tasks.append(BlockTask(block_id, windows[i], grid, parts[i], parts_4326[k], *found[k], config))
    return RegionPlan(grid, len(keep), float(shapely.area(shape)) / 1e6, tasks)


def block_name(window: Window, block_cells: int) -> str:
    """``b<row>-<col>``: the block's row and column among the blocks."""
    return f"b{int(window.row_off) // block_cells}-{int(window.col_off) // block_cells}"


def score_block(task: BlockTask) -> Outcome:
    """Choose the block's scenes and score its cells; every failure is returned, never raised."""
    return guarded(task.block_id, lambda tic: scored_block(task, tic))


def scored_block(task: BlockTask, tic: float) -> Outcome:
    config = task.config
    chosen, facts = chosen_pair(config, task.before, task.after, task.part_4326, what="block")
    dates = (chosen[0].date_source(), chosen[1].date_source())
    names = match_bands(*dates)
    grid, area = block_grid(task.grid, task.window, reference_grid(dates[0], names), task.part_4326,
                            margin=config.scan.margin_px)
    zones = plan_cell_zones(task.grid.cell_m, config.scan, grid, area)
    cells, changes, raster = scan_pair(config.scan, dates, names, grid, zones)
    cells, changes = on_region_grid(task, cells, changes)
    for name, value in facts.items():
        cells[name] = value
    return Outcome(task.block_id, sites=cells, changes=changes, raster=raster, before_scene=chosen[0].id,
                   after_scene=chosen[1].id, seconds=time.perf_counter() - tic)


def block_grid(cells: CellGrid, window: Window, native: Grid, place: Any, *, margin: int) -> tuple[Grid, Window]:
    """The analysis grid of a block and the block's window on it.

    The grid is in the cell grid's CRS, its pixels the before scene's ground size near the block
    (``native``; the finer side where they differ) rounded so a cell is a whole number of them, and it reaches
    ``margin`` pixels beyond the block on every side.
    """
    centre = shapely.centroid(place)
    size = pixel_size_m(native.crs, native.transform, centre.x, centre.y)
    per_cell = max(cell_pixels(cells.cell_m, size))
    if per_cell < MIN_CELL_PX:
        coarsest = max(float(size[0]), float(size[1]))
        raise InputError(f"[region] cell_m {cells.cell_m:g} is under {MIN_CELL_PX} pixels of the imagery "
                         f"({coarsest:.1f} m each): give cell_m {coarsest * MIN_CELL_PX:.0f} or more")
    step = cells.cell_m / per_cell
    left, top = cells.transform * (window.col_off, window.row_off)
    transform = Affine(step, 0.0, left - margin * step, 0.0, -step, top + margin * step)
    width, height = int(window.width) * per_cell, int(window.height) * per_cell
    return (Grid(CRS.from_user_input(cells.crs), transform, width + 2 * margin, height + 2 * margin),
            Window(margin, margin, width, height))


def on_region_grid(task: BlockTask, cells: gpd.GeoDataFrame,
                   changes: gpd.GeoDataFrame) -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """The block's cells in the region (ids, rows and columns of the region's grid) and their polygons, each
    with the block's id."""
    rows = cells["cell_row"].to_numpy() + int(task.window.row_off)
    cols = cells["cell_col"].to_numpy() + int(task.window.col_off)
    inside = task.grid.boxes(task.window)
    shapely.prepare(task.part)
    keep = shapely.intersects(task.part, inside) & ~shapely.touches(task.part, inside)
    kept = keep[cells["cell_row"].to_numpy(), cells["cell_col"].to_numpy()]
    renamed = dict(zip(cells["site_id"], cell_ids(rows, cols), strict=True))
    cells = cells.assign(site_id=[renamed[s] for s in cells["site_id"]], cell_row=rows, cell_col=cols)[kept]
    changes = changes.assign(site_id=changes["site_id"].map(renamed))
    changes = changes[changes["site_id"].isin(set(cells["site_id"]))]
    return (cells.assign(**{KEY: task.block_id}).reset_index(drop=True),
            changes.assign(**{KEY: task.block_id}).reset_index(drop=True))
