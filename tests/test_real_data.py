"""End to end on real imagery: the bundled Dabancheng sample and the OSCD cities.

The OSCD cities live in ``../shared/data`` (not redistributable); those tests
skip when it is absent.  The Dabancheng sample ships in the package.
"""

from __future__ import annotations

import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import SAMPLE, SHARED
from rasterio import features

from detector.cli import main

# The new compound's walled block, read off registered/2018-10-11.tif by eye (lon/lat).
COMPOUND = shapely.box(88.27883, 43.38092, 88.30632, 43.38619)
DABANCHENG = SHARED / "dabancheng-sentinel2"
SAMPLE_ARGS = ["--before", str(SAMPLE / "2017-03-02.tif"), "--after", str(SAMPLE / "2018-10-11.tif")]


@pytest.fixture(scope="module")
def dabancheng_sites(tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    out = tmp_path_factory.mktemp("dabancheng")
    assert main(["-q", "run", "--sites", str(SAMPLE / "sites.geojson"), *SAMPLE_ARGS, "--out", str(out)]) == 0
    return gpd.read_file(out / "sites.geojson")


def test_facility_1_is_flagged_and_ranked_first(dabancheng_sites: gpd.GeoDataFrame) -> None:
    first = dabancheng_sites.sort_values("rank").iloc[0]
    assert first["Name_Code"] == "Dabancheng Facility #1"
    assert bool(first["flagged"]) and first["status"] == "ok"


def test_facility_2_still_bare_is_not_flagged(dabancheng_sites: gpd.GeoDataFrame) -> None:
    second = dabancheng_sites.set_index("Name_Code").loc["Dabancheng Facility #2"]
    assert not bool(second["flagged"]) and second["rank"] == 2


def compound_cells(out: Path) -> gpd.GeoDataFrame:
    cells = gpd.read_file(out / "sites.geojson")
    utm = cells.estimate_utm_crs()
    compound = gpd.GeoSeries([COMPOUND], crs=4326).to_crs(utm).iloc[0]
    metric = cells.to_crs(utm).geometry
    cells["inside"] = (metric.intersection(compound).area / metric.area).to_numpy()
    return cells


def test_classical_cells_over_the_new_compound_rank_above_the_rest(tmp_path: Path) -> None:
    assert main(["-q", "run", *SAMPLE_ARGS, "--out", str(tmp_path), "--method", "classical"]) == 0
    cells = compound_cells(tmp_path)
    over = cells.loc[cells["inside"] >= 0.5, "rank"]
    away = cells.loc[cells["inside"] == 0, "rank"]
    assert len(over) >= 3 and len(away) >= 20
    assert over.max() < away.min()


def test_fused_cells_flag_the_new_compound_and_little_else(tmp_path: Path) -> None:
    """The compound's cells first and most of the flags.  The ten-city weights also flag three cells away
    from it (a gravel road paved between the dates, and a row of buildings beside it: change, not a
    facility; the seven-city weights flagged one): the model card says so."""
    assert main(["-q", "run", *SAMPLE_ARGS, "--out", str(tmp_path)]) == 0  # the default method
    cells = compound_cells(tmp_path).sort_values("rank")
    assert (cells["method"] == "fused").all()
    assert (cells["inside"].iloc[:3] >= 0.4).all()
    flagged = cells[cells["flagged"]]
    assert (flagged["inside"] >= 0.4).sum() >= 6 and (flagged["inside"] == 0).sum() <= 3


OSCD = SHARED / "oscd-dev"
CITIES = sorted(p.name for p in OSCD.iterdir() if (p / "cm").is_dir()) if OSCD.is_dir() else []


@pytest.mark.real_data
@pytest.mark.skipif(not CITIES, reason="../shared/data/oscd-dev is not beside the checkout")
@pytest.mark.parametrize("city", CITIES)
def test_oscd_city_change_raster_beats_chance(city: str, tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_oscd import city_ap

    result = city_ap(OSCD / city, tmp_path / city, method="classical")
    print(f"{city}: AP {result['ap']:.3f}, chance {result['chance']:.3f}")
    assert result["analysed"] > 0.95
    assert result["ap"] > 2.5 * result["chance"]


FOLD_MODEL = Path(__file__).with_name("data") / "fold4of5.pt"  # scripts/eval_oscd.py --folds 5, fold 4


@pytest.mark.real_data
@pytest.mark.skipif(not CITIES, reason="../shared/data/oscd-dev is not beside the checkout")
def test_the_fusion_beats_the_classical_score_on_cities_its_model_never_saw(tmp_path: Path) -> None:
    """Fold 4's model (trained by the shipped recipe on the eight other cities) on both its left-out cities,
    run as users run: above classical on both, by far on one (measured: F1 0.458 against 0.448 and AP 0.395
    against 0.370 on cupertino; F1 0.253 against 0.165 on saclay_e)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_oscd import city_ap

    from detector import weights

    card = weights.load(FOLD_MODEL).card
    margins = []
    for city in ("cupertino", "saclay_e"):
        assert city in card["held_out"]["cities"] and city not in card["trained_on"]
        found = {m: city_ap(OSCD / city, tmp_path / city / m, method=m, model=FOLD_MODEL)
                 for m in ("classical", "fused")}
        print(city, {m: (round(r["f1"], 3), round(r["ap"], 3)) for m, r in found.items()})
        assert found["fused"]["rule"] == "fused"
        assert found["fused"]["f1"] > found["classical"]["f1"] and found["fused"]["ap"] > found["classical"]["ap"]
        margins.append(min(found["fused"][k] / found["classical"][k] for k in ("f1", "ap")))
    assert max(margins) > 1.3


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not (DABANCHENG / "registered").is_dir(), reason="../shared/data/dabancheng-sentinel2 is absent")
def test_the_camp_on_every_real_pair_facility_1_flagged_and_facility_2_not(tmp_path: Path) -> None:
    """The four 2017 frames against the seven 2018 frames: 28 real pairs, every default."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_dabancheng import pairs, run_pair

    wrong = []
    for before, after, after_date in pairs(DABANCHENG)[:-1]:
        row = run_pair(before, after, after_date, tmp_path / f"{before.stem}_{after.stem}", "fused")
        if row["flagged"] != [True, False]:
            wrong.append((before.stem, after.stem, row["scores"], row["rule"]))
    assert not wrong, wrong


@pytest.mark.real_data
@pytest.mark.skipif(not (DABANCHENG / "2020-06-02_L2A").is_dir(), reason="../shared/data/dabancheng-sentinel2 absent")
@pytest.mark.parametrize("method", ["classical", "fused"])
def test_facility_2_built_by_2020_is_flagged_from_a_2017_frame_against_l2a_bands(method: str, tmp_path: Path) -> None:
    """Another product, grid and radiometry; #2's new white roofs on red desert are less red than the ground
    they cover, which the RGB greening term once took for a field turning green (#2 scored 0.47)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from eval_dabancheng import pairs, run_pair

    row = run_pair(*pairs(DABANCHENG)[-1], tmp_path, method)
    assert row["flagged"] == [True, True], row


def snowy_before(cells: gpd.GeoDataFrame, before: Path) -> np.ndarray:
    """Share of each cell that is bright in the before frame (the drifts of 2017-03-02 are its brightest ground)."""
    with rasterio.open(before) as src:
        light = src.read().astype(np.float32).mean(axis=0)
        windows = [features.geometry_window(src, [g]) for g in cells.to_crs(src.crs).geometry]
    return np.array([(light[w.toslices()] > 170).mean() for w in windows])


@pytest.mark.real_data
@pytest.mark.skipif(not (DABANCHENG / "registered").is_dir(), reason="../shared/data/dabancheng-sentinel2 is absent")
@pytest.mark.parametrize("method", ["classical", "fused"])
def test_snow_that_melted_is_not_taken_for_construction(method: str, tmp_path: Path) -> None:
    """The whole March 2017 frame, snow in its north-east gullies, against October 2018, in cell mode: before
    the snow rule the snowy cells took ranks 1 and 8-12 of the fused flags (the compound's ranks 2-7)."""
    before = DABANCHENG / "registered" / "2017-03-02.tif"
    args = ["--before", str(before), "--after", str(DABANCHENG / "registered" / "2018-10-11.tif")]
    assert main(["-q", "run", *args, "--out", str(tmp_path), "--method", method]) == 0
    cells = compound_cells(tmp_path).sort_values("rank")
    cells["snowy"] = snowy_before(cells, before) > 0.03
    assert cells["snowy"].sum() >= 4 and not cells.loc[cells["flagged"], "snowy"].any()
    assert (cells["inside"].iloc[:6] >= 0.3).sum() >= 5


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.skipif(not CITIES, reason="../shared/data/oscd-dev is not beside the checkout")
def test_no_stray_georeferencing_warning_whatever_the_thread_timing(tmp_path: Path) -> None:
    """Seen in 2 of 3 runs before: rasterio's own in-memory rasters warned, or not, by thread timing."""
    import subprocess

    city = OSCD / "pisa"
    for k in range(3):
        proc = subprocess.run([sys.executable, "-m", "detector", "run", "--before", str(city / "imgs_1"),
                               "--after", str(city / "imgs_2"), "--out", str(tmp_path / str(k)), "--method",
                               "classical"], capture_output=True, text=True)
        assert proc.returncode == 0 and "NotGeoreferencedWarning" not in proc.stderr
