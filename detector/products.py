"""Whole products as downloaded: a Sentinel-2 ``.SAFE`` folder or ``.zip`` (L1C, L2A), a Landsat Collection 2
Level-2 folder.

A product is one date.  Its bands are the image files of the product, each
at its finest resolution (an L2A band in ``R10m`` before ``R20m`` and
``R60m``), named by band; the mask band is the L2A ``SCL`` or Landsat
``QA_PIXEL`` (:mod:`detector.masks`).  Each band gets the product's
radiometric offset, in stored units, so that the values read are
proportional to reflectance (a common gain changes none of the statistics
the scores use; an offset changes ratios such as NDVI, and a step between
two products would look like change):

- Sentinel-2: reflectance = ``(DN + offset) / quantification``; the offset
  is ``RADIO_ADD_OFFSET`` (L1C, ``MTD_MSIL1C.xml``) or ``BOA_ADD_OFFSET``
  (L2A, ``MTD_MSIL2A.xml``): -1000 from processing baseline 04.00 (products
  since 25 January 2022), none before; without it a 2017 against 2023 pair
  would see a step of 0.1 in every band.
- Landsat C2 L2 surface reflectance (``*_SR_B<n>.TIF``): reflectance =
  ``DN * 2.75e-05 - 0.2`` (USGS, Landsat 4-9), so the offset is
  ``-0.2 / 2.75e-05`` (-7272.7) stored units, or ``REFLECTANCE_ADD_BAND_<n> /
  REFLECTANCE_MULT_BAND_<n>`` of the product's ``*_MTL.txt``.

JPEG 2000 decodes about 20 times slower than DEFLATE GeoTIFF on our machines
(``../shared/PERFORMANCE.md``, README "Measured").
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from xml.etree import ElementTree

from detector.errors import InputError

S2_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
LANDSAT_SR = re.compile(r"_SR_B(\d{1,2})$", flags=re.IGNORECASE)
LANDSAT_SR_SCALE, LANDSAT_SR_OFFSET = 2.75e-05, -0.2
RESOLUTION = re.compile(r"_(\d+)m$")


def is_safe(path: Path) -> bool:
    """Whether ``path`` is a Sentinel-2 product: a ``*.SAFE`` folder, or a ``.zip`` holding one."""
    if path.is_dir():
        return path.suffix.upper() == ".SAFE"
    return path.suffix.lower() == ".zip" and path.is_file() and safe_root_in_zip(path) is not None


def safe_root_in_zip(path: Path) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    roots = sorted({n.split("/")[0] for n in names if n.split("/")[0].upper().endswith(".SAFE")})
    return roots[0] if roots else None


def safe_files(path: Path) -> tuple[list[str], str | None]:
    """The product's image files (paths GDAL opens, ``/vsizip/`` inside a zip) and its metadata XML text."""
    if path.is_dir():
        images = sorted(str(p) for p in path.glob("GRANULE/*/IMG_DATA/**/*.jp2"))
        found = sorted(path.glob("MTD_MSIL*.xml"))
        return images, found[0].read_text(encoding="utf-8") if found else None
    root = safe_root_in_zip(path)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        images = sorted(f"/vsizip/{path}/{n}" for n in names
                        if re.match(rf"{re.escape(root or '')}/GRANULE/[^/]+/IMG_DATA/.*\.jp2$", n, re.IGNORECASE))
        meta = [n for n in names if re.fullmatch(rf"{re.escape(root or '')}/MTD_MSIL\w+\.xml", n)]
        text = archive.read(meta[0]).decode("utf-8") if meta else None
    return images, text


def radiometric_offsets(xml: str | None, *, where: Path) -> dict[str, float]:
    """``{band id: offset}`` in DN from a Sentinel-2 product's metadata XML (0 where it gives none)."""
    if xml is None:
        raise InputError(f"{where} has no MTD_MSIL1C.xml or MTD_MSIL2A.xml: download the whole product again")
    try:
        tree = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise InputError(f"{where}: its metadata XML does not parse ({exc}): download the product again") from None
    offsets = {int(e.get("band_id", -1)): float(e.text or 0) for e in tree.iter()
               if e.tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET")}
    return {band: offsets.get(i, 0.0) for i, band in enumerate(S2_BAND_IDS)}


def product_info(path: Path, xml: str | None) -> dict[str, object]:
    """What ``run.json`` records of a Sentinel-2 product: its level, tile and processing baseline."""
    name = path.name
    tile = re.search(r"_T(\d{2}[A-Z]{3})_", name)
    baseline = re.search(r"_N(\d{4})_", name)
    level = re.search(r"MSI(L1C|L2A)", name)
    info: dict[str, object] = {"product": "sentinel2", "level": level.group(1) if level else None,
                               "tile": tile.group(1) if tile else None,
                               "baseline": f"{baseline.group(1)[:2]}.{baseline.group(1)[2:]}" if baseline else None}
    if xml is not None and (found := re.search(r"<PROCESSING_BASELINE>([\d.]+)<", xml)):
        info["baseline"] = found.group(1)
    return info


def band_id(stem: str) -> str | None:
    """The Sentinel-2 band id (``B8A``) of an image file's stem, None for TCI, AOT, WVP, SCL."""
    code = re.search(r"_B(\d{2}|8A)(?:_\d+m)?$", stem, flags=re.IGNORECASE)
    return f"B{code.group(1).upper()}" if code else None


def landsat_offset(path: Path | str) -> float:
    """The offset, in DN, of a Landsat C2 L2 surface reflectance file (0 for any other file)."""
    stem = Path(str(path)).stem
    match = LANDSAT_SR.search(stem)
    if match is None:
        return 0.0
    mtl = Path(str(path)).with_name(LANDSAT_SR.sub("_MTL", stem) + ".txt")
    if mtl.is_file():
        text = mtl.read_text(encoding="utf-8", errors="replace")
        mult = re.search(rf"REFLECTANCE_MULT_BAND_{match.group(1)}\s*=\s*([-\d.Ee+]+)", text)
        add = re.search(rf"REFLECTANCE_ADD_BAND_{match.group(1)}\s*=\s*([-\d.Ee+]+)", text)
        if mult and add:
            return float(add.group(1)) / float(mult.group(1))
    return LANDSAT_SR_OFFSET / LANDSAT_SR_SCALE
