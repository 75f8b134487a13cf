"""Cloud masks: which pixels of a date are obscured (cloud, its shadow, cirrus, snow) or hold no data.

Three kinds of mask band are read (the band's canonical name is its kind):

- ``scl``: the Sentinel-2 L2A scene classification (20 m), classes 3 cloud
  shadow, 8 and 9 cloud (medium, high probability), 10 thin cirrus and 11
  snow are obscured; 0 (no data) and 1 (saturated or defective) hold no data;
- ``qa_pixel``: the Landsat Collection 2 ``QA_PIXEL`` bits: 1 dilated cloud,
  2 cirrus, 3 cloud, 4 cloud shadow and 5 snow are obscured; bit 0 is fill;
- ``cloud``: any mask a user gives (``--before-mask``), non-zero = obscured.

Snow counts as obscured: a building under snow cannot be seen, and snow that
melts between the dates is not construction.  Pure functions of arrays.
"""

from __future__ import annotations

import numpy as np

SCL_OBSCURED = (3, 8, 9, 10, 11)  # cloud shadow, cloud medium / high probability, thin cirrus, snow
SCL_NO_DATA = (0, 1)  # no data, saturated or defective
QA_FILL = 1 << 0
QA_OBSCURED = (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5)  # dilated cloud, cirrus, cloud, shadow, snow
KINDS = ("scl", "qa_pixel", "cloud")


def decode(values: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(has data, obscured) of a mask band's raw values; both bool, the shape of ``values``."""
    if kind == "scl":
        return ~np.isin(values, SCL_NO_DATA), np.isin(values, SCL_OBSCURED)
    if kind == "qa_pixel":
        bits = values.astype(np.int64)
        return (bits & QA_FILL) == 0, (bits & QA_OBSCURED) != 0
    if kind == "cloud":
        return np.ones(values.shape, bool), np.nan_to_num(values) != 0
    raise ValueError(f"unknown mask kind {kind!r}: one of {', '.join(KINDS)}")
