"""Pixel metrics of a change probability against labels, the precision-recall curve, and ``evaluate``.

Array contract: ``prob`` float ``(...)`` in [0, 1], NaN = not scored;
``target`` float, same shape, 1 = change, 0 = no change, NaN = unknown.
Only pixels where both are finite count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.errors import InputError, OutputExistsError
from detector.files import atomic
from detector.metrics import average_precision


@dataclass(frozen=True, slots=True)
class Counts:
    """Pixel confusion counts at one threshold."""

    tp: int
    fp: int
    fn: int
    tn: int

    def metrics(self) -> dict[str, float]:
        """Precision, recall, F1 and IoU (0 where undefined)."""
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        union = self.tp + self.fp + self.fn
        return {"precision": precision, "recall": recall, "f1": f1, "iou": self.tp / union if union else 0.0}


def confusion(prob: np.ndarray, target: np.ndarray, *, threshold: float = 0.5) -> Counts:
    """Confusion counts of ``prob >= threshold`` against ``target == 1``."""
    keep = np.isfinite(prob) & np.isfinite(target)
    said, truth = prob[keep] >= threshold, target[keep] >= 0.5
    return Counts(int(np.sum(said & truth)), int(np.sum(said & ~truth)), int(np.sum(~said & truth)),
                  int(np.sum(~said & ~truth)))


def pixel_metrics(prob: np.ndarray, target: np.ndarray, *, threshold: float = 0.5) -> dict[str, Any]:
    """Precision, recall, F1, IoU at ``threshold``, average precision, and the counts."""
    counts = confusion(prob, target, threshold=threshold)
    keep = np.isfinite(prob) & np.isfinite(target)
    out: dict[str, Any] = counts.metrics()
    out["ap"] = average_precision(np.where(keep, prob, np.nan), target >= 0.5)
    out["changed_share"] = float(np.mean(target[keep] >= 0.5)) if keep.any() else float("nan")
    out.update(threshold=threshold, pixels=int(keep.sum()), tp=counts.tp, fp=counts.fp, fn=counts.fn, tn=counts.tn)
    return out


def pr_curve(prob: np.ndarray, target: np.ndarray, *, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at ``points`` thresholds evenly spaced over [0, 1]."""
    keep = np.isfinite(prob) & np.isfinite(target)
    p, t = prob[keep], target[keep] >= 0.5
    thresholds = np.linspace(0, 1, points)
    bins = np.clip(np.searchsorted(thresholds, p, side="right") - 1, 0, points - 1)
    pos = np.bincount(bins, weights=t, minlength=points)[::-1].cumsum()[::-1]
    total = np.bincount(bins, minlength=points)[::-1].cumsum()[::-1]
    precision = np.divide(pos, total, out=np.ones(points), where=total > 0)
    recall = pos / max(int(t.sum()), 1)
    return precision, recall


def write_pr_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: Path) -> None:
    """Precision-recall curves (name -> precision, recall, AP) as a PNG, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    for name, (precision, recall, ap) in curves.items():
        ax.plot(recall, precision, label=f"{name} (AP {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="pixel precision-recall")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    """``metrics`` as JSON, written atomically."""
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, default=float))


def evaluate(model: Path | None, data: tuple[Path, ...], out: Path, *, tile_px: int = 256, scale: int = 1,
             threshold: float = 0.5, bands: str | None = None) -> dict[str, Any]:
    """Pixel metrics of a model on labelled data, overall and per source; writes metrics.json and pr_curve.png.
    ``bands`` (``--bands``) names the bands of image pairs.

    Every scene under ``data`` is scored tile by tile (``tile_px``, after
    block-averaging by ``scale``) through the band adapter, as in training;
    unlike ``detector run``, the after date is not first normalized and
    registered to the before date (the adapter standardizes each date on its
    own; a residual shift stays).
    """
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file: give a folder for metrics.json and pr_curve.png")
    if scale < 1 or tile_px < 32 or tile_px % 8:
        raise InputError(f"--scale {scale} / --tile-px {tile_px}: give a scale of 1 or more and a tile size that "
                         "is a multiple of 8, at least 32")
    if not 0 < threshold < 1:
        raise InputError(f"--threshold {threshold}: give a value in (0, 1)")
    from detector import weights
    from detector.methods import default_model_path
    from detector.model import predict
    from training.datasets import cut_tiles, load_scenes

    loaded = weights.load(model or default_model_path())
    if loaded.network is None:  # weights.load always gives one; the type also allows an ONNX-only model
        raise ValueError(f"{loaded.path} was read without its network")
    scenes = [scene for folder in data for scene in load_scenes(folder, bands=bands)]
    tiles = cut_tiles(scenes, tile_px, scales=(scale,), evidence=loaded.evidence, window=loaded.window)
    prob = predict(loaded.network, tiles.inputs)
    found = pixel_metrics(prob, tiles.target, threshold=threshold)
    per_source = {}
    for source in sorted(set(tiles.source.tolist())):
        pick = tiles.source == source
        per_source[source] = pixel_metrics(prob[pick], tiles.target[pick], threshold=threshold)
    report = {"model": loaded.record(), "data": [str(d) for d in data], "tile_px": tile_px, "scale": scale,
              "overall": found, "per_source": per_source}
    out.mkdir(parents=True, exist_ok=True)
    precision, recall = pr_curve(prob, tiles.target)
    write_pr_png({loaded.card.get("name", "model"): (precision, recall, found["ap"])}, out / "pr_curve.png")
    write_metrics(report, out / "metrics.json")
    return report
