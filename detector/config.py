"""The typed configuration of one ``detector run``, validated once at the edge."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from detector.change import ChangeParams
from detector.errors import InputError
from detector.fusion import METHODS
from detector.scoring import ScoreRule


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
