"""``python -m detector``: the console script."""

from detector.console import entry

if __name__ == "__main__":
    raise SystemExit(entry())
