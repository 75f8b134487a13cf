"""``detector train``: fit the change CNN on labelled tiles, keep the best epoch by validation AP.

The loss is binary cross-entropy plus soft Dice over the pixels whose label
is known: cross-entropy alone, with about 2 % changed pixels, is minimized by
predicting "no change" everywhere; Dice rewards overlap with the few changed
pixels whatever their share.  A reviewed site known only to have changed
somewhere inside (a weak label) adds the cross-entropy of its tile's highest
logit against "change".

Reproducible: one seed fixes the weights' initialization, the split, the
order of the batches and every augmentation (given the same versions and
thread count; a ``max_minutes`` budget that cuts training short is the
exception, and is recorded).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from detector import weights
from detector.errors import InputError
from detector.model import ARCHITECTURES, EVIDENCE, MODEL_BANDS, build, parameter_count, predict
from training.augment import STRENGTHS, augment_batch, paste_change
from training.datasets import Tiles, cut_tiles, groups, load_scenes, split
from training.evaluation import pixel_metrics

log = logging.getLogger(__name__)

Progress = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """Everything that decides a training run; recorded in the model card."""

    data: tuple[Path, ...]
    out: Path
    architecture: str = "ef-fpn-s"
    tile_px: int = 128
    scales: tuple[int, ...] = (1, 2)
    batch: int = 16
    epochs: int = 40
    steps_per_epoch: int = 40
    lr: float = 2e-3
    val_fraction: float = 0.15
    patience: int = 15
    max_minutes: float = 30.0
    seed: int = 0
    init: Path | None = None
    name: str = "change-cnn"
    augment: str = "standard"  # or "strong": training.augment.radiometry too
    keep_worse: bool = False  # write a model that validates worse than its --init
    bands: str | None = None  # --bands: the bands of image pairs' files (detector.bands)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: none), validated and kept
    evidence: tuple[str, ...] = ()  # evidence the network reads beside the bands (detector.model.EVIDENCE)
    paste: float = 0.0  # share of the tiles given another tile's change (training.augment.paste_change)
    notes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.augment not in STRENGTHS:
            raise InputError(f"augment is {self.augment!r}: choose one of {', '.join(STRENGTHS)}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"--architecture {self.architecture!r} is unknown: choose one of {sorted(ARCHITECTURES)}")
        if self.tile_px % 8 or self.tile_px < 32:
            raise InputError(f"--tile-px {self.tile_px}: give a multiple of 8, at least 32")
        for flag, value in (("--epochs", self.epochs), ("--batch", self.batch), ("--max-minutes", self.max_minutes),
                            ("--steps", self.steps_per_epoch), ("--patience", self.patience), ("--lr", self.lr)):
            if not value > 0:
                raise InputError(f"{flag} is {value}: give a positive value")
        if self.out.is_dir():
            raise InputError(f"--out {self.out} is a folder: give a file name for the model, such as "
                             f"{self.out / 'model.pt'}")
        if not 0 <= self.ema < 1:
            raise InputError(f"--ema is {self.ema}: give a decay in [0, 1) (0: no average)")
        if not set(self.evidence) <= set(EVIDENCE):
            raise InputError(f"--evidence {','.join(self.evidence)}: choose from {', '.join(EVIDENCE)}")
        if not 0 <= self.paste <= 1:
            raise InputError(f"--paste is {self.paste}: give a share of the tiles in [0, 1]")
        if self.paste and self.evidence:
            raise InputError("--paste with --evidence: pasted change has no classical evidence; give one of them")
        if not 0 <= self.val_fraction < 1:
            raise InputError(f"--val-fraction is {self.val_fraction}: give a value in [0, 1)")


def loss_fn(logits: torch.Tensor, target: torch.Tensor, weak: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice over known pixels, plus the weak-label term.

    Parameters
    ----------
    logits : (N, 1, H, W); target : (N, H, W), NaN = unknown; weak : (N,), NaN = none
    """
    logits = logits[:, 0]
    known = torch.isfinite(target)
    y = torch.nan_to_num(target)
    total = logits.new_zeros(())
    if known.any():
        bce = functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
        total = total + (bce * known).sum() / known.sum()
        p = torch.sigmoid(logits) * known
        total = total + 1 - (2 * (p * y).sum() + 1) / (p.sum() + (y * known).sum() + 1)
    has_weak = torch.isfinite(weak)
    if has_weak.any():
        peak = logits[has_weak].flatten(1).amax(dim=1)
        total = total + functional.binary_cross_entropy_with_logits(peak, weak[has_weak])
    return total


def prepare(config: TrainConfig) -> Tiles:
    """Load the scenes under every ``--data`` folder and cut them into tiles."""
    scenes = [scene for folder in config.data for scene in load_scenes(folder, bands=config.bands)]
    log.info("%d scenes from %s", len(scenes), ", ".join(str(d) for d in config.data))
    return cut_tiles(scenes, config.tile_px, scales=config.scales, evidence=config.evidence)


def train(config: TrainConfig, *, progress: Progress | None = None) -> dict[str, Any]:
    """Train, write the best model to ``config.out``; return its card."""
    start = time.perf_counter()
    config = with_init(config)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    tiles = prepare(config)
    train_idx, val_idx = split(tiles, val_fraction=config.val_fraction, rng=rng)
    if len(train_idx) == 0:
        raise InputError("no training tiles left after the validation split: give more data or --val-fraction 0")
    if len(val_idx) == 0:
        log.warning("no block held out for validation (every folder has fewer than 3 blocks): "
                    "early stopping and the card's metrics use the training tiles")
    measurable = warn_if_unmeasurable(tiles, val_idx if len(val_idx) else train_idx)
    network, architecture = start_network(config)
    baseline = validate(network, tiles, val_idx if len(val_idx) else train_idx) if config.init else None
    best, best_state, history, stopped = fit(network, tiles, train_idx, val_idx, config, rng, start, progress)
    if baseline is not None and measurable and best["ap"] < baseline["ap"] and not config.keep_worse:
        raise InputError(f"the trained model scores validation AP {best['ap']:.3f}, under the {baseline['ap']:.3f} of "
                         f"{config.init} it started from: nothing written; train longer, add reviews, or pass "
                         "--keep-worse to write it anyway")
    network.load_state_dict(best_state)
    card = model_card(config, architecture, tiles, train_idx, val_idx, network, best, history, stopped,
                      minutes=(time.perf_counter() - start) / 60)
    card["metrics"]["starting_model"] = baseline and {k: _round(v) for k, v in baseline.items()}
    card["metrics"]["measurable"] = measurable
    weights.save(network, card, config.out)
    return card


MIN_VALIDATION_CHANGED_PX = 200  # fewer changed pixels held out, and an AP says little


def warn_if_unmeasurable(tiles: Tiles, idx: np.ndarray) -> bool:
    """Whether the validation tiles hold enough known change to measure a model by; a warning if not."""
    changed = int(np.nansum(tiles.target[idx] >= 0.5))
    if changed >= MIN_VALIDATION_CHANGED_PX:
        return True
    log.warning("the validation tiles hold %d changed pixels (fewer than %d): too few to measure the model; "
                "its validation metrics, and any comparison with a starting model, mean little",
                changed, MIN_VALIDATION_CHANGED_PX)
    return False


def with_init(config: TrainConfig) -> TrainConfig:
    """``config`` with the architecture and evidence of the model it fine-tunes (``config.init``), which win."""
    if config.init is None:
        return config
    card = weights.load(config.init, for_training=True).card
    return replace(config, architecture=card["architecture"], evidence=tuple(card.get("evidence", ())))


def start_network(config: TrainConfig) -> tuple[torch.nn.Module, str]:
    """A fresh network, or the one in ``config.init`` (see :func:`with_init`)."""
    if config.init is None:
        return build(config.architecture, evidence=config.evidence), config.architecture
    loaded = weights.load(config.init, for_training=True)
    if loaded.network is None:  # weights.load always gives one; the type also allows an ONNX-only model
        raise ValueError(f"{loaded.path} was read without its network")
    return loaded.network, loaded.card["architecture"]


def fit(network: torch.nn.Module, tiles: Tiles, train_idx: np.ndarray, val_idx: np.ndarray, config: TrainConfig,
        rng: np.random.Generator, start: float, progress: Progress | None) -> tuple[dict, dict, list, str]:
    """The epochs: train, validate, keep the best state; stop early or on the time budget."""
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * config.steps_per_epoch)
    average = AveragedModel(network, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) \
        if config.ema else None
    kept = average.module if average is not None else network
    best: dict[str, Any] = {"ap": -1.0}
    best_state = {k: v.clone() for k, v in kept.state_dict().items()}
    history: list[dict[str, Any]] = []
    stale, stopped = 0, f"all {config.epochs} epochs"
    for epoch in range(1, config.epochs + 1):
        loss = run_epoch(network, optimizer, schedule, tiles, train_idx, config, rng, average)
        row = {"epoch": epoch, "loss": loss, **validate(kept, tiles, val_idx if len(val_idx) else train_idx)}
        history.append(row)
        if progress is not None:
            progress(epoch, row)
        if row["ap"] > best["ap"]:
            best, stale = row, 0
            best_state = {k: v.clone() for k, v in kept.state_dict().items()}
        else:
            stale += 1
        if stale >= config.patience:
            stopped = f"early stop: no better validation AP for {config.patience} epochs"
            break
        if time.perf_counter() - start > 60 * config.max_minutes:
            stopped = f"time budget of {config.max_minutes} min"
            break
    return best, best_state, history, stopped


def run_epoch(network: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any, tiles: Tiles,
              train_idx: np.ndarray, config: TrainConfig, rng: np.random.Generator,
              average: AveragedModel | None = None) -> float:
    """``steps_per_epoch`` optimizer steps on augmented batches (each folded into ``average``); the mean loss."""
    network.train()
    losses = []
    for _ in range(config.steps_per_epoch):
        pick = rng.choice(train_idx, size=min(config.batch, len(train_idx)), replace=len(train_idx) < config.batch)
        x, y = tiles.inputs[pick], tiles.target[pick]
        if config.paste:
            x, y = paste_change(x, y, rng, share=config.paste)
        x, y = augment_batch(x, y, rng, strength=config.augment)
        logits = network(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
        loss = loss_fn(logits, torch.from_numpy(y), torch.from_numpy(tiles.weak[pick]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if average is not None:
            average.update_parameters(network)
        losses.append(loss.item())
    return float(np.mean(losses))


def validate(network: torch.nn.Module, tiles: Tiles, idx: np.ndarray) -> dict[str, Any]:
    """Pixel metrics of the network on the tiles ``idx`` (no augmentation).

    Precision, recall, F1 and IoU pool every pixel; ``ap`` is the mean of the
    groups' APs (cities and folders, see :func:`training.datasets.groups`),
    so a folder of large, mostly changed VHR tiles cannot outweigh a
    Sentinel-2 city where 1 % of the pixels changed.
    """
    prob = predict(network, tiles.inputs[idx])
    found = pixel_metrics(prob, tiles.target[idx])
    group = groups(tiles)[idx]
    per_group = [pixel_metrics(prob[group == g], tiles.target[idx][group == g])["ap"] for g in np.unique(group)]
    network.train()
    row = {k: found[k] for k in ("precision", "recall", "f1", "iou")}
    row["ap"] = float(np.nanmean(per_group)) if np.isfinite(per_group).any() else 0.0
    return row


def model_card(config: TrainConfig, architecture: str, tiles: Tiles, train_idx: np.ndarray, val_idx: np.ndarray,
               network: torch.nn.Module, best: dict[str, Any], history: list[dict[str, Any]], stopped: str, *,
               minutes: float) -> dict[str, Any]:
    """The metadata saved beside the weights."""
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    settings["data"] = [str(d) for d in config.data]
    return {
        "name": config.name,
        "architecture": architecture,
        "bands": list(MODEL_BANDS),
        "evidence": list(config.evidence),
        "required_bands": ["blue", "green", "red"],
        "tile_px": config.tile_px,
        "parameters": parameter_count(network),
        "normalization": "per band and date: (x - median) / (1.4826 MAD), clipped to +-6, missing band = 0; "
                         "over each training block of tile_px x max(scales) px, and in run over windows of that side",
        "trained_on": sorted(set(tiles.source[train_idx].tolist())),
        "validated_on": sorted(set(tiles.source[val_idx].tolist())) or "the training tiles (nothing held out)",
        "tiles": {"train": int(len(train_idx)), "val": int(len(val_idx))},
        "seed": config.seed,
        "settings": settings,
        "metrics": {"validation": {k: _round(v) for k, v in best.items()}},
        "history": [{k: _round(v) for k, v in row.items()} for row in history],
        "stopped": stopped,
        "training_minutes": round(minutes, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **config.notes,
    }


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value
