"""The typed configuration of one ``detector run``, validated once at the edge."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from detector.change import ChangeParams
from detector.errors import InputError, MissingFileError
from detector.fusion import METHODS
from detector.scoring import ScoreRule


def default_model_path() -> Path:
    """The weights shipped in the package (trained by ``scripts/train_default.py``)."""
    return Path(str(resources.files("detector") / "weights" / "default.pt"))


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything that decides what ``run`` computes and where it writes.

    ``sites`` None means cell mode: the overlap of the two dates is cut into
    squares of ``cell_m`` metres and every cell is scored.  ``method`` picks
    the score (:mod:`detector.fusion`); ``model`` None means the shipped weights.
    ``reviews`` gives verdicts to carry over (default: the ``sites.geojson``
    already in ``out``); ``max_flags`` or ``target_precision`` (on the sites
    labelled in ``labels``, default the carried-over verdicts) raise the
    threshold for a reviewer's budget.
    """

    before: Path
    after: Path
    out: Path
    sites: Path | None = None
    buffer_m: float = 500.0
    cell_m: float = 500.0
    overwrite: bool = False
    id_col: str | None = None
    lon_col: str | None = None
    lat_col: str | None = None
    before_date: str | None = None
    after_date: str | None = None
    tile_px: int = 512
    margin_px: int = 32
    max_shift_px: float = 8.0
    min_peak: float = 15.0
    min_area_m2: float = 500.0
    workers: int = 0
    bin: int = 2
    method: str = "fused"
    model: Path | None = None
    reviews: Path | None = None
    labels: Path | None = None
    max_flags: int | None = None
    target_precision: float | None = None
    chips: int = 20
    rule: ScoreRule = field(default_factory=ScoreRule)
    params: ChangeParams = field(default_factory=ChangeParams)

    def __post_init__(self) -> None:
        checks = {
            "--buffer-m": (self.buffer_m, 0, math.inf),
            "--cell-m": (self.cell_m, 0, math.inf),
            "--threshold": (self.rule.threshold, 0, 1),
            "--pixel-threshold": (self.rule.pixel_threshold, 0, 1),
            "--tile-px": (self.tile_px, 16, 8192),
            "--min-area-m2": (self.min_area_m2, -1e-9, math.inf),
            "--bin": (self.bin, 0, 16),
        }
        if self.method not in METHODS:
            raise InputError(f"--method is {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.max_flags is not None and self.target_precision is not None:
            raise InputError("--max-flags and --target-precision both set the threshold: give one of them")
        if self.chips < 0:
            raise InputError(f"--chips is {self.chips}: give 0 or more")
        if self.max_flags is not None and self.max_flags < 0:
            raise InputError(f"--max-flags is {self.max_flags}: give 0 or more")
        if self.target_precision is not None and not 0 < self.target_precision <= 1:
            raise InputError(f"--target-precision is {self.target_precision}: give a value in (0, 1]")
        if self.model is not None and self.method == "classical":
            raise InputError(f"--model {self.model} is not used by --method classical: "
                             "drop --model or choose --method cnn or fused")
        for flag, (value, low, high) in checks.items():
            if not (low < value <= high):
                raise InputError(f"{flag} is {value}: give a value in ({low}, {high}]")

    def to_json(self) -> dict[str, Any]:
        """Every parameter, as plain JSON values."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# Options of ``detector run`` that a batch takes in its ``[run]`` table (the
# others, dates, output and workers, the batch sets itself).  Those of
# FINISH_KEYS act only when the batch ends (verdicts, budget, chips): they may
# change between runs of one batch, since no site needs scoring again for them
# (the end of a batch flags every site again).
FINISH_KEYS = ("reviews", "labels", "max_flags", "target_precision", "chips", "threshold")
BATCH_RUN_KEYS = ("buffer_m", "id_col", "lon_col", "lat_col", "tile_px", "margin_px", "max_shift_px", "min_peak",
                  "min_area_m2", "bin", "method", "model", "pixel_threshold", *FINISH_KEYS)
BATCH_TABLES: dict[str, dict[str, type | tuple[type, ...]]] = {
    "sites": {"paths": list},
    "imagery": {"catalog": str, "max_cloud": (int, float), "min_valid": (int, float)},
    "dates": {"before": list, "after": list, "tolerance_days": int, "same_season": bool},
    "run": {},
    "output": {"dir": str},
}
REQUIRED = {"sites": ("paths",), "imagery": ("catalog",), "dates": ("before", "after"), "output": ("dir",)}


@dataclass(frozen=True, slots=True)
class BatchConfig:
    """A ``detector batch`` configuration file, validated: paths are absolute, dates ISO strings.

    ``run`` is the per-site :class:`RunConfig` (``before``, ``after`` and
    ``sites`` are placeholders: each site task sets its own scenes).
    """

    path: Path
    sites: tuple[Path, ...]
    catalog: Path
    before: tuple[str, str]
    after: tuple[str, str]
    out: Path
    run: RunConfig
    tolerance_days: int = 0
    same_season: bool = True
    max_cloud: float = 0.5
    min_valid: float = 0.99
    run_options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The configuration as plain JSON (``batch.json`` records it)."""
        return {"sites": [str(p) for p in self.sites], "catalog": str(self.catalog), "before": list(self.before),
                "after": list(self.after), "tolerance_days": self.tolerance_days, "same_season": self.same_season,
                "max_cloud": self.max_cloud, "min_valid": self.min_valid, "run": self.run_options}


def scoring_part(config_json: dict[str, Any]) -> dict[str, Any]:
    """What decides the per-site results, of a :meth:`BatchConfig.to_json` (compared when a batch resumes)."""
    run = {k: v for k, v in (config_json.get("run") or {}).items() if k not in FINISH_KEYS}
    return {**config_json, "run": run}


def read_batch_config(path: Path) -> BatchConfig:
    """Read and check a batch TOML file; every problem is one :class:`InputError` naming the file."""
    import tomllib

    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: give a batch configuration file (TOML)")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not valid TOML ({exc}): fix the line it names") from None
    _check_keys(path, data)
    base = path.parent.resolve()
    tables = {name: data.get(name, {}) for name in BATCH_TABLES}
    paths = tables["sites"]["paths"]
    if not paths or not all(isinstance(p, str) for p in paths):
        raise InputError(f"{path}: [sites] paths is {paths!r}: give a list of site files, e.g. [\"sites.geojson\"]")
    before = _date_window(path, "before", tables["dates"]["before"])
    after = _date_window(path, "after", tables["dates"]["after"])
    if before[0] > after[1]:
        raise InputError(f"{path}: [dates] before {list(before)} starts after the after window {list(after)} ends: "
                         "swap them")
    out = base / tables["output"]["dir"]
    options = dict(tables["run"])
    run = _run_config(path, base, out, options)
    imagery, dates = tables["imagery"], tables["dates"]
    config = BatchConfig(path=path, sites=tuple(base / p for p in paths), catalog=base / imagery["catalog"],
                         before=before, after=after, out=out, run=run,
                         tolerance_days=dates.get("tolerance_days", 0), same_season=dates.get("same_season", True),
                         max_cloud=float(imagery.get("max_cloud", 0.5)),
                         min_valid=float(imagery.get("min_valid", 0.99)),
                         run_options=options)
    for name, value in (("[imagery] max_cloud", config.max_cloud), ("[imagery] min_valid", config.min_valid)):
        if not 0 <= value <= 1:
            raise InputError(f"{path}: {name} is {value}: give a share between 0 and 1")
    if config.tolerance_days < 0:
        raise InputError(f"{path}: [dates] tolerance_days is {config.tolerance_days}: give 0 or more days")
    return config


def _check_keys(path: Path, data: dict[str, Any]) -> None:
    for table, content in data.items():
        if table not in BATCH_TABLES:
            raise InputError(f"{path}: unknown table [{table}]: the tables are {', '.join(BATCH_TABLES)}")
        if not isinstance(content, dict):
            raise InputError(f"{path}: {table} must be a table ([{table}]), not a value")
        known = BATCH_RUN_KEYS if table == "run" else tuple(BATCH_TABLES[table])
        for key, value in content.items():
            if table == "run" and key in RunConfig.__dataclass_fields__ and key not in BATCH_RUN_KEYS:
                raise InputError(f"{path}: [run] {key} does not apply to a batch ([dates], [output] "
                                 f"and --workers say the same): "
                                 f"remove it (batch takes {', '.join(BATCH_RUN_KEYS)})")
            if key not in known:
                raise InputError(f"{path}: unknown key {key!r} in [{table}]: known keys are {', '.join(known)}")
            kind = BATCH_TABLES[table].get(key)
            if kind is not None and not isinstance(value, kind):
                raise InputError(f"{path}: [{table}] {key} is {value!r}: give a {_kind_name(kind)}")
    for table, keys in REQUIRED.items():
        for key in keys:
            if key not in data.get(table, {}):
                raise InputError(f"{path}: [{table}] {key} is missing: add it (see README, detector batch)")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    return "number" if isinstance(kind, tuple) else {list: "list", str: "string", int: "whole number",
                                                      bool: "true or false"}[kind]


def _date_window(path: Path, name: str, value: list) -> tuple[str, str]:
    import datetime as dt

    try:
        start, end = (dt.date.fromisoformat(str(v)) for v in value)
    except ValueError:
        raise InputError(f"{path}: [dates] {name} is {value!r}: give two dates, e.g. [\"2017-01-01\", \"2017-06-30\"]"
                         ) from None
    if start > end:
        raise InputError(f"{path}: [dates] {name} is {value!r}: the first date must not be after the second")
    return start.isoformat(), end.isoformat()


def _run_config(path: Path, base: Path, out: Path, options: dict[str, Any]) -> RunConfig:
    from dataclasses import replace

    plain = {k: v for k, v in options.items() if k not in ("threshold", "pixel_threshold")}
    for key, what in (("model", "a file written by `detector train`, or remove the key for the shipped weights"),
                      ("reviews", "a reviewed sites.geojson, or remove the key"),
                      ("labels", "a labelled sites file, or remove the key")):
        if key in plain:
            plain[key] = base / str(plain[key])
            if not plain[key].is_file():
                raise InputError(f"{path}: [run] {key} {plain[key]} does not exist: give {what}")
    rule = ScoreRule()
    rule = replace(rule, threshold=options.get("threshold", rule.threshold),
                   pixel_threshold=options.get("pixel_threshold", rule.pixel_threshold))
    try:
        return RunConfig(before=Path("."), after=Path("."), out=out, sites=path, workers=1, rule=rule, **plain)
    except InputError as exc:
        raise InputError(f"{path}: [run] {exc}") from None
    except TypeError as exc:
        raise InputError(f"{path}: [run] has a value of the wrong type ({exc}): check the numbers and names") from None
