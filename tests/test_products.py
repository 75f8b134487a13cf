"""Whole products as downloaded: Sentinel-2 SAFE folders and zips (JPEG 2000), Landsat Collection 2 Level-2
folders, written the way the real ones are laid out."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import ORIGIN, PIXEL, QUIET, SIZE, UTM, ground, plant, site_collection
from rasterio.transform import from_origin
from rasterio.windows import Window

from detector.cli import main
from detector.imagery import DateReader, open_date, reference_grid

S2_10M = {"B02": 0, "B03": 1, "B04": 2, "B08": 3}  # band id: row of the generated (blue, green, red, nir)
L1C = "S2A_MSIL1C_20170602T050701_N0205_R019_T45TUJ_20170602T051407.SAFE"
L2A = "S2B_MSIL2A_20230607T050659_N0509_R019_T45TUJ_20230607T080000.SAFE"


def run_cli(*args: str | Path) -> int:
    return main([str(a) for a in args])


def write(path: Path, band: np.ndarray, *, driver: str = "GTiff", pixel: float = PIXEL, dtype: str = "uint16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"QUALITY": 100, "REVERSIBLE": "YES"} if driver == "JP2OpenJPEG" else {"compress": "deflate"}
    with rasterio.open(path, "w", driver=driver, width=band.shape[1], height=band.shape[0], count=1, dtype=dtype,
                       crs=UTM, transform=from_origin(*ORIGIN, pixel, pixel), **extra) as dst:
        dst.write(band[None].astype(dtype))


def metadata(level: str, offset: int | None) -> str:
    """The parts of a real ``MTD_MSIL1C.xml`` / ``MTD_MSIL2A.xml`` that the reader uses."""
    tag = "BOA_ADD_OFFSET" if level == "L2A" else "RADIO_ADD_OFFSET"
    quant = "BOA_QUANTIFICATION_VALUE" if level == "L2A" else "QUANTIFICATION_VALUE"
    offsets = "" if offset is None else (
        f"<{tag}_VALUES_LIST>" + "".join(f'<{tag} band_id="{i}">{offset}</{tag}>' for i in range(13))
        + f"</{tag}_VALUES_LIST>")
    baseline = "05.09" if offset else "02.05"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<n1:Level-{level[1:]}_User_Product '
            f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level[1:]}.xsd">'
            f"<n1:General_Info><Product_Info><PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>"
            f"<PROCESSING_LEVEL>Level-{level[1:]}</PROCESSING_LEVEL></Product_Info>"
            f"<Product_Image_Characteristics><{quant} unit=\"none\">10000</{quant}>{offsets}"
            f"</Product_Image_Characteristics></n1:General_Info></n1:Level-{level[1:]}_User_Product>")


def write_safe(root: Path, name: str, image: np.ndarray, *, offset: int | None,
               scl: np.ndarray | None = None) -> Path:
    """A SAFE product: JPEG 2000 bands under GRANULE/*/IMG_DATA (L2A: R10m and R20m), its metadata XML."""
    level = "L2A" if "MSIL2A" in name else "L1C"
    safe = root / name
    stamp = name.split("_")[2]
    granule = safe / "GRANULE" / f"{level}_T45TUJ_A010000_{stamp}" / "IMG_DATA"
    dn = image + (-(offset or 0))  # stored DN = reflectance * 10000 - offset
    swir = {"B11": dn[2] * 1.1, "B12": dn[2] * 0.9}
    if level == "L2A":
        for band, row in S2_10M.items():
            write(granule / "R10m" / f"T45TUJ_{stamp}_{band}_10m.jp2", dn[row], driver="JP2OpenJPEG")
            write(granule / "R20m" / f"T45TUJ_{stamp}_{band}_20m.jp2", dn[row][::2, ::2], driver="JP2OpenJPEG",
                  pixel=2 * PIXEL)
        for band, values in swir.items():
            write(granule / "R20m" / f"T45TUJ_{stamp}_{band}_20m.jp2", values[::2, ::2], driver="JP2OpenJPEG",
                  pixel=2 * PIXEL)
        mask = np.full((SIZE, SIZE), 4) if scl is None else scl
        write(granule / "R20m" / f"T45TUJ_{stamp}_SCL_20m.jp2", mask[::2, ::2], driver="JP2OpenJPEG",
              pixel=2 * PIXEL, dtype="uint8")
        write(granule / "R10m" / f"T45TUJ_{stamp}_TCI_10m.jp2", dn[0] // 40, driver="JP2OpenJPEG", dtype="uint8")
    else:
        for band, row in S2_10M.items():
            write(granule / f"T45TUJ_{stamp}_{band}.jp2", dn[row], driver="JP2OpenJPEG")
        for band, values in swir.items():
            write(granule / f"T45TUJ_{stamp}_{band}.jp2", values[::2, ::2], driver="JP2OpenJPEG", pixel=2 * PIXEL)
    (safe / f"MTD_MSI{level}.xml").write_text(metadata(level, offset), encoding="utf-8")
    return safe


def zipped(safe: Path) -> Path:
    target = safe.with_suffix(".zip")
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for file in sorted(safe.rglob("*")):
            archive.write(file, file.relative_to(safe.parent).as_posix())
    shutil.rmtree(safe)
    return target


@pytest.fixture(scope="module")
def reflectance() -> tuple[np.ndarray, np.ndarray]:
    """Before and after reflectance x 10000 of the generated ground (the after with the compound)."""
    rng = np.random.default_rng(5)
    before = ground(rng)
    return before, plant(before) + rng.normal(scale=25, size=before.shape)


@pytest.fixture(scope="module")
def products(reflectance: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("safe")
    (root / "sites.geojson").write_text(json.dumps(site_collection()), encoding="utf-8")
    return {"before": write_safe(root, L1C, reflectance[0], offset=None),
            "after": zipped(write_safe(root, L2A, reflectance[1], offset=-1000)), "sites": root / "sites.geojson"}


def test_a_safe_product_is_one_date_with_each_band_at_its_finest_and_its_offset(
        products: dict, reflectance: tuple[np.ndarray, np.ndarray]) -> None:
    after = open_date(products["after"])
    assert after.date == "2023-06-07" and after.product["tile"] == "45TUJ" and after.product["level"] == "L2A"
    assert after.product["baseline"] == "05.09"
    by_name = {b.name: b for b in after.bands}
    assert "_10m.jp2" in str(by_name["blue"].path) and "_20m.jp2" in str(by_name["swir16"].path)
    assert by_name["red"].offset == -1000 and after.mask is not None and after.mask.name == "scl"
    assert str(by_name["red"].path).startswith("/vsizip/")
    before = open_date(products["before"])
    assert before.date == "2017-06-02" and all(b.offset == 0 for b in before.bands) and before.mask is None
    names = ("blue", "green", "red", "nir")
    grid = reference_grid(before, names)
    window = Window(0, 0, SIZE, SIZE)
    with DateReader(after, names, grid) as reader:
        read = reader.read(window)
    quiet = (slice(QUIET[0] - 10, QUIET[0] + 10), slice(QUIET[1] - 10, QUIET[1] + 10))
    # the -1000 of baseline 04.00+ undone: the after date reads as the reflectance it stores
    expected = np.clip(reflectance[1][:, quiet[0], quiet[1]], 1, 65000).astype("uint16")
    assert np.allclose(read[:, quiet[0], quiet[1]], expected, atol=1)


def test_a_2017_l1c_against_a_2023_l2a_zip_finds_the_compound_and_nothing_else(products: dict,
                                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--sites", products["sites"], "--before", products["before"], "--after",
                   products["after"], "--out", out, "--buffer-m", "250") == 0
    found = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert bool(found.loc["compound", "flagged"]) and not found.loc[["quiet", "green field"], "flagged"].any()
    record = json.loads((out / "run.json").read_text())
    after = record["inputs"]["after"]
    assert after["product"]["tile"] == "45TUJ" and after["mask"]["kind"] == "scl"
    assert [f["path"] for f in after["files"]] == [str(products["after"].resolve())]
    assert {b["name"]: b.get("offset") for b in after["bands"]}["red"] == -1000


def test_bands_cannot_rename_a_product(products: dict, tmp_path: Path, capsys) -> None:
    assert run_cli("-q", "run", "--before", products["before"], "--after", products["after"], "--out",
                   tmp_path / "out", "--bands", "planet-4") == 2
    assert "--bands names the bands of one multi-band file" in capsys.readouterr().err


def landsat_folder(root: Path, product: str, image: np.ndarray, *, cloud: np.ndarray | None = None) -> Path:
    """A Landsat C2 L2 folder: SR bands as DN = (reflectance + 0.2) / 2.75e-05, QA_PIXEL, an MTL beside."""
    folder = root / product
    oli = product.startswith("LC08")
    rows = {"B2": 0, "B3": 1, "B4": 2, "B5": 3} if oli else {"B1": 0, "B2": 1, "B3": 2, "B4": 3}
    swir = ("B6", "B7") if oli else ("B5", "B7")
    reflect = image / 10000
    for band, row in rows.items():
        write(folder / f"{product}_SR_{band}.TIF", (reflect[row] + 0.2) / 2.75e-05)
    for band, factor in zip(swir, (1.1, 0.9), strict=True):
        write(folder / f"{product}_SR_{band}.TIF", (reflect[2] * factor + 0.2) / 2.75e-05)
    qa = np.full((SIZE, SIZE), 21824)  # clear, low confidence of anything
    if cloud is not None:
        qa[cloud] = 21824 | (1 << 3) | (1 << 1)
    write(folder / f"{product}_QA_PIXEL.TIF", qa)
    write(folder / f"{product}_QA_RADSAT.TIF", np.zeros((SIZE, SIZE)))
    write(folder / f"{product}_ST_B10.TIF" if oli else folder / f"{product}_ST_B6.TIF", np.full((SIZE, SIZE), 40000))
    (folder / f"{product}_MTL.txt").write_text("GROUP = LANDSAT_METADATA_FILE\nEND_GROUP = LANDSAT_METADATA_FILE\n")
    return folder


def test_landsat_c2_l2_folders_of_tm_and_oli_with_qa_pixel_clouds(reflectance: tuple[np.ndarray, np.ndarray],
                                                                  tmp_path: Path) -> None:
    rows, cols = np.mgrid[:SIZE, :SIZE]
    cloud = np.hypot(rows - QUIET[0], cols - QUIET[1]) < 30
    after = reflectance[1].copy()
    after[:, cloud] = 9000
    before = landsat_folder(tmp_path, "LT05_L2SP_143030_20090701_20200827_02_T1", reflectance[0])
    after_folder = landsat_folder(tmp_path, "LC08_L2SP_143030_20190705_20200827_02_T1", after, cloud=cloud)
    source = open_date(after_folder)
    assert source.date == "2019-07-05" and source.mask is not None and source.mask.name == "qa_pixel"
    assert {b.name for b in source.bands} == {"blue", "green", "red", "nir", "swir16", "swir22", "qa_pixel"}
    assert all(abs(b.offset + 7272.73) < 0.01 for b in source.bands if b.name != "qa_pixel")
    sites = tmp_path / "sites.geojson"
    sites.write_text(json.dumps(site_collection()), encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli("-q", "run", "--sites", sites, "--before", before, "--after", after_folder, "--out", out,
                   "--buffer-m", "250") == 0
    found = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert bool(found.loc["compound", "flagged"])
    assert found.loc["quiet", "status"] == "cloudy" and not found.loc["quiet", "flagged"]


def test_a_batch_over_a_catalog_of_products_and_unnamed_stacks(reflectance: tuple[np.ndarray, np.ndarray],
                                                               tmp_path: Path, capsys) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    write_safe(scenes, L1C, reflectance[0], offset=None)
    zipped(write_safe(scenes, L2A, reflectance[1], offset=-1000))
    landsat_folder(scenes, "LC08_L2SP_143030_20230610_20230620_02_T1", reflectance[1])
    stack = np.clip(reflectance[1], 1, 65000).astype("uint16")
    with rasterio.open(scenes / "planet_2023-06-20.tif", "w", driver="GTiff", width=SIZE, height=SIZE, count=4,
                       dtype="uint16", crs=UTM, transform=from_origin(*ORIGIN, PIXEL, PIXEL)) as dst:
        dst.write(stack)
    (tmp_path / "sites.geojson").write_text(json.dumps(site_collection()), encoding="utf-8")
    config = tmp_path / "batch.toml"
    text = ('[sites]\npaths = ["sites.geojson"]\n[imagery]\ncatalog = "scenes/"\n{bands}[dates]\n'
            'before = ["2017-01-01", "2017-12-31"]\nafter = ["2023-06-01", "2023-06-30"]\n'
            '[run]\nbuffer_m = 250\nmethod = "classical"\n[output]\ndir = "results/"\n')
    config.write_text(text.format(bands=""), encoding="utf-8")
    assert main(["-q", "batch", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert "planet_2023-06-20.tif has 4 bands without names" in err and "[imagery] bands" in err
    config.write_text(text.format(bands='bands = "planet-4"\n'), encoding="utf-8")
    assert main(["-q", "batch", str(config)]) == 1  # "far away" lies outside every scene
    found = gpd.read_file(tmp_path / "results" / "sites.geojson").set_index("site_id")
    assert found.loc["compound", "before_scene"] == L1C and bool(found.loc["compound", "flagged"])
    assert found.loc["compound", "after_scene"] in (Path(L2A).with_suffix(".zip").name,
                                                    "LC08_L2SP_143030_20230610_20230620_02_T1",
                                                    "planet_2023-06-20.tif")
    assert not found.loc["quiet", "flagged"]


# top-of-atmosphere reflectance of bare ground and of a thick cloud, B01 ... B12 (B8A after B08)
S2_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
S2_PIXEL = dict(zip(S2_IDS, (60, 10, 10, 10, 20, 20, 20, 10, 20, 60, 60, 20, 20), strict=True))
GROUND = (0.14, 0.12, 0.13, 0.17, 0.20, 0.22, 0.24, 0.26, 0.27, 0.08, 0.003, 0.30, 0.24)
THICK_CLOUD = (0.62, 0.60, 0.59, 0.60, 0.61, 0.62, 0.63, 0.64, 0.64, 0.30, 0.09, 0.42, 0.30)


def l1c_with_cloud(root: Path, name: str, image: np.ndarray, ground_image: np.ndarray,
                   cloud: np.ndarray | None) -> Path:
    """A full L1C product: 13 JPEG 2000 bands at their own resolutions: blue, green, red and NIR from ``image``
    (x 10000, the compound in it), the others a bare-soil spectrum with the texture of ``ground_image``; a thick
    cloud where asked."""
    safe = root / name
    stamp = name.split("_")[2]
    granule = safe / "GRANULE" / f"L1C_T45TUJ_A010000_{stamp}" / "IMG_DATA"
    texture = ground_image.mean(axis=0) / ground_image.mean()
    puffs = 0.75 + 0.5 * (np.add.outer(np.arange(SIZE) // 6 % 2, np.arange(SIZE) // 6 % 2) % 2)  # cumulus cells
    rows = {"B02": 0, "B03": 1, "B04": 2, "B08": 3}
    for i, band in enumerate(S2_IDS):
        values = image[rows[band]] if band in rows else GROUND[i] * 10000 * texture
        if cloud is not None:
            values = np.where(cloud, THICK_CLOUD[i] * 10000 * puffs, values)
        f = S2_PIXEL[band] // 10
        coarse = values.reshape(SIZE // f, f, SIZE // f, f).mean(axis=(1, 3)) if f > 1 else values
        write(granule / f"T45TUJ_{stamp}_{band}.jp2", np.clip(coarse, 1, 65000), driver="JP2OpenJPEG",
              pixel=S2_PIXEL[band])
    (safe / "MTD_MSIL1C.xml").write_text(metadata("L1C", None), encoding="utf-8")
    return safe


def test_s2cloudless_masks_a_thick_cloud_of_an_l1c_product_and_the_site_under_it_is_not_flagged(
        reflectance: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    pytest.importorskip("s2cloudless")
    rows, cols = np.mgrid[:SIZE, :SIZE]
    cloud = np.hypot(rows - QUIET[0], cols - QUIET[1]) < 40
    before = l1c_with_cloud(tmp_path, L1C, reflectance[0], reflectance[0], None)
    after = l1c_with_cloud(tmp_path, "S2B_MSIL1C_20180607T050659_N0206_R019_T45TUJ_20180607T080000.SAFE",
                           reflectance[1], reflectance[0], cloud)
    sites = tmp_path / "sites.geojson"
    sites.write_text(json.dumps(site_collection()), encoding="utf-8")
    args = ["-q", "run", "--sites", str(sites), "--before", str(before), "--after", str(after), "--buffer-m", "250"]
    assert run_cli(*args, "--out", tmp_path / "bare") == 0
    bare = gpd.read_file(tmp_path / "bare" / "sites.geojson").set_index("site_id")
    assert bare.loc["quiet", "status"] == "ok" and bare.loc["quiet", "cloud_fraction"] == 0  # scored, unmasked
    out = tmp_path / "masked"
    assert run_cli(*args, "--out", out, "--cloud-detector", "s2cloudless") == 0
    found = gpd.read_file(out / "sites.geojson").set_index("site_id")
    assert found.loc["quiet", "status"] == "cloudy" and not found.loc["quiet", "flagged"]
    assert bool(found.loc["compound", "flagged"]) and found.loc["compound", "cloud_fraction"] == 0
    with rasterio.open(out / "clouds_after.tif") as src:
        assert src.res == (60.0, 60.0) and src.read(1).sum() > 0
    with rasterio.open(out / "clouds_before.tif") as src:
        assert src.read(1).sum() == 0  # clear ground stays clear
    record = json.loads((out / "run.json").read_text())
    assert record["inputs"]["after"]["mask"] == {"file": str(out / "clouds_after.tif"), "kind": "cloud"}
    assert record["parameters"]["cloud_detector"] == "s2cloudless"
