"""Band naming, folders of band files at mixed resolution, dates, windowed reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from detector.errors import InputError
from detector.imagery import (
    DateReader,
    band_name_from_file,
    dataset_band_names,
    match_bands,
    open_date,
    overlap_window,
    reference_grid,
)


@pytest.mark.parametrize("stem,name", [
    ("B02", "blue"), ("B8A", "nir08"), ("T45TUJ_20180801T050701_B11_20m", "swir16"),
    ("LC08_L2SP_143030_20180805_20200831_02_T1_SR_B4", "red"), ("LC09_x_B5", "nir"),
    ("LT05_L1TP_143030_20100801_B4", "nir"), ("LE07_x_B3", "red"), ("red", "red"), ("SWIR1", "swir16"),
    ("MTL", None), ("LC08_x_QA_PIXEL", "qa_pixel"), ("LC08_x_QA_RADSAT", None), ("SR_QA_AEROSOL", None),
    ("T45TUJ_20200602T050701_SCL_20m", "scl"), ("cirrus", "cirrus"), ("thermal", "lwir"),
])
def test_band_names_from_file_names(stem: str, name: str | None) -> None:
    assert band_name_from_file(stem) == name


def test_plain_three_band_file_is_rgb_and_descriptions_win() -> None:
    gray = (ColorInterp.gray,) * 3
    assert dataset_band_names((None, None, None), gray, 3) == ("red", "green", "blue")
    assert dataset_band_names(("B04", "B03", "B08"), gray, 3) == ("red", "green", "nir")
    assert dataset_band_names((None,) * 4, (ColorInterp.gray,) * 4, 4) == ("band1", "band2", "band3", "band4")


def write_band(path: Path, data: np.ndarray, pixel: float) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                       dtype=data.dtype, crs=CRS.from_epsg(32645),
                       transform=from_origin(500000, 4800000, pixel, pixel)) as dst:
        dst.write(data, 1)


def test_folder_of_bands_at_two_resolutions_reads_on_the_finest_grid(tmp_path: Path) -> None:
    date = tmp_path / "S2_20180801"
    date.mkdir()
    ramp = np.arange(40 * 40, dtype=np.uint16).reshape(40, 40) + 100
    write_band(date / "B04.tif", ramp, 10.0)
    write_band(date / "B08.tif", ramp + 5, 10.0)
    write_band(date / "B11.tif", np.full((20, 20), 900, np.uint16), 20.0)
    (date / "notes.txt").write_text("not a band")
    source = open_date(date)
    assert source.names == ("red", "nir", "swir16") and source.date == "2018-08-01"
    grid = reference_grid(source, source.names)
    assert (grid.width, grid.height) == (40, 40)
    with DateReader(source, source.names, grid) as reader:
        tile = reader.read(Window(5, 5, 10, 12))
    assert tile.shape == (3, 12, 10) and tile.dtype == np.float32
    assert np.array_equal(tile[0], ramp[5:17, 5:15].astype(np.float32))
    assert np.allclose(tile[2], 900)


def test_declared_nodata_and_all_zero_pixels_are_nan(tmp_path: Path) -> None:
    data = np.full((3, 20, 20), 50, np.uint8)
    data[:, :5] = 0
    data[1, 10:, 10:] = 7
    path = tmp_path / "rgb_2017-03-02.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=3, dtype="uint8",
                       crs="EPSG:4326", transform=from_origin(88, 43, 0.001, 0.001), nodata=7) as dst:
        dst.write(data)
    source = open_date(path)
    grid = reference_grid(source, source.names)
    with DateReader(source, source.names, grid) as reader:
        tile = reader.read(Window(0, 0, 20, 20))
    assert np.isnan(tile[:, :5]).all() and np.isnan(tile[:, 10:, 10:]).all()
    assert np.isfinite(tile[:, 5:10]).all()


def test_dates_without_common_bands_or_overlap_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    write_band(a / "B04.tif", np.ones((10, 10), np.uint16), 10.0)
    write_band(b / "B08.tif", np.ones((10, 10), np.uint16), 10.0)
    with pytest.raises(InputError, match="no band in common"):
        match_bands(open_date(a), open_date(b))
    far = tmp_path / "far.tif"
    with rasterio.open(far, "w", driver="GTiff", width=10, height=10, count=1, dtype="uint16",
                       crs=CRS.from_epsg(32645), transform=from_origin(900000, 4000000, 10, 10)) as dst:
        dst.write(np.ones((1, 10, 10), np.uint16))
    source = open_date(a)
    with pytest.raises(InputError, match="does not overlap"):
        overlap_window(reference_grid(source, source.names), open_date(far))
