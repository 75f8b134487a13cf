"""Build the QGIS styles shipped in ``detector/styles/`` with QGIS itself (run once; needs python3-qgis).

    QT_QPA_PLATFORM=offscreen /usr/bin/python3 scripts/make_styles.py

- ``sites.qml``: a graduated renderer on ``score`` (5 classes, light yellow to
  dark red; fill at 60 % opacity), the outline of flagged sites thick and
  red (data-defined on ``flagged``), labels ``#<rank>``;
- ``changes.qml``: change polygons filled by ``score`` (graduated, orange to red);
- ``change.qml``: ``change.tif`` as a pseudocolour ramp, 0 transparent, 0.5 and
  over red to yellow;
- ``timeline.qml``: ``detector timeline``'s sites outlined by ``kind`` (new red,
  expanded orange, unchanged grey, insufficient_data dashed blue), labelled
  ``#<rank> <kind>``;
- ``parts.qml``: its dated parts graduated by ``onset_year`` (2015 to 2030, one
  of eight distinct colours a year, so neighbouring years differ).

``detector run`` copies them beside its outputs, where QGIS loads a
same-named ``.qml`` on its own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsClassificationRange,
    QgsColorRampShader,
    QgsFillSymbol,
    QgsGraduatedSymbolRenderer,
    QgsPalLayerSettings,
    QgsProperty,
    QgsRasterLayer,
    QgsRasterShader,
    QgsRendererCategory,
    QgsRendererRange,
    QgsSingleBandPseudoColorRenderer,
    QgsSymbolLayer,
    QgsTextFormat,
    QgsVectorLayer,
    QgsVectorLayerSimpleLabeling,
)
from qgis.PyQt.QtGui import QColor

OUT = Path(__file__).resolve().parents[1] / "detector" / "styles"
BREAKS = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]
SITE_COLOURS = ["#fff5b0", "#fdd17a", "#fb8d3d", "#e4472a", "#a50f15"]
CHANGE_COLOURS = ["#fdd0a2", "#fdae6b", "#fd8d3c", "#e6550d", "#a63603"]


def graduated(field: str, colours: list[str], *, outline_flagged: bool) -> QgsGraduatedSymbolRenderer:
    ranges = []
    for low, high, colour in zip(BREAKS[:-1], BREAKS[1:], colours, strict=True):
        symbol = QgsFillSymbol.createSimple({"color": colour, "outline_color": "#555555", "outline_width": "0.2"})
        symbol.setOpacity(0.6 if outline_flagged else 0.75)
        if outline_flagged:
            layer = symbol.symbolLayer(0)
            layer.setDataDefinedProperty(QgsSymbolLayer.PropertyStrokeWidth,
                                         QgsProperty.fromExpression('if("flagged", 0.9, 0.2)'))
            layer.setDataDefinedProperty(QgsSymbolLayer.PropertyStrokeColor,
                                         QgsProperty.fromExpression("if(\"flagged\", '#d7191c', '#555555')"))
        ranges.append(QgsRendererRange(QgsClassificationRange(f"{low:g} - {high:g}", low, high), symbol))
    return QgsGraduatedSymbolRenderer(field, ranges)


def rank_labels() -> QgsVectorLayerSimpleLabeling:
    settings = QgsPalLayerSettings()
    settings.fieldName = "if(\"rank\" IS NULL, '', '#' || to_string(\"rank\"))"
    settings.isExpression = True
    text = QgsTextFormat()
    text.setSize(9)
    buffer = text.buffer()
    buffer.setEnabled(True)
    buffer.setSize(0.8)
    text.setBuffer(buffer)
    settings.setFormat(text)
    return QgsVectorLayerSimpleLabeling(settings)


def vector_style(name: str, renderer: QgsGraduatedSymbolRenderer, labels: bool) -> None:
    layer = QgsVectorLayer("Polygon?crs=EPSG:4326&field=score:double&field=flagged:boolean&field=rank:integer",
                           name, "memory")
    layer.setRenderer(renderer)
    if labels:
        layer.setLabeling(rank_labels())
        layer.setLabelsEnabled(True)
    message, ok = layer.saveNamedStyle(str(OUT / f"{name}.qml"))
    if not ok:
        raise SystemExit(f"could not write {name}.qml: {message}")


KINDS = {"new": "#d7191c", "expanded": "#fdae61", "unchanged": "#bababa", "insufficient_data": None}
YEARS = range(2015, 2031)
YEAR_COLOURS = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def kind_renderer() -> QgsCategorizedSymbolRenderer:
    """Sites outlined by kind (thick), the imagery seen through them."""
    categories = []
    for kind, colour in KINDS.items():
        line = {"color": "0,0,0,0", "outline_color": colour or "#2c7bb6", "outline_width": "0.9" if colour else "0.6",
                "outline_style": "solid" if colour else "dash"}
        categories.append(QgsRendererCategory(kind, QgsFillSymbol.createSimple(line), kind))
    return QgsCategorizedSymbolRenderer("kind", categories)


def year_renderer() -> QgsGraduatedSymbolRenderer:
    """Parts by onset year, one clearly different colour for each of eight years in turn."""
    ranges = []
    for i, year in enumerate(YEARS):
        symbol = QgsFillSymbol.createSimple({"color": YEAR_COLOURS[i % len(YEAR_COLOURS)],
                                             "outline_color": "#222222", "outline_width": "0.2"})
        symbol.setOpacity(0.7)
        ranges.append(QgsRendererRange(QgsClassificationRange(str(year), year - 0.5, year + 0.5), symbol))
    return QgsGraduatedSymbolRenderer("onset_year", ranges)


def timeline_styles() -> None:
    fields = "field=kind:string&field=rank:integer&field=onset_year:integer"
    for name, renderer, label in (("timeline", kind_renderer(), "'#' || to_string(\"rank\") || ' ' || \"kind\""),
                                  ("parts", year_renderer(), None)):
        layer = QgsVectorLayer(f"Polygon?crs=EPSG:4326&{fields}", name, "memory")
        layer.setRenderer(renderer)
        if label:
            labeling = rank_labels()
            settings = labeling.settings()
            settings.fieldName = label
            labeling.setSettings(QgsPalLayerSettings(settings))
            layer.setLabeling(labeling)
            layer.setLabelsEnabled(True)
        message, ok = layer.saveNamedStyle(str(OUT / f"{name}.qml"))
        if not ok:
            raise SystemExit(f"could not write {name}.qml: {message}")


def raster_style(sample: Path) -> None:
    layer = QgsRasterLayer(str(sample), "change")
    ramp = QgsColorRampShader(0.0, 1.0)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(0.0, QColor(255, 255, 255, 0), "0"),
        QgsColorRampShader.ColorRampItem(0.25, QColor(255, 237, 160, 90), "0.25"),
        QgsColorRampShader.ColorRampItem(0.5, QColor(240, 59, 32, 220), "0.5"),
        QgsColorRampShader.ColorRampItem(1.0, QColor(255, 255, 0, 255), "1"),
    ])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(layer.dataProvider(), 1, shader)
    renderer.setClassificationMin(0.0)
    renderer.setClassificationMax(1.0)
    layer.setRenderer(renderer)
    message, ok = layer.saveNamedStyle(str(OUT / "change.qml"))
    if not ok:
        raise SystemExit(f"could not write change.qml: {message}")


def main() -> int:
    app = QgsApplication([], False)
    app.initQgis()
    OUT.mkdir(parents=True, exist_ok=True)
    vector_style("sites", graduated("score", SITE_COLOURS, outline_flagged=True), labels=True)
    vector_style("changes", graduated("score", CHANGE_COLOURS, outline_flagged=False), labels=False)
    raster_style(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("results/change.tif"))
    timeline_styles()
    app.exitQgis()
    print(f"wrote {sorted(p.name for p in OUT.glob('*.qml'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
