"""The typed configuration of ``detector run``, one value type per concern, each checked once when made.

- :class:`SiteOptions`: how a site file is read (shared with ``batch``);
- :class:`ScanOptions`: what the scan computes per site (shared with ``batch``);
- :class:`ReviewOptions`: verdicts, the reviewer's budget and chips, applied once the sites are scored;
- :class:`RunConfig`: ``run``'s own inputs (two dates, a site file or cells, the output folder) and the three.

Every option is declared with :func:`detector.options.option`, so its type
and range are checked where it is made; an error names the option by its
key, and the CLI or the batch file name it as their users wrote it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from detector import inference, methods
from detector.change import ChangeParams
from detector.options import REQUIRED, OptionError, check, literal, option
from detector.scoring import ScoreRule

# Imagery of this pixel size or coarser (Sentinel-2, Landsat) is scored pixel by pixel by default, finer imagery
# on blocks of 2 x 2 pixels: across the OSCD cities (10 m) every pixel scored better than blocks (fused F1 0.357
# against 0.330, classical 0.295 against 0.278); on the Dabancheng frames (Sentinel-2 rendered at 3.4 m, finer
# than the sensor) blocks dated the camp's parts better (0.80 of its first compound built by 2018-03-22, as seen,
# against 0.65 pixel by pixel).  README, model card.
FULL_RESOLUTION_M = 5.0


@dataclass(frozen=True, slots=True)
class SiteOptions:
    """How sites are read: points and lines become discs of ``buffer_m``; the id and CSV coordinate columns."""

    buffer_m: float = option(500.0, float, low=0)
    id_col: str | None = option(None, str)
    lon_col: str | None = option(None, str)
    lat_col: str | None = option(None, str)

    def __post_init__(self) -> None:
        check(self)


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What the scan computes: tiles, registration, binning, the method and its model, the score rule.

    ``method`` picks the score (:mod:`detector.methods`); ``model`` None
    means the shipped weights; ``backend`` is where the CNN runs (:mod:`detector.inference`: ``auto``,
    ``onnxruntime`` or ``torch``), which changes its speed, not its scores.  ``bin`` scores blocks of ``bin`` x ``bin``
    pixels; 0 (the default) lets :meth:`factor` choose from the imagery's pixel size.  ``rule`` holds the pixel and
    site thresholds.
    """

    tile_px: int = option(512, int, low=16, high=8192)
    margin_px: int = option(32, int, low=0, high=4096, low_closed=True)
    max_shift_px: float = option(8.0, float, low=0, high=256, low_closed=True)
    min_peak: float = option(15.0, float, low=0, low_closed=True)
    min_area_m2: float = option(500.0, float, low=0, low_closed=True)
    bin: int = option(0, int, low=0, high=16, low_closed=True)
    method: str = option(methods.DEFAULT, str, choices=methods.NAMES)
    model: Path | None = option(None, Path)
    backend: str = option("auto", str, choices=inference.BACKENDS)
    rule: ScoreRule = field(default_factory=ScoreRule)
    params: ChangeParams = field(default_factory=ChangeParams)

    def factor(self, pixel_m: float) -> int:
        """The side of the blocks the kernels score on imagery of ``pixel_m`` metres: ``bin``, or where it is 0
        every pixel of imagery of :data:`FULL_RESOLUTION_M` or coarser and blocks of 2 x 2 of finer imagery."""
        if self.bin:
            return self.bin
        return 1 if pixel_m >= FULL_RESOLUTION_M else 2

    def shift_limit(self, factor: int) -> float:
        """``max_shift_px`` (pixels of the grid) in blocks of ``factor`` x ``factor``: what the kernels get."""
        return self.max_shift_px / factor

    def __post_init__(self) -> None:
        check(self)
        if self.model is not None and not methods.METHODS[self.method].uses_model:
            with_model = " or ".join(name for name, m in methods.METHODS.items() if m.uses_model)
            raise OptionError(("model", "method", "model", "method"),
                              "{} " + literal(self.model) + " is not used by {} " + literal(self.method) +
                              f": drop {{}} or choose {{}} {with_model}")

    @property
    def uses_model(self) -> bool:
        return methods.METHODS[self.method].uses_model


@dataclass(frozen=True, slots=True)
class ReviewOptions:
    """What is done with the scored sites: verdicts carried over, the threshold for a budget, chips.

    ``reviews`` gives verdicts to carry over (default: the ``sites.geojson``
    already in the output folder); ``max_flags`` or ``target_precision`` (on
    the sites labelled in ``labels``, default the carried-over verdicts)
    raise the threshold; ``chips`` best-ranked sites get chips besides the
    flagged ones.
    """

    reviews: Path | None = option(None, Path)
    labels: Path | None = option(None, Path)
    max_flags: int | None = option(None, int, low=0, low_closed=True)
    target_precision: float | None = option(None, float, low=0, high=1)
    chips: int = option(20, int, low=0, low_closed=True)

    def __post_init__(self) -> None:
        check(self)
        if self.max_flags is not None and self.target_precision is not None:
            raise OptionError(("max_flags", "target_precision"), "{} and {} both set the threshold: give one of them")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything that decides what ``run`` computes and where it writes.

    ``sites`` None means cell mode: the overlap of the two dates is cut into
    squares of ``cell_m`` metres and every cell is scored.  ``workers`` is
    the number of scoring threads (0: one per core).  ``before_bands`` and
    ``after_bands`` name the bands of a multi-band file (:mod:`detector.bands`);
    ``before_mask`` and ``after_mask`` are mask files (non-zero = obscured);
    ``cloud_detector`` s2cloudless masks the dates without one (:mod:`detector.clouds`).
    """

    before: Path = option(REQUIRED, Path)
    after: Path = option(REQUIRED, Path)
    out: Path = option(REQUIRED, Path)
    sites: Path | None = option(None, Path)
    cell_m: float = option(500.0, float, low=0)
    overwrite: bool = option(False, bool)
    before_date: str | None = option(None, str)
    after_date: str | None = option(None, str)
    before_bands: str | None = option(None, str)
    after_bands: str | None = option(None, str)
    before_mask: Path | None = option(None, Path)
    after_mask: Path | None = option(None, Path)
    cloud_detector: str = option("none", str, choices=("none", "s2cloudless"))
    workers: int = option(0, int, low=0, low_closed=True)
    site: SiteOptions = field(default_factory=SiteOptions)
    scan: ScanOptions = field(default_factory=ScanOptions)
    review: ReviewOptions = field(default_factory=ReviewOptions)

    def __post_init__(self) -> None:
        check(self)
        for key in ("before_date", "after_date"):
            object.__setattr__(self, key, iso_date(key, getattr(self, key)))
        if self.before_date and self.after_date and self.before_date >= self.after_date:
            raise OptionError(("before_date", "after_date"), "{} " + self.before_date + " is not before {} " +
                              self.after_date + ": swap them (the before date comes first)")

    def to_json(self) -> dict[str, Any]:
        """Every parameter, as plain JSON values, in one flat table (``run.json`` ``parameters``)."""
        own = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("site", "scan", "review")}
        return plain({**own, **as_table(self.site), **as_table(self.scan), **as_table(self.review)})


def iso_date(key: str, text: str | None) -> str | None:
    """``text`` as an ISO date (``YYYY-MM-DD``), or :class:`OptionError` naming ``key``."""
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise OptionError((key,), "{} is " + literal(repr(text)) + ": give a real date as YYYY-MM-DD") from None


def as_table(value: Any) -> dict[str, Any]:
    """The fields of a dataclass value, nested value types as tables."""
    return {f.name: (as_table(v) if hasattr(v := getattr(value, f.name), "__dataclass_fields__") else v)
            for f in fields(value)}


def plain(table: dict[str, Any]) -> dict[str, Any]:
    """Paths as strings, nested tables alike."""
    return {k: plain(v) if isinstance(v, dict) else str(v) if isinstance(v, Path) else v for k, v in table.items()}
