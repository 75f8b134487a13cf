"""Block averaging onto a coarser analysis grid, and back.

Array contract: the last two axes are rows and columns; leading axes
broadcast.  A factor of 1 is the identity (with a cast to float32).
"""

from __future__ import annotations

import numpy as np


def bin_mean(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks, float32; a ragged last row or column is dropped.

    NaN in a block makes the block NaN.
    """
    if factor == 1:
        return x.astype(np.float32, copy=False)
    h, w = x.shape[-2] // factor * factor, x.shape[-1] // factor * factor
    total = np.zeros((*x.shape[:-2], h // factor, w // factor), dtype=np.float32)
    for i in range(factor):
        for j in range(factor):
            total += x[..., i:h:factor, j:w:factor]
    total *= np.float32(1.0 / (factor * factor))
    return total


def bin_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """True where any pixel of a ``factor`` x ``factor`` block is true."""
    if factor == 1:
        return mask
    h, w = mask.shape[-2] // factor * factor, mask.shape[-1] // factor * factor
    out = np.zeros((*mask.shape[:-2], h // factor, w // factor), dtype=bool)
    for i in range(factor):
        for j in range(factor):
            out |= mask[..., i:h:factor, j:w:factor]
    return out


def unbin(x: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Repeat each value over its block, edge-padded or cut to ``shape`` (rows, cols)."""
    full = x if factor == 1 else np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)
    full = full[..., :shape[0], :shape[1]]
    pad = [(0, 0)] * (x.ndim - 2) + [(0, shape[0] - full.shape[-2]), (0, shape[1] - full.shape[-1])]
    return np.pad(full, pad, mode="edge") if any(p[1] for p in pad) else full
