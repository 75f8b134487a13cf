"""A ``detector batch`` configuration file (TOML), read and checked once: every table and key by name,
type and range.

The tables are value types whose fields are the keys (:func:`detector.options.option`);
``[run]`` takes the options of ``detector run`` that a batch shares, split
into the same three concerns as :class:`detector.config.RunConfig`: how
sites are read, what the scan computes, and what is done with the scores.
An error names the file and the key as written there (``[run] bin``).
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd

import aoi
from detector.config import ReviewOptions, RunConfig, ScanOptions, SiteOptions, plain
from detector.errors import InputError, MissingFileError
from detector.options import REQUIRED, OptionError, check, keys, literal, option, required
from detector.scoring import ScoreRule


@dataclass(frozen=True, slots=True)
class SitesTable:
    paths: list = option(REQUIRED, list)

    def __post_init__(self) -> None:
        check(self)
        if not self.paths or not all(isinstance(p, str) for p in self.paths):
            raise OptionError(("paths",), "{} is " + literal(repr(self.paths)) +
                              ': give a list of site files, e.g. ["sites.geojson"]')


@dataclass(frozen=True, slots=True)
class RegionTable:
    path: str = option(REQUIRED, str)
    cell_m: float = option(500.0, float, low=0)
    block_cells: int = option(16, int, low=1, low_closed=True)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True, slots=True)
class Region:
    """A region batch's ``[region]``: the polygon file to scan (absolute), the cell size in metres, and the
    cells per side of one task's block (:mod:`detector.batch.blocks`)."""

    path: Path
    cell_m: float = 500.0
    block_cells: int = 16


@dataclass(frozen=True, slots=True)
class ImageryTable:
    catalog: str = option(REQUIRED, str)
    max_cloud: float = option(0.5, float, low=0, high=1, low_closed=True)
    min_valid: float = option(0.99, float, low=0, high=1, low_closed=True)
    bands: str | None = option(None, str)  # the bands of the catalog's multi-band files (detector.bands)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True, slots=True)
class DatesTable:
    before: list = option(REQUIRED, list)
    after: list = option(REQUIRED, list)
    tolerance_days: int = option(0, int, low=0, low_closed=True)
    same_season: bool = option(True, bool)

    def __post_init__(self) -> None:
        check(self)
        object.__setattr__(self, "before", list(date_window("before", self.before)))
        object.__setattr__(self, "after", list(date_window("after", self.after)))
        if self.before[0] > self.after[1]:
            raise OptionError(("before",), "{} " + f"{self.before} starts after the after window {self.after} "
                              "ends: swap them")


@dataclass(frozen=True, slots=True)
class OutputTable:
    dir: str = option(REQUIRED, str)

    def __post_init__(self) -> None:
        check(self)


# [run]: the keys of the run options a batch shares (dates, output and workers it sets itself).  Those of
# the review options, and the site threshold, act only when the batch ends (verdicts, budget, chips): they
# may change between runs of one batch, since no site needs scoring again for them.
RULE_KEYS = ("threshold", "pixel_threshold")
FINISH_KEYS = (*keys(ReviewOptions), "threshold")
RUN_KEYS = (*keys(SiteOptions), *keys(ScanOptions), *RULE_KEYS, *keys(ReviewOptions))
TABLE_TYPES: dict[str, type] = {"sites": SitesTable, "region": RegionTable, "imagery": ImageryTable,
                                "dates": DatesTable, "output": OutputTable}
TABLES = ("sites", "region", "imagery", "dates", "run", "output")
RUN_PATHS = {"model": "a file written by `detector train`, or remove the key for the shipped weights",
             "reviews": "a reviewed sites.geojson, or remove the key",
             "labels": "a labelled sites file, or remove the key"}


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """A ``detector batch`` configuration file, validated: paths are absolute, dates ISO strings."""

    path: Path
    sites: tuple[Path, ...]
    catalog: Path
    before: tuple[str, str]
    after: tuple[str, str]
    out: Path
    site: SiteOptions
    scan: ScanOptions
    review: ReviewOptions
    tolerance_days: int = 0
    same_season: bool = True
    max_cloud: float = 0.5
    min_valid: float = 0.99
    bands: str | None = None  # [imagery] bands
    run_options: dict[str, Any] | None = None  # the [run] table as written, for batch.json
    region: Region | None = None  # a region batch ([region]) in place of [sites]; then ``sites`` is empty

    def read_sites(self) -> gpd.GeoDataFrame:
        """Every site of every site file, one frame (:func:`aoi.read_site_files`)."""
        if self.region is not None:
            raise InputError(f"{self.path} scans a [region]: this command takes a batch of [sites]; give a "
                             "configuration with [sites] paths")
        return aoi.read_site_files(list(self.sites), **asdict(self.site))

    def read_region(self) -> gpd.GeoDataFrame:
        """The polygons of ``[region] path`` (read as a site file), EPSG:4326."""
        if self.region is None:
            raise InputError(f"{self.path} has no [region] table: add one, or run the [sites] batch")
        return aoi.read_site_files([self.region.path], **asdict(self.site)).to_crs(4326)

    def to_json(self) -> dict[str, Any]:
        """The configuration as plain JSON (``batch.json`` records it)."""
        region = {} if self.region is None else {"region": {"path": str(self.region.path),
                                                            "cell_m": self.region.cell_m,
                                                            "block_cells": self.region.block_cells}}
        return {"sites": [str(p) for p in self.sites], **region, "catalog": str(self.catalog),
                "before": list(self.before), "after": list(self.after), "tolerance_days": self.tolerance_days,
                "same_season": self.same_season, "max_cloud": self.max_cloud, "min_valid": self.min_valid,
                "bands": self.bands, "run": self.run_options or {}}


def scoring_part(config_json: dict[str, Any]) -> dict[str, Any]:
    """What decides the per-site results, of a :meth:`BatchConfig.to_json` (compared when a batch resumes)."""
    run = {k: v for k, v in (config_json.get("run") or {}).items() if k not in FINISH_KEYS}
    return {**config_json, "run": run}


def check_apart(path: Path, out: Path, inputs: list[Path]) -> None:
    """Refuse an ``[output] dir`` that holds a site (or region) file: the batch writes its own ``sites.geojson``
    and more there, and would overwrite or mix with it."""
    for given in inputs:
        if out.resolve() in given.resolve().parents:
            raise InputError(f"{path}: [output] dir {out} holds the input {given}: the batch's results would "
                             "overwrite or mix with it; give an [output] dir apart from the inputs")


def read_batch_config(path: Path) -> BatchConfig:
    """Read and check a batch TOML file; every problem is one :class:`InputError` naming the file and key."""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: give a batch configuration file (TOML)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML ({exc}): fix the line it names") from None
    check_tables(path, data)
    base = path.parent.resolve()
    imagery, dates, output = (table(path, name, data.get(name, {})) for name in ("imagery", "dates", "output"))
    sites, region = what_to_scan(path, base, data)
    options = dict(data.get("run", {}))
    site, scan, review = run_options(path, base, options)
    check_apart(path, base / output.dir, [*sites, *([region.path] if region else [])])
    return BatchConfig(path=path, sites=sites, region=region, catalog=base / imagery.catalog,
                       before=tuple(dates.before), after=tuple(dates.after), out=base / output.dir,
                       site=site, scan=scan, review=review, tolerance_days=dates.tolerance_days,
                       same_season=dates.same_season, max_cloud=imagery.max_cloud, min_valid=imagery.min_valid,
                       bands=imagery.bands, run_options=plain(options))


def what_to_scan(path: Path, base: Path, data: dict[str, Any]) -> tuple[tuple[Path, ...], Region | None]:
    """The site files of ``[sites]``, or the region of ``[region]``: exactly one of the two tables."""
    if ("sites" in data) == ("region" in data):
        which = "both [sites] and [region]" if "sites" in data else "neither [sites] nor [region]"
        raise InputError(f"{path} has {which}: give [sites] paths (listed sites) or [region] path (a polygon to "
                         "scan in cells), one of the two")
    if "sites" in data:
        return tuple(base / p for p in table(path, "sites", data["sites"]).paths), None
    given = table(path, "region", data["region"])
    region = Region(base / given.path, cell_m=given.cell_m, block_cells=given.block_cells)
    if not region.path.is_file():
        raise MissingFileError(f"{path}: [region] path {region.path} does not exist: give a polygon file "
                               "(GeoJSON, GPKG, SHP, KML...) of the region to scan")
    return (), region


def check_tables(path: Path, data: dict[str, Any]) -> None:
    """Known tables only, each a table; in ``[run]``, known keys only."""
    for name, content in data.items():
        if name not in TABLES:
            raise InputError(f"{path}: unknown table [{name}]: the tables are {', '.join(TABLES)}")
        if not isinstance(content, dict):
            raise InputError(f"{path}: {name} must be a table ([{name}]), not a value")
    for key in data.get("run", {}):
        if key in keys(RunConfig):
            raise InputError(f"{path}: [run] {key} does not apply to a batch ([dates], [output] and --workers say "
                             f"the same): remove it (batch takes {', '.join(RUN_KEYS)})")
        if key not in RUN_KEYS:
            raise InputError(f"{path}: unknown key {key!r} in [run]: known keys are {', '.join(RUN_KEYS)}")


def table(path: Path, name: str, content: dict[str, Any]) -> Any:
    """One table as its value type; unknown and missing keys, and bad values, named as ``[name] key``."""
    kind = TABLE_TYPES[name]
    known = keys(kind)
    for key in content:
        if key not in known:
            raise InputError(f"{path}: unknown key {key!r} in [{name}]: known keys are {', '.join(known)}")
    for key in required(kind):
        if key not in content:
            raise InputError(f"{path}: [{name}] {key} is missing: add it (see README, detector batch)")
    return made(path, name, lambda: kind(**content))


def run_options(path: Path, base: Path, options: dict[str, Any]) -> tuple[SiteOptions, ScanOptions, ReviewOptions]:
    """The ``[run]`` table as the three option types; paths relative to the file, and checked to exist."""
    given = dict(options)
    for key, what in RUN_PATHS.items():
        if key in given and isinstance(given[key], str):
            given[key] = base / given[key]
            if not given[key].is_file():
                raise InputError(f"{path}: [run] {key} {given[key]} does not exist: give {what}")

    def pick(kind: type) -> dict[str, Any]:
        return {k: v for k, v in given.items() if k in keys(kind)}

    rule = made(path, "run", lambda: ScoreRule(**{k: v for k, v in given.items() if k in RULE_KEYS}))
    return (made(path, "run", lambda: SiteOptions(**pick(SiteOptions))),
            made(path, "run", lambda: ScanOptions(rule=rule, **pick(ScanOptions))),
            made(path, "run", lambda: ReviewOptions(**pick(ReviewOptions))))


def made(path: Path, name: str, make: Any) -> Any:
    """``make()``, its :class:`OptionError` named as ``path: [name] key``."""
    try:
        return make()
    except OptionError as exc:
        raise InputError(f"{path}: {exc.render(lambda key: f'[{name}] {key}')}") from None


def date_window(name: str, value: list) -> tuple[str, str]:
    """Two ISO dates, the first not after the second."""
    try:
        start, end = (dt.date.fromisoformat(str(v)) for v in value)
    except ValueError:
        raise OptionError((name,), "{} is " + literal(repr(value)) +
                          ': give two dates, e.g. ["2017-01-01", "2017-06-30"]') from None
    if start > end:
        raise OptionError((name,), "{} is " + literal(repr(value)) + ": the first date must not be after the second")
    return start.isoformat(), end.isoformat()

