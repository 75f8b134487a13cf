"""The outputs open in real QGIS (Debian's python3-qgis, headless) with our styles applied."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from detector.cli import main

SYSTEM_PYTHON = Path("/usr/bin/python3")


def qgis_available() -> bool:
    if not SYSTEM_PYTHON.exists():
        return False
    return subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True).returncode == 0


@pytest.mark.skipif(not qgis_available(), reason="python3-qgis is not installed (.ci/run installs it)")
def test_outputs_load_in_qgis_in_epsg_4326_with_fields_and_styles(scene, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["-q", "run", "--sites", str(scene.sites), "--before", str(scene.before), "--after",
                 str(scene.after), "--out", str(out), "--buffer-m", "250", "--method", "classical"]) == 0
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    result = subprocess.run([SYSTEM_PYTHON, Path(__file__).with_name("qgis_check.py"), out],
                            capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    layers = json.loads(result.stdout.strip().splitlines()[-1])
    sites, changes, change = layers["sites"], layers["changes"], layers["change"]
    assert sites["valid"] and changes["valid"] and change["valid"]
    assert sites["crs"] == changes["crs"] == "EPSG:4326" and sites["features"] == 4
    assert {"site_id", "score", "rank", "flagged", "review_status", "chip_before"} <= set(sites["fields"])
    assert sites["renderer"] == "graduatedSymbol" and sites["classes"] == 5
    assert sites["labels"] and "rank" in sites["label_expression"]
    assert changes["renderer"] == "graduatedSymbol"
    assert change["renderer"] == "singlebandpseudocolor" and change["bands"] == 1
