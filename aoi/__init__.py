"""Areas of interest: candidate sites read from vector files, or a grid of cells."""

from aoi.sites import read_site_files, read_sites

__all__ = ["read_site_files", "read_sites"]
