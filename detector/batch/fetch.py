"""``detector fetch``: the windows around the sites, from the COG assets of a STAC API, into a folder catalog.

Items are found with pystac-client: a STAC API's ``/search`` where the
endpoint offers it, else by walking a static catalog and filtering by bounds
and date.  For every item and every site its footprint covers, each wanted
band is read in one window around the site (rasterio over HTTP range
requests: only that window is downloaded) and written, resampled onto the
finest band's grid, as one GeoTIFF named by date, item and site, with the
band names, the date tag and the item's hrefs inside.  A file already there
is kept, so a fetch that was stopped continues.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.errors import RasterioError, WindowError
from rasterio.warp import transform_geom
from rasterio.windows import Window, from_bounds

from detector.bands import ALIASES, KNOWN
from detector.batch.catalog import Scene, item_scene, stac_items
from detector.batch.config import BatchConfig
from detector.batch.pairing import covering
from detector.batch.store import safe_name
from detector.errors import InputError, first_line
from detector.files import atomic
from detector.imagery import MASKS, Band

DEFAULT_BANDS = ("blue", "green", "red", "nir", "swir16", "swir22", "scl", "qa_pixel", "cloud")
GROUP_DEG = 1.0  # sites are searched for in groups of one degree square
FetchProgress = Callable[[int, int], None]  # windows written, windows planned


@dataclass(frozen=True, slots=True)
class Job:
    """One window to fetch: a site of the batch from one scene."""

    scene: Scene
    site_id: str
    site: Any  # EPSG:4326 polygon
    target: Path


def fetch(config: BatchConfig, stac: str, *, collections: list[str] | None = None,
          bands: tuple[str, ...] = DEFAULT_BANDS, margin_m: float = 320.0, threads: int = 4,
          progress: FetchProgress | None = None) -> dict[str, int]:
    """Fetch the windows of every site of ``config`` into its catalog folder; return counts."""
    bands = fetch_bands(bands)
    if not np.isfinite(margin_m) or margin_m < 0:
        raise InputError(f"--margin-m is {margin_m}: give a distance in metres, 0 or more")
    if config.catalog.suffix.lower() == ".json":
        raise InputError(f"[imagery] catalog is {config.catalog}, a JSON file: fetch writes rasters into a folder; "
                         "give a folder as the catalog")
    sites = config.read_sites()
    scenes = {s.id: s for s in search(config, sites, stac, collections, bands)}
    jobs = plan_jobs(config, sites, list(scenes.values()), margin_m=margin_m)
    if not jobs:
        raise InputError(f"no item of {stac} covers a site in the date windows of {config.path} with the bands "
                         f"{', '.join(bands)}: check the collections, the dates and the sites")
    todo = [j for j in jobs if not j.target.exists()]
    written = 0
    config.catalog.mkdir(parents=True, exist_ok=True)  # once the catalog was read: a refusal leaves no folder
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(write_window, todo):
            written += 1
            if progress is not None:
                progress(written, len(todo))
    return {"items": len(scenes), "windows": len(jobs), "written": written, "kept": len(jobs) - len(todo)}


def fetch_bands(bands: tuple[str, ...]) -> tuple[str, ...]:
    """The bands to fetch by their canonical names (``swir1``, ``RED`` as ``--bands`` takes them elsewhere);
    names no scene can have are refused."""
    names = tuple(ALIASES.get(b.strip().lower(), b.strip().lower()) for b in bands)
    unknown = [b for b, n in zip(bands, names, strict=True) if n not in KNOWN]
    if unknown:
        raise InputError(f"--bands {' '.join(unknown)}: not a band name; give names among {', '.join(KNOWN)}")
    return names


class ItemFile:
    """The items of a local STAC Item or ItemCollection file (:func:`detector.batch.catalog.stac_items`), walked
    as a static catalog is."""

    def __init__(self, path: Path) -> None:
        self.items = stac_items(path)

    def conforms_to(self, _: object) -> bool:
        """No API: nothing to search, the items are walked."""
        return False

    def get_items(self, recursive: bool = True) -> Iterator[Any]:
        """Every item of the file."""
        return iter(self.items)


def open_stac(stac: str) -> Any:
    """A pystac-client Client of a STAC API or a static catalog, an :class:`ItemFile` of a local Item or
    ItemCollection file; anything else is one line."""
    import pystac
    from pystac_client import Client
    from pystac_client.errors import ClientTypeError
    from pystac_client.exceptions import APIError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a static catalog has no conformance classes: that is expected
            return Client.open(stac)
    except (ClientTypeError, pystac.STACTypeError) as exc:
        if Path(stac).is_file():
            return ItemFile(Path(stac))
        raise InputError(f"{stac} is no STAC API or catalog ({first_line(exc, limit=200)}): give a STAC API, a "
                         "static catalog, or a local Item or ItemCollection file") from None
    except (APIError, OSError, ValueError, KeyError, TypeError, pystac.STACError) as exc:
        raise InputError(f"could not open the STAC catalog {stac}: {why_not(exc)}") from None


def local_base(stac: str) -> Path | None:
    """The folder that relative asset addresses of a local STAC file start from (None for an http address)."""
    return Path(stac).resolve().parent if Path(stac).is_file() else None


def search(config: BatchConfig, sites: gpd.GeoDataFrame, stac: str, collections: list[str] | None,
           bands: tuple[str, ...]) -> Iterator[Scene]:
    """Scenes of the items over the sites in either date window, with only the wanted bands."""
    client = open_stac(stac)
    for window in (config.before, config.after):
        start, end = widen(window, config.tolerance_days)
        for bbox in group_bounds(sites):
            for item in items(client, collections, bbox, start, end):
                scene = item_scene(item, base=local_base(stac))
                if scene is not None:
                    kept = tuple(b for b in scene.bands if b.name in bands)
                    if any(b.name not in MASKS for b in kept):
                        yield Scene(scene.id, scene.source, scene.date, scene.footprint, kept, scene.cloud_cover)


UNREACHABLE = ("Failed to establish a new connection", "Failed to resolve", "Name or service not known",
               "Connection refused", "Max retries exceeded", "timed out", "Network is unreachable")


def why_not(exc: BaseException) -> str:
    """Why a catalog could not be opened, in words: an unreachable host said as such, else the error's text."""
    text = str(exc)
    if any(sign in text for sign in UNREACHABLE):
        return ("the network or the host cannot be reached from here (no connection); check the address, or fetch "
                "where the network is open and copy the catalog folder over")
    return f"{first_line(exc, limit=300)}; check the address"


def items(client: Any, collections: list[str] | None, bbox: tuple[float, ...], start: dt.date,
          end: dt.date) -> Iterator[Any]:
    """Items over ``bbox`` dated ``start``..``end``: the API's search, or a filtered walk of a static catalog."""
    from pystac_client import ConformanceClasses

    if client.conforms_to(ConformanceClasses.ITEM_SEARCH):
        found = client.search(collections=collections, bbox=bbox, datetime=f"{start}/{end}", max_items=None)
        yield from found.items()
        return
    area = shapely.box(*bbox)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for item in client.get_items(recursive=True):
            when = item.datetime or item.common_metadata.start_datetime
            if collections and item.collection_id not in collections:
                continue
            if (when is not None and start <= when.date() <= end and item.geometry is not None
                    and shapely.intersects(area, shapely.geometry.shape(item.geometry))):
                yield item


def widen(window: tuple[str, str], days: int) -> tuple[dt.date, dt.date]:
    pad = dt.timedelta(days=days)
    return dt.date.fromisoformat(window[0]) - pad, dt.date.fromisoformat(window[1]) + pad


def group_bounds(sites: gpd.GeoDataFrame) -> list[tuple[float, ...]]:
    """One search box per square degree that holds sites: the bounds of its sites."""
    bounds = shapely.bounds(np.asarray(sites.geometry.values, dtype=object))
    keys = np.floor(shapely.get_coordinates(shapely.centroid(np.asarray(sites.geometry.values, dtype=object)))
                    / GROUP_DEG)
    boxes: list[tuple[float, ...]] = []
    for key in np.unique(keys, axis=0):
        member = (keys == key).all(axis=1)
        part = bounds[member]
        boxes.append((float(part[:, 0].min()), float(part[:, 1].min()), float(part[:, 2].max()),
                      float(part[:, 3].max())))
    return boxes


def plan_jobs(config: BatchConfig, sites: gpd.GeoDataFrame, scenes: list[Scene], *, margin_m: float) -> list[Job]:
    """A window per (scene, site covered by the scene's footprint)."""
    if not scenes:
        return []
    geoms = np.asarray(sites.geometry.values, dtype=object)
    site_of, scene_of = covering(geoms, np.array([s.footprint for s in scenes], dtype=object))
    grown = sites.to_crs(sites.estimate_utm_crs()).buffer(margin_m).to_crs(4326).to_numpy()
    jobs = []
    for i, j in zip(site_of, scene_of, strict=True):
        scene, site_id = scenes[j], str(sites["site_id"].iloc[i])
        name = f"{scene.date}_{safe_name(scene.id)}_{safe_name(site_id)}.tif"
        jobs.append(Job(scene, site_id, grown[i], config.catalog / name))
    return jobs


def write_window(job: Job) -> None:
    """Read the job's window of every band and write them as one GeoTIFF (temporary file, then rename)."""
    finest = min(job.scene.bands, key=_pixel_area)
    profile = window_profile(finest, job.site)
    layers = [read_band(b, profile) for b in job.scene.bands]
    dtype = np.result_type(*layers)
    tags = {"TIFFTAG_DATETIME": job.scene.date.replace("-", ":") + " 00:00:00", "STAC_ITEM": job.scene.id,
            "STAC_SOURCE": job.scene.source, "SITE_ID": job.site_id,
            "STAC_ASSETS": " ".join(str(b.path) for b in job.scene.bands)}
    if job.scene.cloud_cover is not None:
        tags["EO_CLOUD_COVER"] = f"{job.scene.cloud_cover * 100:g}"
    with atomic(job.target) as tmp, rasterio.open(tmp, "w", driver="GTiff", count=len(layers), dtype=dtype,
                                                  tiled=True, blockxsize=256, blockysize=256, compress="deflate",
                                                  **profile) as dst:
        dst.write(np.stack(layers).astype(dtype))
        for index, band in enumerate(job.scene.bands, start=1):
            dst.set_band_description(index, band.name)
        dst.update_tags(**tags)


def window_profile(band: Band, site: Any) -> dict[str, Any]:
    """Grid of the window around ``site`` (EPSG:4326) on ``band``'s grid: whole pixels, clipped to the file."""
    with _opened(band) as src:
        geom = transform_geom("EPSG:4326", src.crs, shapely.geometry.mapping(site))
        window = from_bounds(*shapely.bounds(shapely.geometry.shape(geom)), transform=src.transform)
        window = window.round_offsets(op="floor").round_lengths(op="ceil")
        try:
            window = window.intersection(Window(0, 0, src.width, src.height))
        except WindowError:
            raise InputError(f"{band.path} does not reach the site although its item's footprint covers it: "
                             "check the item's geometry") from None
        return {"crs": src.crs, "transform": src.window_transform(window), "width": int(window.width),
                "height": int(window.height), "nodata": src.nodata}


def read_band(band: Band, profile: dict[str, Any]) -> np.ndarray:
    """One band over the profile's window (all bands of an item must share its CRS), at its shape."""
    left, top = profile["transform"] * (0, 0)
    right, bottom = profile["transform"] * (profile["width"], profile["height"])
    with _opened(band) as src:
        if src.crs != profile["crs"]:
            raise InputError(f"{band.path} is in {src.crs}, the item's other bands in {profile['crs']}: "
                             "fetch needs the bands of one item in one CRS")
        window = from_bounds(left, bottom, right, top, transform=src.transform)
        return src.read(band.index, window=window, out_shape=(profile["height"], profile["width"]), boundless=True,
                        fill_value=src.nodata or 0,
                        resampling=Resampling.nearest if band.name in MASKS else Resampling.bilinear)


@contextmanager
def _opened(band: Band) -> Iterator[Any]:
    """The band's file, open; an unreachable or unreadable one is a one-line error naming it."""
    try:
        with rasterio.open(band.path) as src:
            yield src
    except RasterioError as exc:
        raise InputError(f"{band.path} could not be read ({first_line(exc)}): "
                         "check the address or try again later") from None


def _pixel_area(band: Band) -> float:
    with _opened(band) as src:
        return abs(src.transform.a * src.transform.e)
