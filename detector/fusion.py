"""How the classical evidence and the CNN make one change score, and when the CNN is heard at all.

**The rule.**  ``fused = min(max((classical * cnn_near) ** EXPONENT, FLOOR * classical), classical + LIFT)``
per pixel, ``cnn_near`` the CNN's highest change probability within
``SUPPORT_M`` (15 m) of the pixel.  The first term scores high where both
agree: the CNN says that construction is there or right beside it (it fires
on buildings, not on the yards, walls and roads between them that belong to
the same compound), the classical score says how far the change extends,
with its own checks (change in noise units of the tile, greening suppressed,
registration checked).  The second term is the floor that no single voter
can go under: where the CNN says nothing, classical evidence still scores
``FLOOR`` of itself (a classical 0.8 stays 0.44), so the CNN can lower a
score by at most 45 % and never take it to nothing; overwhelming classical
evidence (0.91 and more) is flagged whatever the CNN says.  Between, the CNN
decides, in its domain and calibrated to the scene: on nine of the ten OSCD
cities, seen by models that never trained on them, what it so takes under
the threshold is more false change than true.  The ceiling is the same rule the other way: the
CNN raises a classical score by ``LIFT`` at most, so it cannot flag alone
what the classical evidence calls no change or weak change (under 0.35;
change with no sign of construction reaches 0.35 only from 3.2 noise units): on the
registered Dabancheng frames a CNN sure of a road and of scattered streaks of
a snowy March day lifted the bare Facility #2 over the threshold.  All terms
are in [0, 1], so the fused score is too.

**The CNN is calibrated to the scene first** (:mod:`detector.calibration`):
its probabilities are shifted so that it calls as many pixels changed as
the classical score does, so ``cnn_near`` means about the same on any
ground; the agreement below is measured on the calibrated CNN.

**No veto out of its domain.**  Where the CNN has never seen ground like
the scene's (a desert, snow, an RGB frame of another sensor) its
probabilities collapse towards 0 and a product of the two would veto every
pixel the classical evidence finds.  So each scene is checked first: of the
pixels the classical score counts as changed, the share where the CNN sees
change too (``agreement``).  On the cities it was trained on the CNN agrees
on a fair share of them; a collapsed CNN agrees on almost none.  Under
``MIN_AGREEMENT`` the CNN abstains and the scene is scored by the classical
evidence alone (:func:`domain_check`; ``run.json`` records the check and the
rule that applied).  With fewer than ``MIN_CHANGED_PX`` classically changed
pixels there is nothing to check against, and the rule stands.

The floor is the no-veto rule itself (a cut of 45 % at most: with 30 %, as
until a later stop, every classical 0.71 flagged alone and pooled F1 across
the folds was 0.362 against 0.380; the real camp's 28 pairs and the built
Facility #2 of the L2A pair come out as they did), the ceiling
its mirror (a lift of 0.15 at most: without it the snowy 2018-03-22 frame
flags the bare Facility #2; it cost 0.011 of pooled pixel F1 on the folds,
0.292 to 0.281, before greening was gated); the fall-back
lies under the agreement of the OSCD cities seen by models that never trained
on them (``scripts/eval_oscd.py --folds 5``); the exponent stays the
geometric mean, because lower ones, better by pixel F1 on the folds, flood
the flags on desert ground.  The README's model card gives the figures.

The rule makes a cheap prefilter exact where it matters: the fused score is
at most ``min(max(classical ** EXPONENT, FLOOR * classical), classical + LIFT)``,
so where the classical score is under ``max(t ** (1 / EXPONENT), t - LIFT)``
(``t`` the lower of the pixel and site thresholds, and ``t ** (1 / EXPONENT)
<= t / FLOOR``) the fused score is under ``t`` whatever the CNN says.  A
tile with no such pixel skips the CNN and its fused scores are ``FLOOR * classical``: which pixels
count as changed and which sites are flagged stay exactly as without the
prefilter; scores under the thresholds may be lower.

Array contract: ``classical, cnn : ndarray, shape (N, H, W), float32``, NaN = nodata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from detector.change import local_max

SUPPORT_M = 15.0
EXPONENT = 0.5
FLOOR = 0.55
LIFT = 0.15
MIN_AGREEMENT = 0.02
MIN_CHANGED_PX = 200
AGREES_AT = 0.5  # the CNN sees change at a pixel at this probability


def rule_text(exponent: float = EXPONENT) -> str:
    return (f"fused = min(max((classical * cnn_near) ** {exponent:g}, {FLOOR:g} * classical), classical + {LIFT:g}) "
            f"per pixel, cnn_near = the CNN probability's maximum within {SUPPORT_M:g} m; CNN skipped (cnn_near = 0) "
            f"on tiles with no classical score >= max(t ** {1 / exponent:.3g}, t - {LIFT:g}), t = min(pixel_threshold, "
            f"threshold); classical alone where the CNN agrees on under "
            f"{MIN_AGREEMENT:g} of the classically changed pixels (at least {MIN_CHANGED_PX} of them)")


RULE = rule_text()


def reach_px(pixel_m: float) -> int:
    """``SUPPORT_M`` in whole pixels of ``pixel_m`` metres."""
    return int(SUPPORT_M // pixel_m)


def near(cnn: np.ndarray, *, reach: int = 0) -> np.ndarray:
    """The CNN's highest probability within ``reach`` pixels; NaN where the CNN is NaN."""
    if reach <= 0:
        return cnn
    found = local_max(np.nan_to_num(cnn, nan=0.0), reach)
    found[np.isnan(cnn)] = np.nan
    return found


def fuse(classical: np.ndarray, cnn: np.ndarray, *, reach: int = 0) -> np.ndarray:
    """``min(max((classical * cnn_near) ** EXPONENT, FLOOR * classical), classical + LIFT)``; NaN where either is
    NaN."""
    product = np.maximum(classical, 0) * np.maximum(near(cnn, reach=reach), 0)
    return np.minimum(np.maximum(product ** EXPONENT, FLOOR * classical), classical + LIFT).astype(np.float32)


def candidates(classical: np.ndarray, *, threshold: float) -> np.ndarray:
    """Tiles where the fused score could reach ``threshold``: shape (N,), bool."""
    flat = np.nan_to_num(classical.reshape(len(classical), -1), nan=0.0)
    return flat.max(axis=1) >= max(threshold ** (1 / EXPONENT), threshold - LIFT)


def domain_check(counts: np.ndarray) -> dict[str, Any]:
    """Whether the CNN is heard in a scene, from its classically changed pixels and, of those, the ones where
    the CNN near them sees change (``counts``, :func:`detector.calibration.agreement`).

    Returns what ``run.json`` records: ``in_domain``, ``agreement`` (None
    when too few pixels changed to tell), the counts and the rule's limits.
    """
    changed, agreed = int(counts[0]), int(counts[1])
    agreement = agreed / changed if changed else None
    in_domain = changed < MIN_CHANGED_PX or (agreement or 0.0) >= MIN_AGREEMENT
    return {"in_domain": in_domain, "agreement": None if agreement is None else round(agreement, 4),
            "classical_changed_px": changed, "cnn_agreed_px": agreed, "min_agreement": MIN_AGREEMENT,
            "min_changed_px": MIN_CHANGED_PX}
