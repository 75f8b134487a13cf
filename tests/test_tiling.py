"""Window and tile arithmetic: property tests, no file touched."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from detector.tiling import (
    BATCH_PX,
    cell_windows,
    intersect,
    pad,
    pixel_windows,
    plan_cells,
    plan_sites,
    tiles_per_batch,
    union,
)

sizes = st.integers(min_value=1, max_value=300)


@st.composite
def area_in_grid(draw: st.DrawFn) -> tuple[int, int, Window]:
    height, width = draw(sizes), draw(sizes)
    r0 = draw(st.integers(0, height - 1))
    c0 = draw(st.integers(0, width - 1))
    h = draw(st.integers(1, height - r0))
    w = draw(st.integers(1, width - c0))
    return height, width, Window(c0, r0, w, h)


def coverage(windows: list[Window], height: int, width: int) -> np.ndarray:
    count = np.zeros((height, width), dtype=int)
    for w in windows:
        count[int(w.row_off):int(w.row_off + w.height), int(w.col_off):int(w.col_off + w.width)] += 1
    return count


@given(area_in_grid(), st.integers(1, 60), st.integers(1, 60))
def test_cells_cover_the_area_exactly_once(grid: tuple, cell_h: int, cell_w: int) -> None:
    height, width, area = grid
    cells = [w for row in cell_windows(area, cell_h, cell_w) for w in row]
    expected = np.zeros((height, width), dtype=int)
    expected[int(area.row_off):int(area.row_off + area.height), int(area.col_off):int(area.col_off + area.width)] = 1
    assert np.array_equal(coverage(cells, height, width), expected)
    assert all(w.height <= cell_h and w.width <= cell_w for w in cells)


@settings(max_examples=60)
@given(area_in_grid(), st.integers(1, 50), st.integers(1, 50), st.integers(16, 200), st.integers(0, 40))
def test_tiles_partition_cells_and_reads_hold_cores(grid: tuple, cell_h: int, cell_w: int, tile_px: int,
                                                     margin: int) -> None:
    height, width, area = grid
    cells, batches = plan_cells(area, cell_h=cell_h, cell_w=cell_w, tile_px=tile_px, margin=margin,
                                height=height, width=width)
    units = [u for b in batches for u in b.units]
    zones = sorted(z for u in units for z in u.zones)
    assert zones == list(range(len(cells)))
    cores = coverage([u.core for u in units], height, width)
    assert np.array_equal(cores, coverage(cells, height, width))
    for batch in batches:
        for unit in batch.units:
            assert intersect(unit.read, unit.core) == unit.core
            assert intersect(batch.read, unit.read) == unit.read
            assert intersect(unit.read, Window(0, 0, width, height)) == unit.read
            assert union([unit.core] + [cells[z] for z in unit.zones]) == unit.core
        assert batch.tile_shape[0] <= max(tile_px, cell_h) + 2 * margin + cell_h


def test_a_batch_of_large_tiles_at_full_resolution_is_one_tile_and_small_ones_stay_four() -> None:
    assert tiles_per_batch(512, 2) == 4  # 256 x 256 scored per tile: four of them make BATCH_PX
    assert tiles_per_batch(512, 1) == 1  # 512 x 512 scored: one is BATCH_PX already
    assert tiles_per_batch(1024, 1) == 1 and tiles_per_batch(64, 1) == 4
    for tile_px in range(16, 2049, 37):
        for factor in (1, 2, 3, 4):
            n = tiles_per_batch(tile_px, factor)
            assert 1 <= n <= 4 and (n == 1 or n * (tile_px // factor) ** 2 <= BATCH_PX)


@given(area_in_grid(), st.integers(0, 50))
def test_pad_stays_in_grid_and_grows_by_margin(grid: tuple, margin: int) -> None:
    height, width, window = grid
    padded = pad(window, margin, within=Window(0, 0, width, height))
    assert padded is not None and intersect(padded, window) == window
    assert padded.row_off == max(0, window.row_off - margin)
    assert padded.col_off + padded.width == min(width, window.col_off + window.width + margin)


def test_pad_outside_the_area_is_none() -> None:
    assert pad(Window(50, 50, 5, 5), 3, within=Window(0, 0, 40, 40)) is None
    assert pad(Window(50, 50, 5, 5), 12, within=Window(0, 0, 40, 40)) == Window(38, 38, 2, 2)


def overlapped(lo: float, hi: float, size: int) -> np.ndarray:
    """Pixels k of [0, size) whose square [k, k + 1) overlaps the interval [lo, hi] by a positive length."""
    k = np.arange(size)
    return (k < hi) & (k + 1 > lo)


@given(st.lists(st.tuples(st.floats(-50, 350), st.floats(0.01, 80), st.floats(-50, 350), st.floats(0.01, 80)),
                min_size=1, max_size=20), area_in_grid())
def test_pixel_windows_hold_exactly_the_pixels_an_extent_overlaps(extents: list, grid: tuple) -> None:
    """Against a rule of its own: a pixel is in a site's window when its square overlaps the site's extent."""
    height, width, area = grid
    arr = np.array(extents)
    rows = np.stack([arr[:, 0], arr[:, 0] + arr[:, 1]], 1)
    cols = np.stack([arr[:, 2], arr[:, 2] + arr[:, 3]], 1)
    in_area = coverage([area], height, width).astype(bool)
    for (r0, r1), (c0, c1), w in zip(rows, cols, pixel_windows(rows, cols, area), strict=True):
        expected = overlapped(r0, r1, height)[:, None] & overlapped(c0, c1, width)[None, :] & in_area
        got = coverage([w], height, width).astype(bool) if w is not None else np.zeros_like(expected)
        assert np.array_equal(got, expected)


def test_site_units_have_context_and_skip_missing_sites() -> None:
    windows = [Window(10, 10, 20, 20), None, Window(0, 0, 5, 5)]
    batches = plan_sites(windows, margin=4, height=100, width=100)
    assert [b.units[0].zones for b in batches] == [(0,), (2,)]
    first = batches[0].units[0]
    assert first.read == Window(0, 0, 40, 40)  # half the site size (10) beats the margin (4)
    assert batches[1].units[0].read == Window(0, 0, 9, 9)


def test_cell_batches_of_a_sentinel_2_scene_are_one_tile_at_full_resolution_and_four_on_blocks() -> None:
    """What the run plans (``zones.plan_cell_zones``) for a 10 m scene: the batch size follows the blocks scored."""
    from rasterio.crs import CRS
    from rasterio.transform import from_origin

    from detector.config import ScanOptions
    from detector.imagery import Grid
    from detector.zones import plan_cell_zones

    grid = Grid(CRS.from_epsg(32645), from_origin(500000.0, 4800000.0, 10.0, 10.0), 3000, 3000)
    area = Window(0, 0, 3000, 3000)
    for scan, most in ((ScanOptions(), 1), (ScanOptions(bin=2), 4)):
        batches = plan_cell_zones(500.0, scan, grid, area).batches
        assert max(len(b.units) for b in batches) == most
