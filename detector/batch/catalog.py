"""The scenes a batch can choose from: a folder of rasters or a STAC catalog, and what each shows of a site.

A folder catalog holds one scene per raster file (or per sub-folder of band
files, as ``detector run`` takes them); its date comes from the name
(``2017-05-12``, ``20170512``) or the ``TIFFTAG_DATETIME`` tag.  A STAC
catalog is a local JSON file: an ItemCollection, an Item, or a static
Catalog/Collection walked recursively; its assets may be local files or
http(s) COGs, read in windows.  Cloud comes from a mask band (``scl`` or
``cloud``) where the scene has one, else from ``eo:cloud_cover``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.features import geometry_mask
from rasterio.warp import transform_bounds, transform_geom
from rasterio.windows import from_bounds

from detector import masks, products
from detector.batch.pairing import site_shares
from detector.errors import InputError, MissingFileError, first_line
from detector.imagery import (
    MASKS,
    RASTER_SUFFIXES,
    Band,
    DateSource,
    band_name_from_file,
    check_readable,
    date_of,
    file_bands,
    folder_bands,
    safe_bands,
)

log = logging.getLogger(__name__)

SAMPLE_PX = 64  # a site's coverage and cloud are judged on at most 64 x 64 samples


@dataclass(frozen=True, slots=True)
class Scene:
    """One date of imagery in a catalog.

    ``footprint`` is an EPSG:4326 geometry; ``cloud_cover`` the whole scene's
    cloud share (0-1) from its metadata, None when it has none.
    """

    id: str
    source: str
    date: str
    footprint: Any
    bands: tuple[Band, ...]
    cloud_cover: float | None = None

    @property
    def mask(self) -> Band | None:
        return next((b for b in self.bands if b.name in MASKS), None)

    def date_source(self) -> DateSource:
        """The scene as a date of imagery, each file checked to open and decode."""
        for file in dict.fromkeys(b.path for b in self.bands):
            check_readable(file)
        return DateSource(path=self.source, bands=self.bands, date=self.date)


def read_catalog(path: Path, *, bands: str | None = None, key: str = "[imagery] bands") -> list[Scene]:
    """Every scene of a folder or STAC JSON catalog, sorted by date and id; ``bands`` names the bands of its
    multi-band files (:mod:`detector.bands`)."""
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: give a folder of rasters or a STAC JSON file as the catalog")
    scenes = folder_scenes(path, bands=bands, key=key) if path.is_dir() else stac_scenes(path)
    if not scenes:
        raise InputError(f"{path} holds no scenes: add GeoTIFFs (dated in the name or tag) or STAC items")
    return sorted(scenes, key=lambda s: (s.date, s.id))


def folder_scenes(folder: Path, *, bands: str | None = None, key: str = "[imagery] bands") -> list[Scene]:
    """A scene per raster file, band folder, Sentinel-2 product (``.SAFE`` folder or ``.zip``) or Landsat
    Collection 2 folder of ``folder``."""
    scenes = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if products.is_safe(entry):
            scenes.append(raster_scene(entry, safe_bands(entry)[0]))
        elif entry.is_file() and entry.suffix.lower() in RASTER_SUFFIXES:
            scenes.append(raster_scene(entry, file_bands(entry, spec=bands, key=key)))
        elif entry.is_dir() and any(p.suffix.lower() in RASTER_SUFFIXES for p in entry.iterdir()):
            scenes.append(raster_scene(entry, folder_bands(entry)))
    return scenes


def raster_scene(path: Path, bands: tuple[Band, ...]) -> Scene:
    """A scene of a raster file, band folder or product: date from the name or tag, footprint from its bounds."""
    first = bands[0].path  # a path, or a /vsizip/ name inside a zipped product
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(first)
        with src:
            if src.crs is None:
                raise InputError(f"{first} has no coordinate reference system: georeference it or remove it from "
                                 "the catalog")
            box = transform_bounds(src.crs, 4326, *src.bounds, densify_pts=21)
            cover = src.tags().get("EO_CLOUD_COVER")
        date = date_of(path, Path(str(first)))
    except RasterioError as exc:
        raise InputError(f"{first} is not a raster GDAL can read ({exc}): remove it from the catalog or "
                         "download it again") from None
    if date is None:
        raise InputError(f"{path} has no date in its name or TIFFTAG_DATETIME tag: put YYYY-MM-DD in the name")
    if all(b.name in MASKS for b in bands):
        raise InputError(f"{path} holds only a cloud mask: put it beside its bands (same file or folder)")
    return Scene(id=path.name, source=str(path), date=date, footprint=shapely.box(*box), bands=bands,
                 cloud_cover=float(cover) / 100 if cover else None)


def stac_scenes(path: Path) -> list[Scene]:
    """The scenes of a STAC JSON file's items (a Catalog's, a Collection's, an Item or an ItemCollection)."""
    scenes = [item_scene(item, base=path.parent) for item in stac_items(path)]
    return [s for s in scenes if s is not None]


def stac_items(path: Path) -> list[Any]:
    """The items of a STAC JSON file: a Catalog's or Collection's (walked), an Item, an ItemCollection's."""
    import pystac

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_file(str(path)))
        else:
            stac = pystac.read_file(str(path))
            if isinstance(stac, pystac.Item):
                items = [stac]
            elif isinstance(stac, pystac.Catalog):
                items = list(stac.get_items(recursive=True))
            else:
                raise ValueError(f"a STAC {type(stac).__name__}")
    except (OSError, ValueError, KeyError, TypeError, pystac.STACError, pystac.STACTypeError) as exc:
        raise InputError(f"{path} is not a STAC catalog, collection, item or ItemCollection ({first_line(exc)}): "
                         "give a folder of rasters or a STAC JSON file") from None
    return items


def item_scene(item: Any, *, base: Path | None = None) -> Scene | None:
    """A scene of a STAC item: its image assets named by band; None (logged) when none names a data band.

    Relative asset hrefs of an item without a self link are taken from ``base``.
    """
    bands: dict[str, Band] = {}
    for key, asset in item.assets.items():
        if asset.media_type and not any(t in asset.media_type for t in ("tiff", "jp2", "geotiff")):
            continue
        target = asset_target(asset.get_absolute_href() or asset.href, base)
        for index, name in enumerate(asset_band_names(key, asset.extra_fields), start=1):
            if name is not None and name not in bands:
                bands[name] = Band(target, index, name)
    when = item.datetime or item.common_metadata.start_datetime
    if all(name in MASKS for name in bands) or when is None or item.geometry is None:
        log.warning("STAC item %s skipped: no dated image asset named by band", item.id)
        return None
    cover = item.properties.get("eo:cloud_cover")
    return Scene(id=item.id, source=item.get_self_href() or item.id, date=when.date().isoformat(),
                 footprint=shapely.geometry.shape(item.geometry), bands=tuple(bands.values()),
                 cloud_cover=None if cover is None else float(cover) / 100)


def asset_target(href: str, base: Path | None) -> Path | str:
    """A local path for a local href (``file://`` stripped, relative ones from ``base``), else the URL."""
    if href.startswith(("http://", "https://", "/vsi")):
        return href
    path = Path(href.removeprefix("file://"))
    return path if path.is_absolute() or base is None else base / path


def asset_band_names(key: str, fields: dict[str, Any]) -> list[str | None]:
    """Canonical band names of an asset's bands: from ``eo:bands``/``bands``, else from the asset key."""
    listed = fields.get("eo:bands") or fields.get("bands") or []
    names = [band_name_from_file(str(b.get("common_name") or b.get("eo:common_name") or b.get("name") or ""))
             for b in listed]
    if len(listed) > 1 or any(names):
        return names
    return [band_name_from_file(key)]


def site_cover(scene: Scene, site: Any) -> tuple[float, float]:
    """(valid share, cloud share) of a site (an EPSG:4326 polygon) in a scene, read on a coarse sample grid.

    Cloud is NaN without a mask band; then the scene's ``cloud_cover`` stands in.
    """
    data = next(b for b in scene.bands if b.name not in MASKS)
    valid, inside = sample(data, site, fill=None)
    cloudy = None
    if scene.mask is not None:
        classes, _ = sample(scene.mask, site, fill=0, shape=valid.shape)
        mask_valid, cloudy = masks.decode(classes, scene.mask.name)
        valid = valid & mask_valid
    share, cloud = site_shares(valid, cloudy, inside)
    if np.isnan(cloud) and scene.cloud_cover is not None:
        cloud = scene.cloud_cover
    return share, cloud


def sample(band: Band, site: Any, *, fill: int | None,
           shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A band over the site's bounds on at most SAMPLE_PX² samples.

    Returns (values or valid flags, inside): with ``fill`` None, the first
    array says where the band has data; else it holds the raw values (nearest
    sample), ``fill`` outside the file.
    """
    try:
        with rasterio.open(band.path) as src:
            geom = transform_geom("EPSG:4326", src.crs, shapely.geometry.mapping(site))
            box = shapely.bounds(shapely.geometry.shape(geom))
            window = from_bounds(*box, transform=src.transform)
            if shape is None:
                shape = (max(1, min(SAMPLE_PX, round(window.height))), max(1, min(SAMPLE_PX, round(window.width))))
            nodata = src.nodatavals[band.index - 1]
            values = src.read(band.index, window=window, out_shape=shape, boundless=True,
                              fill_value=0 if fill is None else fill, resampling=Resampling.nearest)
            transform = src.window_transform(window) * rasterio.Affine.scale(window.width / shape[1],
                                                                              window.height / shape[0])
    except RasterioError as exc:
        raise InputError(f"{band.path} could not be read ({exc}): download it again") from None
    inside = geometry_mask([geom], out_shape=shape, transform=transform, invert=True, all_touched=True)
    if fill is not None:
        return values, inside
    valid = np.isfinite(values) & (values != 0)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    return valid, inside
