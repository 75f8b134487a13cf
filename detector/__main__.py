"""``python -m detector``: the console script."""

from detector.console import entry

raise SystemExit(entry())
