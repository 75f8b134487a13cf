"""The scoring methods, in one registry: what each scores with, which tiles the CNN runs on, how the two
combine, what ``run.json`` records, and the model each one loads.

``classical`` is the image-differencing score alone (:mod:`detector.change`)
and never loads torch; ``cnn`` is the change CNN alone; ``fused`` combines
both (:mod:`detector.fusion`), and falls back to ``classical`` in a scene
where the CNN is out of its domain.

Array contract: ``classical, cnn : ndarray, shape (N, H, W), float32``, NaN = nodata.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from detector import fusion
from detector.inference import predictor

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.config import ScanOptions
    from detector.weights import LoadedModel


@dataclass(frozen=True, slots=True)
class Method:
    """One way to score change.

    ``cnn_tiles(classical, threshold)`` says which tiles (N,) the CNN runs on;
    ``combine(classical, cnn, cnn_near)`` makes the score from both (``cnn_near``:
    :func:`detector.fusion.near` of the CNN, computed once by the caller); ``rule`` is
    what ``run.json`` says of the combination (None: nothing is combined);
    ``falls_back_to`` is the method that scores a scene where the CNN is out
    of its domain (:func:`detector.fusion.domain_check`; None: the CNN is
    used wherever it is asked for).
    """

    name: str
    uses_model: bool
    cnn_tiles: Callable[[np.ndarray, float], np.ndarray]
    combine: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    rule: str | None = None
    falls_back_to: str | None = None


def _no_tiles(classical: np.ndarray, threshold: float) -> np.ndarray:
    return np.zeros(len(classical), bool)


def _every_tile(classical: np.ndarray, threshold: float) -> np.ndarray:
    return np.ones(len(classical), bool)


METHODS: dict[str, Method] = {
    "classical": Method("classical", False, _no_tiles, lambda classical, cnn, cnn_near: classical),
    "cnn": Method("cnn", True, _every_tile, lambda classical, cnn, cnn_near: cnn),
    "fused": Method("fused", True, lambda classical, threshold: fusion.candidates(classical, threshold=threshold),
                    lambda classical, cnn, cnn_near: fusion.fuse(classical, cnn_near), fusion.RULE,
                    falls_back_to="classical"),
}
NAMES = tuple(METHODS)
DEFAULT = "fused"


def default_model_path() -> Path:
    """The weights shipped in the package (trained by ``scripts/train_default.py``)."""
    return Path(str(resources.files("detector") / "weights" / "default.pt"))


def model_path(scan: ScanOptions) -> Path:
    """``--model``, else the shipped weights."""
    return Path(scan.model or default_model_path())


def check_model(scan: ScanOptions) -> None:
    """Read the model of ``scan`` once, where the method uses one, so that a missing or foreign file is
    refused before any work starts (a batch or a timeline, whose workers load it again, from this check's
    cache where they share the process)."""
    if METHODS[scan.method].uses_model:
        _cached(scan)


def _cached(scan: ScanOptions) -> LoadedModel:
    """The model of ``scan``, read once per process while its file stays the same (:func:`_weights`)."""
    path = model_path(scan)
    stat = path.stat() if path.is_file() else None
    return _weights(str(path), stat.st_mtime_ns if stat else 0, stat.st_size if stat else 0, scan.backend)


def load_model(scan: ScanOptions, names: tuple[str, ...], *, factor: int = 1) -> LoadedModel | None:
    """The CNN of ``scan.model`` (default: the shipped weights), checked against the imagery (its bands, and
    tiles of ``scan.tile_px`` scored on blocks of ``factor``); None when the method uses no model."""
    if not METHODS[scan.method].uses_model:
        return None
    model = _cached(scan)
    model.check_bands(names)
    model.check_tile(scan.tile_px // factor)
    predictor(model, scan.backend)  # made here, once, so that its cost and its errors belong to the planning
    return model


@functools.lru_cache(maxsize=2)
def _weights(path: str, mtime_ns: int, size: int, backend: str) -> LoadedModel:
    """A model file read once per process (a batch worker scores many sites); a changed file is read again.
    Read from its ONNX export, without torch, where there is a matching one (:func:`detector.inference.load`)."""
    from detector import inference

    return inference.load(Path(path), backend)
