"""A cloud mask for a Sentinel-2 date that has none (L1C): s2cloudless, optional (``pip install '.[clouds]'``).

``--cloud-detector s2cloudless`` runs Sinergise's pixel classifier (its
LightGBM model ships in the ``s2cloudless`` wheel: nothing is downloaded) on
the ten bands it was trained on (B01 B02 B04 B05 B08 B8A B09 B10 B11 B12,
top-of-atmosphere reflectance), read at 60 m over the whole date, with the
package's documented settings for 60 m (threshold 0.4, probabilities averaged
over 4 px, the mask dilated by 2 px).  The mask is written as a GeoTIFF of
its own, kept in the result folder and recorded, and becomes the date's mask
band (:mod:`detector.masks`, kind ``cloud``).  A date that already has a mask
(L2A ``SCL``, Landsat ``QA_PIXEL``, ``--before-mask``) keeps its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from detector.errors import InputError
from detector.imagery import DateReader, DateSource, Grid, with_mask

DETECTORS = ("none", "s2cloudless")
BANDS = ("coastal", "blue", "red", "rededge1", "nir", "nir08", "watervapour", "cirrus", "swir16", "swir22")
PIXEL_M = 60.0
QUANTIFICATION = 10000.0  # Sentinel-2 DN per unit of reflectance


def masked(date: DateSource, grid: Grid, path: Path, *, key: str) -> DateSource:
    """``date`` with an s2cloudless mask (written to ``path``) as its mask band; unchanged if it has one."""
    if date.mask is not None:
        return date
    missing = [b for b in BANDS if b not in date.names]
    if missing:
        raise InputError(f"{key} s2cloudless needs the Sentinel-2 bands {', '.join(BANDS)}; {date.path} lacks "
                         f"{', '.join(missing)}: give a whole L1C product, or a mask with --before-mask/--after-mask")
    coarse = coarse_grid(grid)
    with DateReader(date, BANDS, coarse) as reader:
        data = reader.read(Window(0, 0, coarse.width, coarse.height))
    write_mask(cloud_mask(data), coarse, path)
    return dataclasses.replace(date, bands=with_mask(date.bands, path, key=key))


def coarse_grid(grid: Grid) -> Grid:
    """The grid at about 60 m (a whole multiple of its pixel), over the same extent."""
    pixel = abs(grid.transform.a) if not grid.crs.is_geographic else abs(grid.transform.a) * 111_320
    factor = max(1, round(PIXEL_M / pixel))
    return Grid(grid.crs, grid.transform * Affine.scale(factor), -(-grid.width // factor), -(-grid.height // factor))


def cloud_mask(data: np.ndarray) -> np.ndarray:
    """(H, W) uint8, 1 = cloud, of the ten bands (10, H, W) in DN (NaN = no data)."""
    try:
        from s2cloudless import S2PixelCloudDetector
    except ImportError:
        raise InputError("--cloud-detector s2cloudless needs the s2cloudless package: pip install "
                         "'site-change-detector[clouds]' (or pip install s2cloudless)") from None
    reflectance = np.nan_to_num(np.moveaxis(data, 0, -1) / QUANTIFICATION, nan=0.0)
    detector = S2PixelCloudDetector(threshold=0.4, average_over=4, dilation_size=2, all_bands=False)
    mask = detector.get_cloud_masks(reflectance[None].astype(np.float32))[0]
    return (mask > 0).astype(np.uint8) & np.isfinite(data).all(axis=0)


def write_mask(mask: np.ndarray, grid: Grid, path: Path) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
                       crs=grid.crs, transform=grid.transform, compress="deflate") as dst:
        dst.write(mask[None])
