"""``detector timeline``: every usable date of a catalog over each site, fitted under "construction persists"."""
