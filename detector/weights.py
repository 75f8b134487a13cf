"""Model files: weights plus the metadata needed to use them, loaded without unpickling code.

A model file is a ``torch.save`` of a plain dict::

    {"format": FORMAT, "version": 1, "card": "<JSON text>", "state_dict": {name: tensor}}

and is read with ``torch.load(weights_only=True)``, which accepts tensors and
plain containers only: a pickle that would run code on load is refused.  The
card (JSON) holds the architecture, the bands, the tile size trained on, the
training data, the seed and the metrics.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detector.errors import InputError, MissingFileError, OutputExistsError, first_line
from detector.files import atomic

if TYPE_CHECKING:  # torch is imported by what reads or writes weights, not by a model read from its ONNX export
    from torch import nn

FORMAT = "site-change-detector/change-cnn"
VERSION = 1
REQUIRED_BANDS = ("blue", "green", "red")


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A model ready for :func:`detector.model.predict`, with its card and file hash.

    ``network`` is None for a model read from its ONNX export without torch
    (:func:`detector.inference.load`): it runs only in ONNX Runtime.
    """

    network: nn.Module | None
    card: dict[str, Any]
    path: Path
    sha256: str

    def check_bands(self, names: tuple[str, ...]) -> None:
        """Refuse imagery that lacks the bands the model cannot do without."""
        missing = [b for b in self.card.get("required_bands", REQUIRED_BANDS) if b not in names]
        if missing:
            raise InputError(f"model {self.path} needs bands {', '.join(missing)}; the imagery has {list(names)}: "
                             "give imagery with at least red, green and blue, or use --method classical")

    @property
    def window(self) -> int:
        """The side, in pixels, of the ground the adapter standardizes each pixel against
        (:func:`detector.adapter.standardize`): the ground of the model's coarsest training tiles
        (``tile_px`` pixels block-averaged by the largest training scale: 256 for the shipped weights)."""
        scales = self.card.get("settings", {}).get("scales") or [1]
        return int(self.card["tile_px"]) * int(max(scales))

    def check_tile(self, tile_px: int) -> None:
        """Refuse tiles smaller than the model was trained to see."""
        least = int(self.card["tile_px"]) // 2
        if tile_px < least:
            raise InputError(f"tiles of {tile_px} px are too small for model {self.path} (trained on "
                             f"{self.card['tile_px']}-px tiles, needs at least {least}): "
                             "raise --tile-px or give a smaller --bin (1: every pixel)")

    @property
    def evidence(self) -> tuple[str, ...]:
        """The evidence the network reads beside the bands (:data:`detector.model.EVIDENCE`); () for none."""
        return tuple(self.card.get("evidence", ()))

    def record(self) -> dict[str, Any]:
        """What ``run.json`` says about the model."""
        keep = ("name", "architecture", "bands", "evidence", "tile_px", "parameters", "trained_on", "seed", "metrics")
        return {"path": str(self.path), "sha256": self.sha256, **{k: self.card.get(k) for k in keep},
                "standardized_over_px": self.window}


def save(network: nn.Module, card: dict[str, Any], path: Path) -> None:
    """Write weights and card to ``path`` (a temporary file first, then renamed)."""
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder: give a file name for the model, such as {path / 'model.pt'}")
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}
    with atomic(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, "card": json.dumps(card), "state_dict": state}, tmp)


def load(path: Path, *, for_training: bool = False) -> LoadedModel:
    """Read a model file; never unpickles arbitrary objects.

    Returns the network in eval mode with batch norm folded in (for
    inference), or as trained (``for_training``, to fine-tune).
    """
    from detector.model import build, fuse_batchnorm

    path = Path(path)
    if path.is_dir():
        raise InputError(f"model file {path} is a folder: give a file written by `detector train`")
    if not path.is_file():
        raise MissingFileError(f"model file {path} does not exist: give a file written by `detector train`")
    data = path.read_bytes()
    blob = _read(data, path)
    card = _card(blob, path)
    network = build(card["architecture"], tuple(card["bands"]), evidence=tuple(card.get("evidence", ())))
    try:
        network.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{path} does not hold {card['architecture']} weights ({first_line(exc, limit=1000)}): "
                         "the file is damaged or was edited; retrain or restore it") from None
    network.eval()
    if not for_training:
        network = fuse_batchnorm(network)
    return LoadedModel(network, card, path, hashlib.sha256(data).hexdigest())


def _read(data: bytes, path: Path) -> dict[str, Any]:
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notices on foreign files
            blob = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        raise InputError(f"{path} is refused: it is not a model file of ours (torch cannot read it as plain "
                         "weights; nothing in it was run): give a file written by `detector train`") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path} is not a {FORMAT} file (a torch file of another kind): "
                         "give a file written by `detector train`")
    if blob.get("version") != VERSION:
        raise InputError(f"{path} is model format version {blob.get('version')}; this detector reads version "
                         f"{VERSION}: retrain with this version")
    return blob


def _card(blob: dict[str, Any], path: Path) -> dict[str, Any]:
    from detector.model import ARCHITECTURES, EVIDENCE, MODEL_BANDS

    try:
        card = json.loads(blob["card"])
    except (KeyError, TypeError, json.JSONDecodeError):
        raise InputError(f"{path} has no readable model card: retrain it with `detector train`") from None
    if card.get("architecture") not in ARCHITECTURES:
        raise InputError(f"{path} names architecture {card.get('architecture')!r}; "
                         f"this detector knows {sorted(ARCHITECTURES)}")
    if tuple(card.get("bands", ())) != MODEL_BANDS or not isinstance(card.get("tile_px"), int):
        raise InputError(f"{path} expects bands {card.get('bands')} and tile_px {card.get('tile_px')}; "
                         f"this detector expects bands {list(MODEL_BANDS)} and an integer tile_px")
    if not set(card.get("evidence", ())) <= set(EVIDENCE):
        raise InputError(f"{path} reads evidence {card.get('evidence')}; this detector gives {list(EVIDENCE)}: "
                         "retrain it with this version")
    return card
