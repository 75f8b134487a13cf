"""``detector batch`` as the batch tests call it, and the table it writes."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pyogrio

from detector.cli import main


def batch(config: Path, *args: str) -> int:
    return main(["-q", "batch", str(config), *args])


def sites_of(out: Path) -> gpd.GeoDataFrame:
    """The batch's ``sites`` layer (sites or cells), by ``site_id``."""
    return pyogrio.read_dataframe(out / "sites.gpkg", layer="sites").sort_values("site_id").reset_index(drop=True)
