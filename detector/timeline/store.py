"""Durable per-site results of a timeline, so a killed one resumes where it stopped.

The state folder lies beside the output folder (``.<out>.state``); each
finished site is a JSON file and its two PNGs, the JSON written last and
atomically: a site is done exactly when its JSON is there.  ``config.json``
holds what decides the results; a state of another configuration is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detector.batch.store import safe_name
from detector.errors import InputError
from detector.files import absolute, atomic


class SiteStore:
    """The finished sites of one timeline configuration."""

    def __init__(self, out: Path, fingerprint: dict[str, Any]) -> None:
        out = absolute(out)
        self.folder = out.parent / f".{out.name}.state"
        self.folder.mkdir(parents=True, exist_ok=True)
        marker = self.folder / "config.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if marker.is_file() and marker.read_text(encoding="utf-8") != text:
            raise InputError(f"{self.folder} holds the sites of another timeline configuration (other sites, "
                             f"catalog or rules): give another --out, or remove {self.folder} to start again")
        if not marker.is_file():
            with atomic(marker) as tmp:
                tmp.write_text(text, encoding="utf-8")

    @property
    def done(self) -> set[str]:
        return {json.loads(p.read_text(encoding="utf-8"))["site_id"] for p in self.folder.glob("*.site.json")}

    def add(self, result: dict[str, Any], pictures: dict[str, bytes]) -> None:
        """One site: its pictures, then its record (the commit)."""
        name = safe_name(str(result["site_id"]))
        for kind, data in pictures.items():
            with atomic(self.folder / f"{name}_{kind}.png") as tmp:
                tmp.write_bytes(data)
        with atomic(self.folder / f"{name}.site.json") as tmp:
            tmp.write_text(json.dumps(result, default=str), encoding="utf-8")

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(self.folder.glob("*.site.json"))]

    def picture(self, site_id: str, kind: str) -> Path | None:
        path = self.folder / f"{safe_name(site_id)}_{kind}.png"
        return path if path.is_file() else None
