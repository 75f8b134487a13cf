"""Labelled scenes for training and evaluation, and the tiles cut from them.

Three layouts are read (:func:`load_scenes` tells them apart):

- image-pair folders ``A/``, ``B/``, ``label/`` (LEVIR-CD, DSIFN-CD): PNG or
  GeoTIFF, RGB, label 0 = no change, anything else = change;
- OSCD-style city folders ``imgs_1/``, ``imgs_2/``, ``cm/<city>-cm.tif``:
  per-band files read through :mod:`detector.imagery` (20 m bands and a date
  on another grid resampled onto the 10 m before grid), change map 1 = no
  change, 2 = change, on the ``imgs_1`` grid without a geotransform;
- reviewed sites: a ``detector run`` output folder whose ``sites.geojson``
  has a ``label`` or ``review_status`` column (or such a file, with the
  run's ``run.json`` beside it); the imagery is the run's (from ``run.json``).
  Each reviewed site becomes a scene with a site-level (weak) label: a
  rejected site is "no change" on every pixel inside it, a confirmed one
  says only that something inside changed.

A folder holding several of these (such as ``oscd-dev/``) is read whole.

Array contract of a :class:`Scene` and of the tiles: ``before, after`` float32
``(C, H, W)`` with NaN nodata; ``target`` float32 ``(H, W)``, 1 = change,
0 = no change, NaN = unknown (not scored by the loss or the metrics).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio import features
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from aoi.cells import pixel_size_m
from detector.bands import band_names
from detector.binning import bin_mean
from detector.errors import InputError, MissingFileError, first_line
from detector.imagery import DateReader, Grid, match_bands, open_date, overlap_window, reference_grid
from detector.model import adapt
from detector.reviews import site_labels
from detector.tiling import bounds_window, pad
from detector.zones import centre_lonlat

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg")


@dataclass(frozen=True, slots=True)
class Scene:
    """One labelled two-date scene."""

    name: str
    before: np.ndarray  # (C, H, W) float32, NaN = nodata
    after: np.ndarray  # (C, H, W) float32, NaN = nodata
    target: np.ndarray  # (H, W) float32: 1 change, 0 no change, NaN unknown
    names: tuple[str, ...]  # canonical band names of the C bands
    weak: float = float("nan")  # 1.0: a reviewed site that changed somewhere inside (target all NaN)
    pixel_m: float = 10.0  # ground size of a pixel (the classical evidence is scored in metres)


@dataclass(frozen=True, slots=True)
class Tiles:
    """Network-ready tiles: inputs from :func:`detector.model.adapt` and their targets."""

    inputs: np.ndarray  # (N, 2 * len(MODEL_BANDS) + len(evidence), T, T) float32
    target: np.ndarray  # (N, T, T) float32, NaN = unknown
    weak: np.ndarray  # (N,) float32, NaN = pixel labels only
    block: np.ndarray  # (N,) int: the block of the scene the tile comes from (the unit of the split)
    source: np.ndarray  # (N,) str: scene name


def load_scenes(path: Path, *, bands: str | None = None) -> list[Scene]:
    """Every labelled scene under ``path`` (one of the layouts, or a folder of them); ``bands`` (``--bands``)
    names the bands of image pairs' files (default: the first three are red, green, blue)."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"training data {path} does not exist")
    if path.is_file():
        if not (path.parent / "run.json").is_file():
            raise InputError(f"{path} is a file without a run.json beside it: give a reviewed sites.geojson in "
                             "the folder `detector run` wrote, or a folder of training data")
        return load_reviewed(path.parent, sites_file=path)
    kind = layout(path)
    if kind == "pairs":
        return load_pairs(path, bands=bands)
    if kind == "oscd":
        return load_oscd_city(path)
    if kind == "reviewed":
        return load_reviewed(path)
    scenes = [s for child in sorted(path.iterdir()) if child.is_dir() and layout(child)
              for s in load_scenes(child, bands=bands)]
    if not scenes:
        raise InputError(f"{path} holds no training data: expected A/ B/ label/ (LEVIR-CD layout), imgs_1/ imgs_2/ "
                         "cm/ (OSCD city), or sites.geojson + run.json from `detector run` with a label column")
    return scenes


def layout(path: Path) -> str | None:
    """Which layout ``path`` has, or None."""
    if all((path / d).is_dir() for d in ("A", "B", "label")):
        return "pairs"
    if all((path / d).is_dir() for d in ("imgs_1", "imgs_2", "cm")):
        return "oscd"
    if (path / "sites.geojson").is_file() and (path / "run.json").is_file():
        return "reviewed"
    return None


def load_pairs(folder: Path, *, bands: str | None = None) -> list[Scene]:
    """LEVIR-CD-style ``A/``, ``B/``, ``label/`` images with the same file names; ``bands`` names their bands
    (:func:`detector.bands.band_names`), else the first three are red, green, blue."""
    files = sorted(f for f in (folder / "label").iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    scenes = []
    for label in files:
        before, after = _image(folder / "A" / label.name), _image(folder / "B" / label.name)
        mask = _image(label)[0]
        if bands is None and (before.shape[0] < 3 or after.shape[0] < 3):
            raise InputError(f"{folder}: A or B of {label.name} has {min(before.shape[0], after.shape[0])} band(s); "
                             "image pairs must be RGB (3 bands or more, the first three red, green, blue), "
                             "or name their bands with --bands")
        if before.shape != after.shape or before.shape[1:] != mask.shape:
            raise InputError(f"{folder}: A, B and label of {label.name} differ in size "
                             f"({before.shape}, {after.shape}, {mask.shape}): crop them alike")
        names = (band_names(bands, before.shape[0], file=folder / "A" / label.name) if bands is not None
                 else ("red", "green", "blue"))
        keep = [i for i, n in enumerate(names) if not n.startswith("band")]
        scenes.append(Scene(f"{folder.name}/{label.stem}", before[keep], after[keep], (mask > 0).astype(np.float32),
                            tuple(names[i] for i in keep)))
    return scenes


def _image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: A/, B/ and label/ need files of the same names")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read().astype(np.float32)
    except RasterioError as exc:
        raise InputError(f"{path} cannot be read as an image ({first_line(exc, limit=100)}): "
                         "replace or remove it") from None


def load_oscd_city(city: Path) -> list[Scene]:
    """One OSCD city: the two dates on the date-1 grid and the change map (2 = change)."""
    before, after = open_date(city / "imgs_1"), open_date(city / "imgs_2")
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    maps = sorted((city / "cm").glob("*-cm.tif"))
    if not maps:
        raise InputError(f"{city / 'cm'} has no <city>-cm.tif change map")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # OSCD change maps carry no geotransform
        with rasterio.open(maps[0]) as src:
            cm = src.read(1)
    if cm.shape != (grid.height, grid.width):
        raise InputError(f"{maps[0]} is {cm.shape[1]} x {cm.shape[0]} px but the date-1 grid is "
                         f"{grid.width} x {grid.height}: the change map must lie on the imgs_1 grid")
    window = Window(0, 0, grid.width, grid.height)
    with DateReader(before, names, grid) as first, DateReader(after, names, grid) as second:
        b, a = first.read(window), second.read(window)
    target = np.where(cm == 2, 1.0, np.where(cm == 1, 0.0, np.nan)).astype(np.float32)
    return [Scene(city.name, b, a, target, names)]


def recorded_path(entry: dict) -> Path:
    """An input of ``run.json`` as a path that opens from here: as given if it does, else from the absolute
    paths of its files (a run made in another working directory records ``path`` relative to it)."""
    path = Path(entry["path"])
    files = [Path(f["path"]) for f in entry.get("files") or []]
    if path.exists() or not files:
        return path
    if len(files) == 1 and files[0].name == path.name:
        return files[0]
    return Path(os.path.commonpath([str(f.parent) for f in files]))


def recorded_mask(entry: dict) -> Path | None:
    """The mask file a run was given (``--before-mask``), as ``run.json`` records it; None for none."""
    mask = entry.get("mask") or {}
    return Path(mask["file"]) if mask.get("kind") == "cloud" else None


def load_reviewed(folder: Path, *, sites_file: Path | None = None, margin_px: int = 16) -> list[Scene]:
    """Reviewed sites of a ``detector run`` output: one weakly labelled scene per site.

    ``sites_file`` (default ``folder / "sites.geojson"``) holds the verdicts;
    the imagery is the one ``folder / "run.json"`` records.
    """
    sites_file = sites_file or folder / "sites.geojson"
    sites = gpd.read_file(sites_file)
    labels = site_labels(sites, sites_file)
    if not np.isfinite(labels).any():
        raise InputError(f"{sites_file} has no confirmed or rejected site: review some first (review_status "
                         "confirmed or rejected, or a label column), then train on it")
    try:
        inputs = json.loads((folder / "run.json").read_text())["inputs"]
        before, after = (open_date(recorded_path(inputs[d]), date=inputs[d].get("date"),
                                   bands=inputs[d].get("bands_option"), mask=recorded_mask(inputs[d]))
                         for d in ("before", "after"))
    except (json.JSONDecodeError, KeyError, TypeError):
        raise InputError(f"{folder / 'run.json'} is not a run record of `detector run` (no inputs.before/after "
                         "path): give the folder `detector run` wrote") from None
    names = match_bands(before, after)
    grid = reference_grid(before, names)
    area = overlap_window(grid, after)
    shapes = sites.to_crs(grid.crs).geometry
    pixel_m = float(np.mean(pixel_size_m(grid.crs, grid.transform, *centre_lonlat(grid, area))))
    scenes = []
    with DateReader(before, names, grid) as first, DateReader(after, names, grid) as second:
        for (site_id, label), shape in zip(zip(sites["site_id"], labels, strict=True), shapes, strict=True):
            if np.isnan(label):
                continue
            window = _site_window(shape.bounds, grid, area, margin_px)
            if window is None:
                continue
            inside = features.geometry_mask([shape], (int(window.height), int(window.width)),
                                            window_transform(window, grid.transform), invert=True)
            target = np.full(inside.shape, np.nan, dtype=np.float32)
            if label == 0:
                target[inside] = 0.0
            scenes.append(Scene(f"{folder.name}/{site_id}", first.read(window), second.read(window), target, names,
                                weak=1.0 if label == 1 else float("nan"), pixel_m=pixel_m))
    return scenes


def _site_window(bounds: tuple[float, float, float, float], grid: Grid, area: Window, margin: int) -> Window | None:
    return pad(bounds_window(bounds, grid.transform), margin, within=area)




def cut_tiles(scenes: list[Scene], tile: int, *, scales: tuple[int, ...] = (1,),
              evidence: tuple[str, ...] = (), window: int | None = None) -> Tiles:
    """Cut scenes into network-ready tiles of ``tile`` px at each scale.

    Each scene is split into blocks of ``tile * max(scales)`` px (blocks
    over the edge padded with NaN, so every pixel is in one block); a block gives
    ``(s')**2`` tiles at scale ``s`` (block-averaged by ``s``), each cut from the block as a whole made
    network-ready, so that a tile's inputs are standardized over the block as ``detector run``
    standardizes them over windows of the block's side (:attr:`detector.model.LoadedModel.window`).  Tiles of one
    block share its ``block`` number, so a split by block keeps every tile of
    a piece of ground on one side.  ``evidence`` ("classical") adds the
    classical change score of each tile, scored as ``detector run`` scores it
    (:func:`tile_evidence`), as a channel after the bands.  ``window``: the ground each pixel is
    standardized against (:func:`detector.adapter.standardize`; None: the block).
    """
    parts: list[tuple[np.ndarray, np.ndarray, float, int, str]] = []
    side = tile * max(scales)
    block = 0
    for scene in scenes:
        for b, a, t in _blocks(scene, side):
            for s in scales:
                first, second, known = bin_mean(b, s)[None], bin_mean(a, s)[None], bin_mean(t[None], s)[0]
                extra = (tile_evidence(first, second, scene.names, pixel_m=scene.pixel_m * s, factor=s)
                         if evidence else None)
                ready = adapt(first, second, scene.names, evidence=extra, window=window)[0]
                for rows, cols in _grid(side // s, tile):
                    if _useful(first[0, :, rows, cols], known[rows, cols], scene):
                        parts.append((ready[:, rows, cols], known[rows, cols], scene.weak, block, scene.name))
            block += 1
    if not parts:
        raise InputError("no tiles: the training scenes are empty")
    inputs, target, weak, blocks, source = zip(*parts, strict=True)
    return Tiles(np.stack(inputs), np.stack(target).astype(np.float32), np.array(weak, np.float32),
                 np.array(blocks), np.array(source))


def _useful(before: np.ndarray, target: np.ndarray, scene: Scene) -> bool:
    if np.isnan(before).all() or (np.isnan(target).all() and np.isnan(scene.weak)):
        return False  # padding only, or nothing known about it
    return np.isnan(scene.weak) or np.isnan(before[0]).mean() <= 0.5  # a sliver of a reviewed site says nothing


def tile_evidence(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], *, pixel_m: float,
                  factor: int = 1) -> np.ndarray:
    """The classical change score of tiles block-averaged by ``factor``, as ``detector run`` scores them with
    its defaults (normalized, registered): shape (N, 1, H, W), float32, NaN = nodata."""
    from detector.change import score_tiles
    from detector.config import ScanOptions

    scan = ScanOptions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        found = score_tiles(before, after, names, pixel_m=pixel_m, max_shift_px=scan.shift_limit(factor),
                            min_peak=scan.min_peak, params=scan.params)
    return found.score[:, None]


def _blocks(scene: Scene, side: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    _, h, w = scene.before.shape
    for r in _starts(h, side):
        for c in _starts(w, side):
            rows, cols = slice(r, r + side), slice(c, c + side)
            yield (_pad(scene.before[:, rows, cols], side), _pad(scene.after[:, rows, cols], side),
                   _pad(scene.target[None, rows, cols], side)[0])


def _starts(n: int, side: int) -> list[int]:
    return list(range(0, n, side))


def _grid(n: int, tile: int) -> list[tuple[slice, slice]]:
    return [(slice(r, r + tile), slice(c, c + tile)) for r in range(0, n, tile) for c in range(0, n, tile)]


def _pad(x: np.ndarray, side: int) -> np.ndarray:
    if x.shape[1:] == (side, side):
        return x
    out = np.full((x.shape[0], side, side), np.nan, dtype=np.float32)
    out[:, :x.shape[1], :x.shape[2]] = x
    return out


def groups(tiles: Tiles) -> np.ndarray:
    """The data folder of each tile: an OSCD city, or a pair folder as a whole (names before the first ``/``)."""
    return np.array([name.split("/")[0] for name in tiles.source.tolist()])


def split(tiles: Tiles, *, val_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation tiles.

    The split is by block (a piece of ground is never on both sides) and
    stratified by group: each group holds out ``val_fraction`` of its blocks
    (at least one where it has three or more), so every city and folder is
    validated on.
    """
    held: list[np.ndarray] = []
    group = groups(tiles)
    for name in np.unique(group):
        blocks = np.unique(tiles.block[group == name])
        count = int(round(val_fraction * len(blocks)))
        if val_fraction > 0 and len(blocks) >= 3:
            count = max(count, 1)
        held.append(rng.permutation(blocks)[:count])
    val = np.isin(tiles.block, np.concatenate(held)) if held else np.zeros(len(tiles.block), bool)
    return np.flatnonzero(~val), np.flatnonzero(val)
