"""Files that appear whole or not at all: the one atomic write, removal, JSON, input records."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TMP_GLOB = ".*.tmp*"  # every temporary name that :func:`temporary_name` gives


def temporary_name(path: Path, *, suffix: str = "") -> Path:
    """A hidden name beside ``path`` for this process (``suffix``: an extension GDAL needs, such as .gpkg)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")


@contextmanager
def atomic(path: Path, *, suffix: str = "") -> Iterator[Path]:
    """Write to the yielded temporary path; it is renamed onto ``path`` when the block ends without error
    and removed when it raises, so ``path`` is either the old file or the whole new one."""
    tmp = temporary_name(path, suffix=suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        remove(tmp)


def absolute(path: Path) -> Path:
    """``path`` from the root, ``.``, ``..`` and links resolved: a result folder has a name and a parent to write
    beside it, also when it is given as ``.``, and a link to a folder stays a link to the new results."""
    return Path(os.path.realpath(path))


def remove(path: Path) -> None:
    """A file or a folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_json(data: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_plain) + "\n", encoding="utf-8")


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    with atomic(path) as tmp:
        write_json(data, tmp)


def _plain(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def file_record(path: Path) -> dict[str, Any]:
    """Path, size and SHA-256 of an input file; of a folder GDAL reads as one dataset (a File Geodatabase, a
    folder of shapefiles), its files' names and bytes in order of name, and their total size."""
    digest = hashlib.sha256()
    folder = path.is_dir()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if folder else [path]
    for file in files:
        if folder:  # the names too: the same bytes under other names are another dataset
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
    return {"path": str(path.resolve()), "bytes": sum(f.stat().st_size for f in files), "sha256": digest.hexdigest()}
