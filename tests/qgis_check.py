"""Run by tests/test_qgis.py under Debian's python3 (python3-qgis): load a run's outputs in real QGIS.

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 tests/qgis_check.py RESULTS_DIR [LAYER ...]

LAYER: the vector layers to load (``<LAYER>.geojson``; default ``sites
changes``); ``change.tif`` too where it is there.

Prints one JSON object: per layer, whether it is valid, its CRS, its fields
or band count, and the renderer QGIS applied from the same-named .qml.
"""

import json
import os
import sys
from pathlib import Path

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer

app = QgsApplication([], False)
app.initQgis()
out = Path(sys.argv[1])
report = {}
for name in sys.argv[2:] or ("sites", "changes"):
    layer = QgsVectorLayer(str(out / f"{name}.geojson"), name, "ogr")
    labels = layer.labeling()
    report[name] = {
        "valid": layer.isValid(), "crs": layer.crs().authid(), "features": layer.featureCount(),
        "fields": [f.name() for f in layer.fields()], "renderer": layer.renderer().type(),
        "classes": len(getattr(layer.renderer(), "ranges", getattr(layer.renderer(), "categories", list))()),
        "labels": bool(layer.labelsEnabled() and labels is not None),
        "label_expression": labels.settings().fieldName if labels is not None else None,
    }
if (out / "change.tif").is_file():
    raster = QgsRasterLayer(str(out / "change.tif"), "change")
    report["change"] = {"valid": raster.isValid(), "crs": raster.crs().authid(), "bands": raster.bandCount(),
                        "renderer": raster.renderer().type()}
print(json.dumps(report), flush=True)
os._exit(0)  # QGIS 3.22 can crash in its own teardown, after the work is done
