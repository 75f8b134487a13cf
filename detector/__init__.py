"""Find new construction and expansion at candidate sites in two dates of imagery."""

__version__ = "0.1.0"
