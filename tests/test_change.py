"""Change evidence kernels on small hand-made batches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.change import ChangeParams, change_score, construction, greening, melting, normalize, score_tiles

NAMES = ("blue", "green", "red", "nir")


def bare_ground(n: int = 2, size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    levels = np.array([800.0, 900.0, 1000.0, 1300.0])[None, :, None, None]
    return (levels + rng.normal(scale=20, size=(n, 4, size, size))).astype(np.float32)


def with_compound(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    for r in range(30, 66, 8):
        out[:, :, r:r + 5, 30:66] = 3000.0
    return out


def with_green_field(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    out[:, 2, 30:66, 30:66] *= 0.5
    out[:, 3, 30:66, 30:66] *= 2.2
    return out


def test_new_roofs_score_high_and_quiet_ground_low() -> None:
    before = bare_ground()
    after = with_compound(bare_ground(seed=1))
    score = change_score(before, after, NAMES, pixel_m=10.0)
    assert score.shape == (2, 96, 96) and score.dtype == np.float32
    assert np.nanquantile(score[:, 30:66, 30:66], 0.9) > 0.7
    assert np.nanquantile(score[:, :20, :20], 0.9) < 0.1
    assert np.nanmin(score) >= 0.0 and np.nanmax(score) <= 1.0


def test_change_without_construction_evidence_counts_only_far_out_of_the_noise() -> None:
    """A patch that brightened evenly in every band (no structure of its own, no SWIR): by 3 noise units it is not
    a change, by 8 it is (``floor`` 0.7 of a magnitude scored on ``m_scale_plain``); the same brightening as roofs
    with walls between them is a change at 3 units already (on this rule and the one before: a guard)."""
    before = bare_ground()
    after = bare_ground(seed=1)
    noise_units = np.float32(20 * np.sqrt(2))  # each date's pixel noise is 20
    after[0, :, 30:66, 30:66] += 3 * noise_units
    after[1, :, 30:66, 30:66] += 8 * noise_units
    plain = change_score(before, after, NAMES, pixel_m=10.0)[:, 42:54, 42:54]
    assert np.median(plain[0]) < 0.4 and np.median(plain[1]) > 0.6  # the rule before: about 0.52
    walls = bare_ground(seed=1)
    for r in range(30, 66, 8):
        walls[:, :, r:r + 4, 30:66] += 3 * noise_units
    built = change_score(before, walls, NAMES, pixel_m=10.0)
    assert np.quantile(built[:, 30:66, 30:66], 0.9) > 0.5


def test_a_field_turning_green_does_not_score_like_a_compound() -> None:
    before = bare_ground()
    compound = change_score(before, with_compound(bare_ground(seed=1)), NAMES, pixel_m=10.0)
    field = change_score(before, with_green_field(bare_ground(seed=1)), NAMES, pixel_m=10.0)
    assert np.nanquantile(field[:, 30:66, 30:66], 0.9) < 0.2 < np.nanquantile(compound[:, 30:66, 30:66], 0.9)
    green = greening(before, with_green_field(before), NAMES, params=ChangeParams())
    assert green[:, 40:56, 40:56].min() > 0.9


def test_a_lot_that_gained_a_little_ndvi_without_becoming_vegetation_is_not_greening() -> None:
    """Bare ground (NDVI 0.13) that became roofs, paving and young lawns (NDVI 0.25) gained NDVI but is not
    vegetation, so none of it is greening; the same kind of gain up to a field's NDVI (0.53) is."""
    before = bare_ground()
    lot = before.copy()
    lot[:, 2, 30:66, 30:66] *= 0.9
    lot[:, 3, 30:66, 30:66] *= 1.15
    assert greening(before, lot, NAMES, params=ChangeParams())[:, 31:65, 31:65].max() == 0.0
    field = before.copy()
    field[:, 2, 30:66, 30:66] *= 0.6
    field[:, 3, 30:66, 30:66] *= 1.5
    assert greening(before, field, NAMES, params=ChangeParams())[:, 31:65, 31:65].min() > 0.9


def test_a_crop_that_dried_is_not_construction_evidence_while_new_roofs_on_the_field_are() -> None:
    """NDBI rises as much where a crop dries and stays green (NDVI 0.71 -> 0.41) as where the field became
    roofs (NDVI 0.06): only the second is evidence of construction."""
    six = ("blue", "green", "red", "nir", "swir16", "swir22")
    rng = np.random.default_rng(0)

    def field(levels: tuple[float, ...]) -> np.ndarray:
        return (np.array(levels)[None, :, None, None] + rng.normal(scale=10, size=(2, 6, 96, 96))).astype(np.float32)

    before = field((400, 600, 400, 2400, 1600, 900))
    dried, roofs = before.copy(), before.copy()
    dried[:, :, 30:66, 30:66] = field((450, 650, 800, 1900, 2200, 1200))[:, :, 30:66, 30:66]
    roofs[:, :, 30:66, 30:66] = field((1400, 1450, 1500, 1700, 2000, 1600))[:, :, 30:66, 30:66]
    params = ChangeParams()
    edges_only = construction(before[:, :4], dried[:, :4], six[:4], pixel_m=10.0, params=params)  # no SWIR, no NDBI
    np.testing.assert_array_equal(construction(before, dried, six, pixel_m=10.0, params=params), edges_only)
    assert construction(before, roofs, six, pixel_m=10.0, params=params)[:, 42:54, 42:54].min() > 0.8


def test_white_roofs_on_red_desert_are_not_a_field_turning_green_in_rgb() -> None:
    """Excess green rises when red ground turns white (it is less red), but white roofs are far brighter than
    the ground and leaves darker: the roofs must not count as greening."""
    rgb = ("red", "green", "blue")
    desert = bare_ground()[:, [3, 1, 0]]  # red 1300 > green 900 > blue 800
    roofs = with_compound(bare_ground(seed=1)[:, [3, 1, 0]])
    assert greening(desert, roofs, rgb, params=ChangeParams())[:, 31:34, 31:65].max() < 0.05  # inside a roof
    assert np.nanquantile(change_score(desert, roofs, rgb, pixel_m=10.0)[:, 30:66, 30:66], 0.9) > 0.7
    field = bare_ground(seed=1)[:, [3, 1, 0]]
    field[:, 0, 30:66, 30:66] *= 0.5
    field[:, 1, 30:66, 30:66] *= 1.4
    assert greening(desert, field, rgb, params=ChangeParams())[:, 40:56, 40:56].min() > 0.9


def with_snow_drifts(x: np.ndarray, names: tuple[str, ...] = NAMES) -> np.ndarray:
    """Bright, slightly blue drifts, darker in the NIR and far darker in swir16, over a block of the tile."""
    out = x.copy()
    level = {"blue": 3100.0, "green": 3050.0, "red": 3000.0, "nir": 2500.0, "swir16": 400.0}
    for r in range(30, 66, 9):  # streaks, as snow lies in gullies: long straight edges
        for k, name in enumerate(names):
            out[:, k, r:r + 4, 30:66] = level[name]
    return out


def test_snow_that_melted_does_not_score_like_a_compound() -> None:
    before = bare_ground()
    melted = change_score(with_snow_drifts(before), bare_ground(seed=1), NAMES, pixel_m=10.0)
    compound = change_score(before, with_compound(bare_ground(seed=1)), NAMES, pixel_m=10.0)
    assert np.nanquantile(melted[:, 26:70, 26:70], 0.99) < 0.1
    assert np.nanquantile(compound[:, 30:66, 30:66], 0.9) > 0.7


def test_new_roofs_are_not_taken_for_snow_and_snow_that_melted_is_with_swir_too() -> None:
    before = bare_ground()
    roofs = with_compound(bare_ground(seed=1))  # 3000 in every band: as bright and neutral as snow
    light = tuple(x[:, :3].mean(axis=1) for x in (before, roofs))
    assert melting(before, roofs, NAMES, light, params=ChangeParams(), reach=1).max() == 0.0
    # nor, where a NIR band tells, white roofs (or a concrete pad) that went: as bright in the NIR as in green
    assert melting(roofs, before, NAMES, light[::-1], params=ChangeParams(), reach=1).max() == 0.0
    swir = (*NAMES, "swir16")
    dry = np.concatenate([bare_ground(), np.full((2, 1, 96, 96), 1500.0, np.float32)], axis=1)
    snowy = with_snow_drifts(dry, swir)
    light = tuple(x[:, :3].mean(axis=1) for x in (snowy, dry))
    assert melting(snowy, dry, swir, light, params=ChangeParams(), reach=1)[:, 31:33, 31:65].min() > 0.9
    # blue metal roofs are as cold as snow by NDSI (mumbai's new ones): snow that fell never counts
    assert melting(dry, snowy, swir, light[::-1], params=ChangeParams(), reach=1).max() == 0.0
    assert np.nanquantile(change_score(dry, snowy, swir, pixel_m=10.0)[:, 30:66, 30:66], 0.9) > 0.5


def test_nodata_flows_through_as_nan_without_spreading() -> None:
    before = bare_ground()
    after = with_compound(bare_ground(seed=1))
    after[0, :, :10, :] = np.nan
    score = change_score(before, after, NAMES, pixel_m=10.0)
    assert np.isnan(score[0, :10]).all()
    assert np.isfinite(score[0, 12:]).all() and np.isfinite(score[1]).all()


def test_normalization_removes_gain_and_offset_between_dates() -> None:
    before = bare_ground()
    after = with_compound(before * 1.7 + 250)
    normalized = normalize(before, after)
    assert np.allclose(normalized[:, :, :25, :25], before[:, :, :25, :25], rtol=0.02)


def test_score_tiles_corrects_a_small_shift_and_reports_it() -> None:
    rng = np.random.default_rng(4)
    from scipy import ndimage
    texture = ndimage.gaussian_filter(rng.normal(size=(1, 1, 128, 128)), (0, 0, 2, 2)) * 3000 + 2000
    before = np.repeat(texture, 4, axis=1).astype(np.float32)
    after = ndimage.shift(before, (0, 0, 2.0, -1.0), order=1, mode="nearest")
    tiles = score_tiles(before, after, NAMES, pixel_m=10.0, max_shift_px=8.0, min_peak=8.0)
    assert tiles.applied[0]
    assert np.allclose(tiles.shift[0], (2.0, -1.0), atol=0.3)
    assert np.nanquantile(tiles.score, 0.99) < 0.5  # a shifted texture is not construction


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.floats(0, 1), st.floats(0, 0.9), st.integers(0, 99))
def test_the_vectorized_tile_quantile_is_numpys(rows: int, h: int, w: int, q: float, holes: float, seed: int) -> None:
    import warnings

    from detector.change import tile_quantile

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2, h, w)).astype(np.float32)
    x[rng.random(x.shape) < holes] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanquantile(x.reshape(rows, 2, -1), q, axis=-1)[..., None, None]
    assert np.allclose(tile_quantile(x, q), expected, equal_nan=True, atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 9), st.integers(1, 9), st.integers(0, 6), st.integers(0, 99))
def test_the_shifted_maximum_is_scipys_maximum_filter(n: int, h: int, w: int, reach: int, seed: int) -> None:
    from scipy import ndimage

    from detector.change import local_max

    x = np.random.default_rng(seed).normal(size=(n, h, w)).astype(np.float32)
    side = 2 * reach + 1
    assert np.array_equal(local_max(x, reach), ndimage.maximum_filter(x, (1, side, side)))
