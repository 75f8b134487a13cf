"""Change evidence kernels: pure functions over batches of tiles.

Array contract: ``before, after : ndarray, shape (N, C, H, W), float32`` on the
same grid, NaN where nodata; ``names`` gives the canonical band name of each of
the C bands.  Every kernel broadcasts over the batch; nothing loops over tiles
or pixels in Python.  The result of :func:`change_score` is a per-pixel score
in [0, 1] (NaN where either date has no data).

The score is
``magnitude * (1 - greening) * (1 - melting nearby) * (floor + (1 - floor) * built)``, where
``built = construction * (1 - greening nearby)``:

- *magnitude*: the change vector length ``m`` of the radiometrically
  normalized bands, in units of each band's unchanged-pixel noise, mapped to
  ``1 - exp(-(m - m_low) / scale)`` (0 under ``m_low``), ``scale`` going from
  ``m_scale_plain`` without construction evidence to ``m_scale`` with full
  evidence: a change needs to be larger to count where nothing says it is built;
- *construction*: the larger of new straight edges (an increase of oriented
  structure-tensor energy of brightness, spread over ``support_m``) and, where a
  SWIR band exists, an increase of the built-up index NDBI where the after date
  is not vegetation (:func:`not_vegetation`);
- *greening*: an increase of NDVI where the after date is vegetation (or,
  with RGB only, of the excess-green index where the visible bands did not
  brighten), so that a field turning green does not score like a compound;
- *melting* (:func:`melting`): snow in the before date and not in the after, so that
  the ground that a melted drift uncovers, with its ridges and tracks, is not
  taken for new walls.  Its maximum over the edge evidence's support takes
  the whole score down, the edges of the drift's rim included.

Change with no sign of construction reaches at most ``floor`` (0.7) of its
magnitude, so it is flagged (0.5) only where it is far out of the noise (``m``
about 4.6 noise units, against 2.5 with full construction evidence).
Greening is measured per pixel (averaged over 3 x 3), so
the roofs beside a lawn planted in a new compound keep their score; its
maximum over 3 x 3 pixels cancels the edge evidence, so the border of a field
that turned green is not taken for a new wall.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from detector import registration

VISIBLE = ("blue", "green", "red")
SHIFTED_REACH = 4  # local_max: shifted maxima up to this reach (measured faster than scipy's up to 5)


@dataclass(frozen=True, slots=True)
class ChangeParams:
    """Tunable constants of the score, recorded in ``run.json``."""

    m_low: float = 1.5
    m_scale: float = 1.5
    m_scale_plain: float = 2.5
    floor: float = 0.7
    edge_gain: float = 0.5
    ndbi_gain: float = 0.1
    green_gain: float = 0.15
    green_ndvi: float = 0.3
    green_ndvi_ramp: float = 0.2
    exg_gain: float = 0.1
    exg_brighter: float = 0.1
    snow_bright: float = 1.35
    snow_ramp: float = 0.35
    snow_ndsi: float = 0.4
    snow_neutral: float = -0.08
    support_m: float = 40.0
    sample_step: int = 4
    unchanged_quantile: float = 0.5
    fit_quantile: float = 0.9


def normalize(before: np.ndarray, after: np.ndarray, *, params: ChangeParams = ChangeParams()) -> np.ndarray:
    """Map each band of ``after`` onto the radiometry of ``before``, per tile.

    A first, robust fit matches medians and median absolute deviations, so
    what changed (up to nearly half the tile) cannot pull it; the
    ``fit_quantile`` of pixels closest to that fit (likely unchanged
    ground) then give the gain and offset by matching means and standard
    deviations.  Statistics are taken on every ``sample_step``-th pixel.

    Returns
    -------
    ndarray, shape (N, C, H, W), float32
    """
    s = params.sample_step
    b, a = before[..., ::s, ::s], after[..., ::s, ::s]
    both = np.isfinite(b).all(axis=1, keepdims=True) & np.isfinite(a).all(axis=1, keepdims=True)
    b = np.where(both, b, np.nan)
    a = np.where(both, a, np.nan)
    gain, offset, spread = _robust_fit(b, a)
    spread = spread + 1e-6
    distance = np.nanmean(np.abs(a * gain + offset - b) / spread, axis=1, keepdims=True)
    keep = distance <= tile_quantile(distance, params.fit_quantile)
    gain, offset = _moments(np.where(keep, b, np.nan), np.where(keep, a, np.nan))
    out = after * gain.astype(np.float32)
    out += offset.astype(np.float32)
    return out


def _robust_fit(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gain and offset that match medians and median absolute deviations, and the MAD of ``b``."""
    centre_b, centre_a = tile_quantile(b, 0.5), tile_quantile(a, 0.5)
    spread_b = tile_quantile(np.abs(b - centre_b), 0.5)
    spread_a = tile_quantile(np.abs(a - centre_a), 0.5)
    return (*_gain_offset(centre_b, centre_a, spread_b, spread_a), spread_b)


def _moments(b: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gain and offset that match means and standard deviations."""
    return _gain_offset(_nanmean(b), _nanmean(a), _nanstd(b), _nanstd(a))


def _gain_offset(centre_b: np.ndarray, centre_a: np.ndarray, spread_b: np.ndarray,
                 spread_a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gain = np.where(spread_a > 1e-6, spread_b / np.maximum(spread_a, 1e-6), 1.0)
    gain = np.clip(np.nan_to_num(gain, nan=1.0), 1e-3, 1e3)  # 8-bit against 16-bit is a gain of ~1/40
    offset = np.nan_to_num(centre_b - gain * centre_a, nan=0.0)
    return gain.astype(np.float32), offset.astype(np.float32)


def noise(before: np.ndarray, after: np.ndarray, *, params: ChangeParams = ChangeParams()) -> np.ndarray:
    """Per-band noise of the difference over likely-unchanged pixels.

    Returns
    -------
    ndarray, shape (N, C, 1, 1): a robust standard deviation (1.4826 * MAD of
    the pixels under the ``unchanged_quantile``), floored at 1 % of the band's
    mean level so flat tiles do not blow up.
    """
    s = params.sample_step
    diff = after[..., ::s, ::s] - before[..., ::s, ::s]
    level = np.abs(_nanmean(before[..., ::s, ::s]))
    centre = tile_quantile(diff, 0.5)
    mad = tile_quantile(np.abs(diff - centre), params.unchanged_quantile)
    sigma = np.nan_to_num(1.4826 * mad, nan=1.0)
    return np.maximum(sigma, np.maximum(0.01 * np.nan_to_num(level, nan=1.0), 1e-3)).astype(np.float32)


def magnitude(before: np.ndarray, after: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Change vector length in noise units, averaged over 3 x 3 pixels, shape (N, H, W).

    The local average of the squared length keeps blocks of change and
    suppresses single-pixel noise (compression artefacts, speckle).
    """
    squared = np.zeros(before.shape[:1] + before.shape[2:], np.float32)
    for band in range(before.shape[1]):  # band by band, in place: half the time of one expression
        z = after[:, band] - before[:, band]
        z /= sigma[:, band]
        z *= z
        squared += z
    squared /= before.shape[1]
    invalid = np.isnan(squared)
    squared[invalid] = 0.0  # a running-sum filter would smear one NaN along the whole row
    smooth = ndimage.uniform_filter(squared, (1, 3, 3))
    np.sqrt(np.maximum(smooth, 0.0, out=smooth), out=smooth)
    smooth[invalid] = np.nan
    return smooth


def brightness(x: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Mean of the visible bands (all bands if none is visible), shape (N, H, W)."""
    picks = [i for i, n in enumerate(names) if n in VISIBLE] or list(range(len(names)))
    total = x[:, picks[0]].copy()  # slice by slice: no copy of the picked bands
    for i in picks[1:]:
        total += x[:, i]
    total /= np.float32(len(picks))
    return total


def linear_energy(image: np.ndarray) -> np.ndarray:
    """Oriented (straight-edge) energy of single-band tiles, shape (N, H, W).

    The difference of the eigenvalues of the structure tensor, smoothed over 3
    pixels: large along straight edges, small on isotropic texture and noise.
    """
    finite = np.isfinite(image)
    filled = image if finite.all() else np.nan_to_num(np.where(finite, image, _nanmean(image)))
    gy, gx = np.gradient(filled, axis=(-2, -1))
    size = (1, 3, 3)
    # jxx - jyy is the mean of gx^2 - gy^2: two filters instead of three
    spread = ndimage.uniform_filter(gx * gx - gy * gy, size)
    jxy = ndimage.uniform_filter(gx * gy, size)
    spread *= spread
    jxy *= jxy
    spread += 4 * jxy
    return np.sqrt(spread, out=spread)


def index_gain(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], first: str,
               second: str) -> np.ndarray | None:
    """Increase of the normalized difference (first - second) / (first + second).

    Returns None when a band is missing.
    """
    if first not in names or second not in names:
        return None
    return _difference(after, names, first, second) - _difference(before, names, first, second)


def ndvi(x: np.ndarray, names: tuple[str, ...]) -> np.ndarray | None:
    """(nir - red) / (nir + red) of tiles (N, C, H, W), shape (N, H, W); None without both bands."""
    return _difference(x, names, "nir", "red") if "nir" in names and "red" in names else None


def _ndvi_of(x: np.ndarray, names: tuple[str, ...], given: np.ndarray | None) -> np.ndarray:
    """``given`` (the caller's NDVI of ``x``), else that of tiles that hold both bands."""
    return _difference(x, names, "nir", "red") if given is None else given


def _difference(x: np.ndarray, names: tuple[str, ...], first: str, second: str) -> np.ndarray:
    """(first - second) / (first + second) of tiles (N, C, H, W) that hold both bands, shape (N, H, W)."""
    i, j = names.index(first), names.index(second)
    return (x[:, i] - x[:, j]) / np.maximum(np.abs(x[:, i] + x[:, j]), 1e-6)


def greening(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], *,
             params: ChangeParams, light: tuple[np.ndarray, np.ndarray] | None = None,
             vegetation: np.ndarray | None = None) -> np.ndarray:
    """How much the ground turned green, 0..1 per pixel, shape (N, H, W).

    NDVI gain where a NIR band exists, counted only where the after date is
    vegetation at the pixel or next to it (its NDVI over 3 x 3 pixels, the
    largest over 3 x 3, from ``green_ndvi``, full weight ``green_ndvi_ramp``
    higher; the mixed pixels along a field's border count with the field):
    a field turning green gets there, while a cleared lot that
    became roofs, paving and young lawns gains a little NDVI without being
    vegetation (on the OSCD cities 5-37 % of the labelled change gained
    over 0.1 and lost most of its score to the ungated term).  Without NIR,
    the gain of excess green (2g - r - b) / (r + g + b), counted only where
    the visible bands did not brighten: leaves are darker than the soil they
    cover, while new white or grey roofs on red desert, less red than the
    ground and so "greener" by that index, are far brighter (full weight at
    the same brightness, none from ``exg_brighter`` brighter up).  Averaged
    over 3 x 3 pixels so that the colour noise of compressed RGB counts
    less.  ``light`` is the brightness of both dates and ``vegetation`` the
    after date's NDVI (:func:`ndvi`) when the caller has them already.
    """
    if "nir" in names and "red" in names:
        vegetation = _ndvi_of(after, names, vegetation)
        gain = _smooth(vegetation - _difference(before, names, "nir", "red"))
        near = local_max(_smooth(vegetation))
        gate = np.clip((near - params.green_ndvi) / params.green_ndvi_ramp, 0.0, 1.0)
        return np.clip(gain / params.green_gain * gate, 0.0, 1.0)
    if all(n in names for n in VISIBLE):
        light_b, light_a = light if light is not None else (brightness(before, names), brightness(after, names))
        light_b, light_a = np.maximum(np.abs(light_b), 1e-6), np.maximum(np.abs(light_a), 1e-6)
        g = names.index("green")
        # excess green (2g - r - b) / (r + g + b) is green over the visible mean, less 1
        darker = np.clip(1 - (light_a / light_b - 1) / params.exg_brighter, 0.0, 1.0)
        gain = (after[:, g] / light_a - before[:, g] / light_b) * darker
        return np.clip(_smooth(gain) / params.exg_gain, 0.0, 1.0)
    return np.zeros(before.shape[:1] + before.shape[2:], dtype=np.float32)


def _smooth(x: np.ndarray) -> np.ndarray:
    """Mean over 3 x 3 pixels of (N, H, W), nodata counted as 0."""
    return ndimage.uniform_filter(np.nan_to_num(x), (1, 3, 3))


def local_max(x: np.ndarray, reach: int = 1) -> np.ndarray:
    """Maximum within ``reach`` rows and columns of each pixel of (N, H, W) without NaN, inside the tile.

    The same values as ``ndimage.maximum_filter(x, (1, 2 * reach + 1, 2 * reach + 1))``: from shifted
    maxima, rows then columns, up to ``SHIFTED_REACH`` (a fifth of the time at ``reach`` 1); scipy's
    filter beyond, where the passes of shifted maxima would cost more.
    """
    side = 2 * reach + 1
    if reach > SHIFTED_REACH:
        return ndimage.maximum_filter(x, (1, side, side))
    rows = x.copy()
    for k in range(1, min(reach, x.shape[1] - 1) + 1):
        np.maximum(rows[:, k:], x[:, :-k], out=rows[:, k:])
        np.maximum(rows[:, :-k], x[:, k:], out=rows[:, :-k])
    out = rows.copy()
    for k in range(1, min(reach, x.shape[2] - 1) + 1):
        np.maximum(out[:, :, k:], rows[:, :, :-k], out=out[:, :, k:])
        np.maximum(out[:, :, :-k], rows[:, :, k:], out=out[:, :, :-k])
    return out


def snow_cover(x: np.ndarray, lit: np.ndarray, names: tuple[str, ...], *, params: ChangeParams) -> np.ndarray:
    """How much each pixel looks like snow, 0..1, shape (N, H, W); the bands must tell (:func:`snow_bands`).

    Snow is the brightest ground of a tile: ``lit`` (the visible mean over
    the tile's median, :func:`relative_light`) at ``snow_bright`` and more
    (full at ``snow_ramp`` above it); and it is cold, NDSI (green - swir16) / (green + swir16) over
    ``snow_ndsi`` (full 0.2 above), or, with no SWIR band, neutral or
    bluish, (blue - red) / (blue + red) over ``snow_neutral`` (full 0.06 above):
    bare desert and sand, as bright, are red; and where a NIR band tells, darker
    in it than in green ((green - nir) / (green + nir) over 0, full at 0.05),
    which bright roofs and concrete are not.
    """
    bright = np.clip((lit - params.snow_bright) / params.snow_ramp, 0.0, 1.0)
    if snow_bands(names) == "swir16":
        return bright * np.clip((_difference(x, names, "green", "swir16") - params.snow_ndsi) / 0.2, 0.0, 1.0)
    snow = bright * np.clip((_difference(x, names, "blue", "red") - params.snow_neutral) / 0.06, 0.0, 1.0)
    if "nir" in names and "green" in names:  # snow is darker in the NIR than in green; roofs and concrete are not
        snow *= np.clip(_difference(x, names, "green", "nir") / 0.05, 0.0, 1.0)
    return snow


def snow_bands(names: tuple[str, ...]) -> str | None:
    """What tells snow from other bright ground: ``swir16`` (with green), ``visible`` (blue and red) or None."""
    if "green" in names and "swir16" in names:
        return "swir16"
    return "visible" if "blue" in names and "red" in names else None


def melting(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], light: tuple[np.ndarray, np.ndarray], *,
            params: ChangeParams, reach: int) -> np.ndarray:
    """Snow of the before date gone in the after date, within ``reach`` x ``reach`` pixels, 0..1, shape (N, H, W).

    Only snow lost counts, never snow that fell: new roofs look like fresh
    snow, white ones in the visible bands and blue or white metal ones even
    by NDSI (most of what looked like snow in mumbai's after date is its
    labelled new construction), while what a melted drift uncovers is never
    a roof that was there.  Tiles whose before date has no ground as bright
    as snow are skipped.
    """
    out = np.zeros(before.shape[:1] + before.shape[2:], dtype=np.float32)
    if snow_bands(names) is None:
        return out
    lit_b = relative_light(light[0])
    pick = np.nan_to_num(lit_b.reshape(len(lit_b), -1)).max(axis=1) > params.snow_bright
    if not pick.any():
        return out
    lost = (snow_cover(before[pick], lit_b[pick], names, params=params)
            - snow_cover(after[pick], relative_light(light[1][pick]), names, params=params))
    # snow lies over ground, not in single pixels: a bright roof that went counts a ninth
    out[pick] = ndimage.maximum_filter(ndimage.uniform_filter(np.clip(np.nan_to_num(lost), 0.0, 1.0), (1, 3, 3)),
                                       (1, reach, reach))
    return out


def relative_light(light: np.ndarray) -> np.ndarray:
    """Brightness (N, H, W) over its tile's median (on every fourth pixel), shape (N, H, W)."""
    return light / np.maximum(tile_quantile(light[:, None, ::4, ::4], 0.5)[:, 0], 1e-6)


def _support(pixel_m: float, params: ChangeParams) -> int:
    """Odd window size in pixels spanning about ``support_m`` metres, at least 3."""
    return max(3, int(round(params.support_m / max(pixel_m, 1e-6))) | 1)


def construction(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], *, pixel_m: float,
                 params: ChangeParams, light: tuple[np.ndarray, np.ndarray] | None = None,
                 vegetation: np.ndarray | None = None) -> np.ndarray:
    """Evidence specific to construction, 0..1 per pixel, shape (N, H, W).

    Straight edges that appeared, or NDBI that rose where the after date is
    not vegetation (:func:`not_vegetation`), whichever is larger.  Pixels
    without data in either date take the before brightness (or the tile
    mean) in both dates, so the edge of a nodata area is never a new edge.
    ``light`` is the brightness of both dates and ``vegetation`` the after
    date's NDVI when the caller has them already.
    """
    light_b, light_a = light if light is not None else (brightness(before, names), brightness(after, names))
    invalid = ~(np.isfinite(light_b) & np.isfinite(light_a))
    if invalid.any():
        fill = np.where(np.isfinite(light_b), light_b, _nanmean(light_b))
        light_b, light_a = np.where(invalid, fill, light_b), np.where(invalid, fill, light_a)
    eb, ea = linear_energy(light_b), linear_energy(light_a)
    scale = np.mean(eb + ea, axis=(-2, -1), keepdims=True) * 0.5 + 1e-6
    support = _support(pixel_m, params)
    edges = ndimage.uniform_filter((ea - eb) / scale, (1, support, support))
    evidence = _saturate(edges, params.edge_gain)
    ndbi = index_gain(before, after, names, "swir16", "nir")
    if ndbi is not None:
        built = _saturate(ndbi, params.ndbi_gain) * not_vegetation(after, names, params=params, vegetation=vegetation)
        evidence = np.maximum(evidence, np.nan_to_num(built))
    return evidence


def not_vegetation(after: np.ndarray, names: tuple[str, ...], *, params: ChangeParams,
                   vegetation: np.ndarray | None = None) -> np.ndarray | float:
    """How surely the after date is not vegetation at each pixel, 0..1, shape (N, H, W) (1.0 without NIR or red).

    Roofs, paving and bare ground have an NDVI near 0: full under
    ``green_ndvi - green_ndvi_ramp``, none from ``green_ndvi`` (where
    :func:`greening` starts to count vegetation).  NDBI also rises where
    crops ripen, dry or are thinned and the ground stays green (on the OSCD
    cities the false change among pixels that lost NDVI kept an NDVI of
    0.10-0.30 in the after date, the labelled construction 0.0-0.2).
    """
    if "nir" not in names or "red" not in names:
        return 1.0
    vegetation = _ndvi_of(after, names, vegetation)
    return np.clip((params.green_ndvi - vegetation) / params.green_ndvi_ramp, 0.0, 1.0)


def change_score(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], *, pixel_m: float,
                 params: ChangeParams = ChangeParams(),
                 light: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Per-pixel construction change score in [0, 1].

    Parameters
    ----------
    before, after : ndarray, shape (N, C, H, W), float32, NaN = nodata;
        ``after`` already normalized and registered to ``before``.
    names : canonical band names of the C bands.
    pixel_m : pixel size in metres (spatial scale of the edge support).
    light : brightness of both dates, shape (N, H, W) each, if already computed.

    Returns
    -------
    ndarray, shape (N, H, W), float32, NaN where either date has no data.
    """
    sigma = noise(before, after, params=params)
    m = magnitude(before, after, sigma)
    light = light if light is not None else (brightness(before, names), brightness(after, names))
    vegetation = ndvi(after, names)  # the after date's, for both the greening and the NDBI gate
    green = greening(before, after, names, params=params, light=light, vegetation=vegetation)
    built = (construction(before, after, names, pixel_m=pixel_m, params=params, light=light, vegetation=vegetation)
             * (1 - local_max(green)))
    strength = _saturate(m - params.m_low, params.m_scale_plain - (params.m_scale_plain - params.m_scale) * built)
    # the edges a drift's rim leaves reach as far as the edge evidence
    near_snow = melting(before, after, names, light, params=params, reach=_support(pixel_m, params))
    score = strength * (1 - green) * (1 - near_snow) * (params.floor + (1 - params.floor) * built)
    return score.astype(np.float32)


def _saturate(x: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    """0 for x <= 0, rising to 1 as ``1 - exp(-x / scale)``: no ties at the top, so ranks survive.  ``scale``
    broadcasts against ``x`` (one per pixel, or one for all)."""
    return -np.expm1(-np.maximum(x, 0.0) / scale)


def _likely_unchanged(before: np.ndarray, after: np.ndarray, *, quantile: float) -> np.ndarray:
    """Pixels whose locally averaged difference is under the tile's ``quantile``.

    Registration on these ignores what was built, so a new compound cannot
    pull the estimate.  The signed difference is averaged over 9 x 9 pixels
    before taking its size: a shift leaves opposite lobes on either side of
    an edge that cancel, so the edges that carry the shift are kept.
    Shape (N, H, W), bool.
    """
    diff = np.abs(ndimage.uniform_filter(np.nan_to_num(after - before), (1, 9, 9)))
    return diff <= tile_quantile(diff[..., ::4, ::4], quantile)[..., 0, 0, None, None]


def _nanmean(x: np.ndarray) -> np.ndarray:
    return np.nanmean(x, axis=(-2, -1), keepdims=True)


def _nanstd(x: np.ndarray) -> np.ndarray:
    return np.nanstd(x, axis=(-2, -1), keepdims=True)


def tile_quantile(x: np.ndarray, q: float) -> np.ndarray:
    """``np.nanquantile`` over the last two axes (linear interpolation), keepdims; NaN where all are NaN.

    One sort of all rows at once (NaN sort last) instead of numpy's loop over rows: a quarter of the
    classical score's time on 2 cores (``scripts/bench.py``).
    """
    flat = np.sort(x.reshape((*x.shape[:-2], -1)), axis=-1)
    count = np.isfinite(flat).sum(axis=-1)
    position = q * np.maximum(count - 1, 0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(count - 1, 0))
    below = np.take_along_axis(flat, low[..., None], axis=-1)[..., 0]
    above = np.take_along_axis(flat, high[..., None], axis=-1)[..., 0]
    value = below + (above - below) * (position - low)
    return np.where(count > 0, value, np.nan).astype(x.dtype, copy=False)[..., None, None]


@dataclass(frozen=True, slots=True)
class TileScores:
    """What :func:`score_tiles` finds for a batch of N tiles."""

    score: np.ndarray  # (N, H, W) float32 in [0, 1], NaN = nodata
    shift: np.ndarray  # (N, 2) (dy, dx) estimated misregistration in pixels
    peak: np.ndarray  # (N,) correlation peak over the surface's mean absolute value
    applied: np.ndarray  # (N,) bool: the shift was corrected
    after: np.ndarray  # (N, C, H, W) the after tiles, normalized to before and registered


def score_tiles(before: np.ndarray, after: np.ndarray, names: tuple[str, ...], *, pixel_m: float,
                max_shift_px: float, min_peak: float, params: ChangeParams = ChangeParams()) -> TileScores:
    """Normalize, register and score a batch of tile pairs.

    The after tiles are normalized to the before tiles, their residual shift
    is estimated on brightness and corrected where it is under
    ``max_shift_px`` and the correlation peak is at least ``min_peak``; then
    :func:`change_score` runs on the corrected pair.

    Parameters
    ----------
    before, after : ndarray, shape (N, C, H, W), float32, NaN = nodata
    """
    after = normalize(before, after, params=params)
    light_b, light_a = brightness(before, names), brightness(after, names)
    middle_b, middle_a = registration.centre(light_b), registration.centre(light_a)
    steady = _likely_unchanged(middle_b, middle_a, quantile=0.7)
    shift, peak = registration.estimate_shift(np.where(steady, middle_b, np.nan), np.where(steady, middle_a, np.nan))
    size = np.hypot(shift[:, 0], shift[:, 1])
    applied = (size <= max_shift_px) & (peak >= min_peak) & (size >= 0.25)
    if applied.any():
        after[applied] = registration.apply_shift(after[applied], shift[applied])
        light_a[applied] = brightness(after[applied], names)
    score = change_score(before, after, names, pixel_m=pixel_m, params=params, light=(light_b, light_a))
    return TileScores(score, shift, peak, applied, after)
