"""The change CNN: a small early-fusion fully convolutional network, and its band adapter.

Array contract of the adapter: ``before, after : ndarray, shape (N, C, H, W),
float32, NaN = nodata`` with canonical band ``names``; the network takes
``(N, 2 * len(MODEL_BANDS), H, W)`` float32 and returns change logits
``(N, 1, H, W)``.  ``H`` and ``W`` must be multiples of :data:`STRIDE`.

Band adapter.  The network always sees the six bands of :data:`MODEL_BANDS`
for each date, before then after.  Each band of each date is standardized on
its own (median and spread of the valid pixels of the ground around each
pixel, in windows of the model's coarsest training tiles), so uint8 RGB
frames, Sentinel-2 reflectance and Landsat DN all arrive on one scale and a
uniform brightness change between the dates is not change.  A band the
imagery lacks is filled with zeros (the standardized mean); training drops
NIR and SWIR at random so that RGB-only imagery is scored by the same
weights.  Nodata is zero as well: pixels without data are never scored (the
scan masks them out afterwards).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional
from torch.nn.utils.fusion import fuse_conv_bn_eval

from detector.adapter import CLIP, EVIDENCE, MODEL_BANDS, STRIDE, adapt, in_batches, standardize  # noqa: F401  (their old home)


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EarlyFusionNet(nn.Module):
    """Early-fusion encoder-decoder: both dates stacked on channels, three levels and a full-resolution branch.

    Level widths ``widths`` at 1/2, 1/4 and 1/8 of the input; the decoder adds
    1x1-projected coarse features to each finer level (a feature pyramid).
    The logits at 1/2 are upsampled bilinearly and a thin branch of ``fine``
    channels at full resolution adds its own, so one-pixel changes (a
    building at 10 m) are not blurred away.
    """

    def __init__(self, in_channels: int, widths: tuple[int, int, int] = (16, 32, 48), fine: int = 4) -> None:
        super().__init__()
        a, b, c = widths
        self.fine = nn.Sequential(_block(in_channels, fine), nn.Conv2d(fine, 1, 1))
        self.enc1 = nn.Sequential(_block(in_channels, a, 2), _block(a, a))
        self.enc2 = nn.Sequential(_block(a, b, 2), _block(b, b))
        self.enc3 = nn.Sequential(_block(b, c, 2), _block(c, c))
        self.lat3 = nn.Conv2d(c, b, 1)
        self.dec2 = _block(b, b)
        self.lat2 = nn.Conv2d(b, a, 1)
        self.dec1 = _block(a, a)
        self.head = nn.Conv2d(a, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.enc1(x)
        f2 = self.enc2(f1)
        f3 = self.enc3(f2)
        d2 = self.dec2(f2 + functional.interpolate(self.lat3(f3), size=f2.shape[-2:], mode="nearest"))
        d1 = self.dec1(f1 + functional.interpolate(self.lat2(d2), size=f1.shape[-2:], mode="nearest"))
        coarse = functional.interpolate(self.head(d1), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return coarse + self.fine(x)


ARCHITECTURES: dict[str, Callable[[int], nn.Module]] = {
    "ef-fpn-s": lambda channels: EarlyFusionNet(channels, (16, 32, 48)),
    "ef-fpn-m": lambda channels: EarlyFusionNet(channels, (24, 48, 64)),
}


def build(name: str, bands: tuple[str, ...] = MODEL_BANDS, *, evidence: tuple[str, ...] = ()) -> nn.Module:
    """A fresh network by architecture name, for two dates of ``bands`` and the ``evidence`` channels."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}: choose one of {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](2 * len(bands) + len(evidence))


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with every Conv2d + BatchNorm2d pair folded into one Conv2d.

    Folding removes a pass over every feature map: 1.4x more tiles per second
    on 2 cores (``scripts/bench.py``).
    """
    fused = copy.deepcopy(model).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                conv, norm = module[i], module[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, norm)
                    module[i + 1] = nn.Identity()
    return fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def predict(model: nn.Module, inputs: np.ndarray, *, batch: int = 4) -> np.ndarray:
    """Change probability per pixel.

    Small batches are fastest on CPU (the feature maps of 4 tiles of 256 x 256
    stay in cache: ``scripts/bench.py``); a batch per thread is how ``run``
    uses both cores.

    Parameters
    ----------
    inputs : ndarray, shape (N, C, H, W), float32, as made by :func:`adapt`;
        H and W need not be multiples of :data:`STRIDE` (edges are padded).

    Returns
    -------
    ndarray, shape (N, H, W), float32 in [0, 1]
    """
    model.eval()

    def run(x: np.ndarray) -> np.ndarray:
        tiles = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        return torch.sigmoid(model(tiles))[:, 0].numpy()

    with torch.inference_mode():
        return in_batches(inputs, run, batch=batch)
