"""Which band of a multi-band file is which: ``--bands`` names in file order, or a sensor preset.

A stack without band descriptions (ENVI, ``gdal_merge``, a QGIS export) says
nothing of its bands; a plain 3-band file is read as red, green, blue, and a
stack of four or more is never guessed: the user names its bands.
"""

from __future__ import annotations

from detector.errors import InputError

# canonical names a band can take (STAC eo common names, plus the masks of detector.masks)
KNOWN = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "watervapour",
         "cirrus", "swir16", "swir22", "pan", "lwir", "scl", "qa_pixel", "cloud")
SKIP = "-"  # a band to leave out
ALIASES = {"swir1": "swir16", "swir2": "swir22", "r": "red", "g": "green", "b": "blue", "thermal": "lwir",
           "tir": "lwir", "lwir11": "lwir", "nir1": "nir", "skip": SKIP, "_": SKIP,
           "cloud_mask": "cloud", "cloudmask": "cloud", "clouds": "cloud", "mask": "cloud"}
S2_ALL = ("coastal", "blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "watervapour",
          "cirrus", "swir16", "swir22")
PRESETS: dict[str, dict[int, tuple[str, ...]]] = {
    "sentinel2": {
        13: S2_ALL,  # B01 ... B12 with B8A after B08 (L1C)
        12: tuple(b for b in S2_ALL if b != "cirrus"),  # L2A: no B10
        10: ("blue", "green", "red", "rededge1", "rededge2", "rededge3", "nir", "nir08", "swir16", "swir22"),
        4: ("blue", "green", "red", "nir"),  # B02 B03 B04 B08
    },
    "landsat-tm": {  # TM and ETM+ bands 1-5 and 7, or 1-7 with the thermal band 6
        6: ("blue", "green", "red", "nir", "swir16", "swir22"),
        7: ("blue", "green", "red", "nir", "swir16", "lwir", "swir22"),
    },
    "landsat-oli": {  # OLI bands 1-7 (Collection 2 surface reflectance), or 1-7 and 9
        7: ("coastal", "blue", "green", "red", "nir", "swir16", "swir22"),
        8: ("coastal", "blue", "green", "red", "nir", "swir16", "swir22", "cirrus"),
    },
    "planet-4": {4: ("blue", "green", "red", "nir")},
}
HINT = ("say which band is which with --bands: names in file order (e.g. --bands blue,green,red,nir) or a preset: "
        + ", ".join(PRESETS))


def band_names(spec: str, count: int, *, file: object, key: str = "--bands") -> tuple[str, ...]:
    """The canonical name of each of ``count`` bands from a ``--bands`` value; :class:`InputError` naming ``key``
    and ``file`` when it does not fit.  A band named ``-`` is left out (its name is ``band<i>``)."""
    text = spec.strip().lower()
    if text in PRESETS:
        layouts = PRESETS[text]
        if count not in layouts:
            counts = " or ".join(str(n) for n in sorted(layouts))
            raise InputError(f"{key} {text} describes {counts} bands; {file} has {count}: give the names in file "
                             "order instead (e.g. --bands blue,green,red,nir)")
        return layouts[count]
    names = [ALIASES.get(n.strip(), n.strip()) for n in text.split(",")]
    unknown = [n for n in names if n not in KNOWN and n != SKIP]
    if unknown:
        raise InputError(f"{key} {spec!r}: {', '.join(unknown)} is not a band name; use {', '.join(KNOWN)} "
                         f"(- to leave a band out) or a preset: {', '.join(PRESETS)}")
    if len(names) != count:
        raise InputError(f"{key} {spec!r} names {len(names)} bands; {file} has {count}: name every band in file "
                         "order (- for one to leave out)")
    named = [n for n in names if n != SKIP]
    if len(set(named)) != len(named):
        raise InputError(f"{key} {spec!r} names a band twice: give each name once")
    return tuple(f"band{i + 1}" if n == SKIP else n for i, n in enumerate(names))
