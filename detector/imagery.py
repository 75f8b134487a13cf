"""Open one date of imagery and read windows of it onto a common grid.

A *date* is a multi-band raster file or a folder of single-band files named by
band (Sentinel-2 ``B02.tif``, Landsat ``*_B4.TIF``, or ``red.tif``).  Bands get
canonical names (``blue``, ``green``, ``red``, ``nir``, ``swir16``...), so two
dates are matched by name whatever their layout.  Every band is read onto one
reference grid (the before date's finest band) through a ``WarpedVRT`` when its
own grid differs, one window at a time: memory never grows with the scene.
"""

from __future__ import annotations

import re
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from detector import bands as band_specs
from detector import masks, products
from detector.errors import InputError, MissingFileError, first_line
from detector.tiling import bounds_window, intersect

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".img", ".vrt")
SENTINEL2 = {
    "B01": "coastal", "B02": "blue", "B03": "green", "B04": "red", "B05": "rededge1",
    "B06": "rededge2", "B07": "rededge3", "B08": "nir", "B8A": "nir08", "B09": "watervapour",
    "B10": "cirrus", "B11": "swir16", "B12": "swir22",
}
LANDSAT_OLI = {"B1": "coastal", "B2": "blue", "B3": "green", "B4": "red", "B5": "nir",
               "B6": "swir16", "B7": "swir22", "B8": "pan", "B9": "cirrus"}
LANDSAT_TM = {"B1": "blue", "B2": "green", "B3": "red", "B4": "nir", "B5": "swir16", "B7": "swir22"}
MASKS = masks.KINDS  # mask bands: never scored, they say which pixels are obscured or hold no data
COLOR = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}
DATE_IN_NAME = re.compile(r"(?<!\d)((?:19|20)\d{2})-?(0[1-9]|1[0-2])-?(0[1-9]|[12]\d|3[01])(?!\d)")


@dataclass(frozen=True, slots=True)
class Band:
    """One band of a date: the file (a path, or an http(s) URL of a COG), its 1-based index, its canonical name,
    and the offset added to its stored values (the product's radiometric offset in stored units, see
    :mod:`detector.products`; 0 for most files)."""

    path: Path | str
    index: int
    name: str
    offset: float = 0.0


@dataclass(frozen=True, slots=True)
class Grid:
    """A raster grid: CRS, affine transform and shape in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(top, bottom), max(left, right), max(top, bottom)


@dataclass(frozen=True, slots=True)
class DateSource:
    """One date of imagery: where it came from, its bands and its acquisition date."""

    path: Path | str
    bands: tuple[Band, ...]
    date: str | None
    product: dict[str, object] | None = None  # a whole product's level, tile, baseline (detector.products)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    @property
    def files(self) -> tuple[Path | str, ...]:
        return tuple(dict.fromkeys(b.path for b in self.bands))

    @property
    def local_files(self) -> tuple[Path, ...]:
        """The files on disk that hold the date (a zipped product once, URLs left out), for hashing."""
        found = [local_file(str(f)) for f in self.files]
        return tuple(dict.fromkeys(f for f in found if f is not None))

    @property
    def mask(self) -> Band | None:
        """The date's mask band (:mod:`detector.masks`), if it has one."""
        return next((b for b in self.bands if b.name in MASKS), None)

    def mapping(self) -> list[dict[str, object]]:
        """Which band of which file got which name, for ``run.json``."""
        return [{"file": str(b.path), "index": b.index, "name": b.name, **({"offset": b.offset} if b.offset else {})}
                for b in self.bands]


def local_file(name: str) -> Path | None:
    """The file on disk behind a band's path: itself, or the zip of a ``/vsizip/`` name; None for a URL."""
    if name.startswith("/vsizip/"):
        return Path(name.removeprefix("/vsizip/").split(".zip/")[0] + ".zip")
    return None if name.startswith(("http://", "https://", "/vsi")) else Path(name)


def open_date(path: str | Path, *, date: str | None = None, bands: str | None = None, mask: Path | None = None,
              keys: tuple[str, str] = ("--bands", "--mask")) -> DateSource:
    """Describe a date given as a multi-band file or a folder of band files.

    ``bands`` names the bands of a multi-band file (:func:`detector.bands.band_names`);
    ``mask`` is a mask file (non-zero = obscured) that replaces any mask band
    of the date.  ``keys`` name the two options in errors.  Checks that every
    file opens, has a CRS and can be decoded at its first and last block, so
    a damaged download fails before any work starts.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist: give a raster file or a folder of band files")
    is_product = products.is_safe(path)
    if bands is not None and (path.is_dir() or is_product):
        raise InputError(f"{keys[0]} names the bands of one multi-band file, and {path} is a folder: name its band "
                         f"files by band (B02.tif, red.tif) or drop {keys[0]}")
    product: dict[str, object] | None = None
    if is_product:
        found, product = safe_bands(path)
    elif path.is_dir():
        found = folder_bands(path)
    else:
        found = file_bands(path, spec=bands, key=keys[0])
    if mask is not None:
        found = with_mask(found, mask, key=keys[1])
    for file in dict.fromkeys(b.path for b in found):
        check_readable(file)
    return DateSource(path=path, bands=found, date=date or date_of(path, Path(found[0].path)), product=product)


def safe_bands(path: Path) -> tuple[tuple[Band, ...], dict[str, object]]:
    """The bands of a Sentinel-2 product (:mod:`detector.products`), each at its finest resolution with its
    radiometric offset, and what the run records of the product."""
    images, xml = products.safe_files(path)
    offsets = products.radiometric_offsets(xml, where=path)
    named: dict[str, Band] = {}
    for image in images:
        stem = Path(image).stem
        name, code = band_name_from_file(stem), products.band_id(stem)
        if name is not None and name not in named:
            named[name] = Band(image, 1, name, offsets[code] if code else 0.0)
    if not any(n not in MASKS for n in named):
        raise InputError(f"{path} holds no band images under GRANULE/*/IMG_DATA: download the whole product again")
    return tuple(named.values()), products.product_info(path, xml)


def with_mask(found: tuple[Band, ...], mask: Path, *, key: str) -> tuple[Band, ...]:
    """The bands with ``mask`` (a one-band file, non-zero = obscured) as their only mask band."""
    if not mask.is_file():
        raise MissingFileError(f"{key} {mask} does not exist: give a raster whose non-zero pixels are cloud")
    return (*(b for b in found if b.name not in MASKS), Band(mask, 1, "cloud"))


def folder_bands(folder: Path) -> tuple[Band, ...]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
    named = {}
    for file in files:
        name = band_name_from_file(file.stem)
        if name is not None and name not in named:
            named[name] = Band(file, 1, name, products.landsat_offset(file))
    if not named:
        raise InputError(
            f"{folder} holds no band files: found {[p.name for p in files][:10]}; "
            "name them by band (B02.tif, LC08_..._B4.TIF, red.tif) or give one multi-band file"
        )
    return tuple(named.values())


def band_name_from_file(stem: str) -> str | None:
    """Canonical band name from a file name stem, or None if it names no band."""
    low = band_specs.ALIASES.get(stem.lower(), stem.lower())
    if low in band_specs.KNOWN:
        return low
    for kind in ("SCL", "QA_PIXEL"):
        if re.search(rf"(?:^|_){kind}(?:_\d+m)?$", stem, flags=re.IGNORECASE):
            return kind.lower()
    match = re.search(r"(?:^|_)B(\d{1,2}|8A)(?:_|$)", stem, flags=re.IGNORECASE)
    if match is None:
        return None
    code = match.group(1).upper()
    if re.match(r"L[TE]0?[457]", stem, flags=re.IGNORECASE):
        return LANDSAT_TM.get(f"B{int(code)}")
    if len(code) == 2 and not re.match(r"L[CO]0?[89]", stem, flags=re.IGNORECASE):
        return SENTINEL2.get(f"B{code}")
    return LANDSAT_OLI.get(f"B{int(code)}") if code.isdigit() else None


def file_bands(path: Path, *, spec: str | None = None, key: str = "--bands") -> tuple[Band, ...]:
    """The bands of a multi-band file: named by ``spec`` (``--bands``) if given, else by the file itself."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
        with src:
            count, offsets = src.count, [o / (s or 1.0) for o, s in zip(src.offsets, src.scales, strict=True)]
            names = (band_specs.band_names(spec, count, file=path, key=key) if spec is not None else
                     dataset_band_names(src.descriptions, src.colorinterp, count))
    except RasterioError as exc:
        raise InputError(f"{path} is not a raster GDAL can read ({exc}): give a GeoTIFF") from None
    if all(n.startswith("band") for n in names) and count >= 4 and spec is None:
        raise InputError(f"{path} has {count} bands without names: {band_specs.HINT}".replace("--bands", key))
    return tuple(Band(path, i + 1, n, float(offsets[i])) for i, n in enumerate(names))


def dataset_band_names(descriptions: tuple, colorinterp: tuple, count: int) -> tuple[str, ...]:
    """Band names of a multi-band file from descriptions, colour interpretation or count.

    A plain 3-band file is read as red, green, blue.  Unknown bands are named
    ``band1``, ``band2``... so they still match between dates by position
    (:func:`file_bands` refuses four or more of them: it never guesses).
    """
    found: list[str | None] = []
    for i in range(count):
        desc = (descriptions[i] or "").strip()
        name = band_name_from_file(desc) if desc else None
        found.append(name or COLOR.get(colorinterp[i]))
    if all(n is None for n in found) and count == 3:
        return ("red", "green", "blue")
    names = [n or f"band{i + 1}" for i, n in enumerate(found)]
    if len(set(names)) != len(names):
        return tuple(f"band{i + 1}" for i in range(count))
    return tuple(names)


def check_readable(file: Path | str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(file)
        with src:
            if src.crs is None or src.transform == Affine.identity():
                raise InputError(
                    f"{file} has no coordinate reference system or georeferencing: "
                    "georeference it (e.g. gdal_translate -a_srs/-a_ullr) and try again"
                )
            src.read(1, window=Window(0, 0, 1, 1))
            src.read(src.count, window=Window(src.width - 1, src.height - 1, 1, 1))
    except RasterioError as exc:
        raise InputError(f"{file} is not a readable raster ({first_line(exc)}): download or export it again") from None


def date_of(path: Path, first_file: Path) -> str | None:
    """Acquisition date as ``YYYY-MM-DD`` from the path name or the TIFF date tag."""
    for text in (path.name, first_file.name):
        match = DATE_IN_NAME.search(text)
        if match:
            return "-".join(match.groups())
    with rasterio.open(first_file) as src:
        stamp = src.tags().get("TIFFTAG_DATETIME", "")
    match = re.match(r"(\d{4}):(\d{2}):(\d{2})", stamp)
    if match:
        return "-".join(match.groups())
    match = DATE_IN_NAME.search(path.parent.name)  # a folder per date, named by it
    return "-".join(match.groups()) if match else None


def grid_of(file: Path | str) -> Grid:
    with rasterio.open(file) as src:
        return Grid(src.crs, src.transform, src.width, src.height)


def reference_grid(date: DateSource, names: tuple[str, ...]) -> Grid:
    """The finest grid among the named bands of a date: the analysis grid."""
    grids = [grid_of(b.path) for b in date.bands if b.name in names]
    return min(grids, key=lambda g: abs(g.transform.a * g.transform.e))


def match_bands(before: DateSource, after: DateSource) -> tuple[str, ...]:
    """Band names both dates have, in the before date's order; cloud masks are not bands to score."""
    common = tuple(n for n in before.names if n in after.names and n not in MASKS)
    if not common:
        raise InputError(
            f"{before.path} and {after.path} have no band in common: before has {list(before.names)}, "
            f"after has {list(after.names)}; give dates with the same bands or name the band files alike"
        )
    return common


def footprint_window(file: Path | str, grid: Grid) -> Window:
    """The window of ``grid`` that ``file``'s footprint covers (not clipped to the grid)."""
    g = grid_of(file)
    return bounds_window(transform_bounds(g.crs, grid.crs, *g.bounds, densify_pts=21), grid.transform)


def overlap_window(grid: Grid, date: DateSource) -> Window:
    """Window of ``grid`` covered by every band of ``date`` (pixel-snapped, clipped); a mask may cover less."""
    window = Window(0, 0, grid.width, grid.height)
    for file in dict.fromkeys(b.path for b in date.bands if b.name not in MASKS):
        window = intersect(window, footprint_window(file, grid))
        if window is None:
            raise InputError(
                f"{file} does not overlap the before imagery: give two dates over the same area"
            )
    for file in dict.fromkeys(b.path for b in date.bands if b.name in MASKS):
        if intersect(window, footprint_window(file, grid)) is None:
            raise InputError(f"the mask {file} does not overlap the imagery it masks ({date.path}): "
                             "give the mask of this date and place")
    return window


@dataclass(frozen=True, slots=True)
class RawWindow:
    """A window of one date as read: values in the files' own type, what holds no data, what is obscured.

    ``values`` (C, H, W); ``invalid`` (H, W) bool: nodata in any band, every
    band 0, no data in the mask, or obscured; ``obscured`` (H, W) bool: cloud,
    shadow, cirrus or snow by the date's mask (all False without one);
    ``offset`` (C,) float32: each band's radiometric offset in stored units (:class:`Band`).
    """

    values: np.ndarray
    invalid: np.ndarray
    obscured: np.ndarray
    offset: np.ndarray

    def physical(self, values: np.ndarray) -> np.ndarray:
        """``values`` (C, ...) float32 of these bands (the raw ones, or block averages of them) with their offsets
        added: proportional to reflectance, in stored units."""
        if not self.offset.any():
            return values
        return values + self.offset.reshape((-1,) + (1,) * (values.ndim - 1))


class DateReader:
    """Reads windows of one date's named bands onto a grid, as float32 with NaN nodata.

    The date's mask band (:mod:`detector.masks`), if any, is read onto the
    same grid (nearest neighbour): obscured pixels are nodata for scoring.
    Use as a context manager; files are opened once and kept open.
    """

    def __init__(self, date: DateSource, names: tuple[str, ...], grid: Grid) -> None:
        self.date, self.names, self.grid = date, names, grid
        self._stack = ExitStack()
        self._groups: list[tuple[object, list[int], list[int], list[float | None]]] = []
        self._mask: tuple[object, int, str] | None = None
        chosen = [next(b for b in date.bands if b.name == name) for name in names]
        self.offset = np.array([b.offset for b in chosen], np.float32)

    def __enter__(self) -> DateReader:
        by_file: dict[Path | str, list[tuple[int, Band]]] = {}
        for k, name in enumerate(self.names):
            band = next(b for b in self.date.bands if b.name == name)
            by_file.setdefault(band.path, []).append((k, band))
        for file, items in by_file.items():
            src = self._on_grid(self._stack.enter_context(rasterio.open(file)))
            nodata = src.nodatavals
            self._groups.append((src, [k for k, _ in items], [b.index for _, b in items],
                                 [nodata[b.index - 1] for _, b in items]))
        if (mask := self.date.mask) is not None:
            src = self._on_grid(self._stack.enter_context(rasterio.open(mask.path)), mask=True)
            self._mask = (src, mask.index, mask.name)
        return self

    def _on_grid(self, src: rasterio.DatasetReader, *, mask: bool = False) -> rasterio.DatasetReader | WarpedVRT:
        if (src.crs, src.transform, src.width, src.height) == (
            self.grid.crs, self.grid.transform, self.grid.width, self.grid.height
        ):
            return src
        return self._stack.enter_context(self._warped(src, mask=mask))

    def _warped(self, src: rasterio.DatasetReader, *, mask: bool = False) -> WarpedVRT:
        coarser = abs(src.transform.a * src.transform.e) > abs(self.grid.transform.a * self.grid.transform.e) * 1.01
        resampling = Resampling.nearest if mask else Resampling.bilinear if coarser else Resampling.average
        return WarpedVRT(
            src, crs=self.grid.crs, transform=self.grid.transform, width=self.grid.width,
            height=self.grid.height, nodata=src.nodata if src.nodata is not None else 0, resampling=resampling,
        )

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def read(self, window: Window) -> np.ndarray:
        """Read a window of the grid in physical units.

        Returns
        -------
        ndarray, shape (bands, height, width), float32; NaN where
        :attr:`RawWindow.invalid`.
        """
        raw = self.read_raw(window)
        out = raw.physical(raw.values.astype(np.float32))
        if raw.invalid.any():
            out[:, raw.invalid] = np.nan
        return out

    def read_raw(self, window: Window) -> RawWindow:
        """Read a window of the grid in the files' own data type, with its nodata and mask (:class:`RawWindow`)."""
        parts = [(slots, self._read_raw(src, indexes, window), nodatas)
                 for src, slots, indexes, nodatas in self._groups]
        if len(parts) == 1 and parts[0][0] == list(range(len(self.names))):
            raw = parts[0][1]
        else:
            raw = np.empty((len(self.names), int(window.height), int(window.width)),
                           dtype=np.result_type(*[p[1].dtype for p in parts]))
            for slots, part, _ in parts:
                raw[slots] = part
        invalid = np.logical_not(raw.any(axis=0))
        for _, part, nodatas in parts:
            for layer, nodata in zip(part, nodatas, strict=True):
                if nodata is not None and not np.isnan(nodata):
                    invalid |= layer == nodata
        obscured = np.zeros(invalid.shape, bool)
        if self._mask is not None:
            src, index, kind = self._mask
            has_data, obscured = masks.decode(self._read_raw(src, [index], window)[0], kind)
            obscured &= has_data & ~invalid
            invalid |= ~has_data | obscured
        return RawWindow(raw, invalid, obscured, self.offset)

    def _read_raw(self, src: rasterio.DatasetReader | WarpedVRT, indexes: list[int], window: Window) -> np.ndarray:
        try:
            return src.read(indexes, window=window)
        except RasterioError as exc:
            raise InputError(
                f"{self.date.path} could not be decoded at {window!r} ({first_line(exc)}): "
                "the file is damaged; download or export it again"
            ) from None
