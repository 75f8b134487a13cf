"""What a reviewer of a timeline looks at: a chart and a filmstrip per site, and one offline report."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
from PIL import Image, ImageDraw

from detector.chips import CYAN
from detector.report import CSP, STYLE, _e, _filled, _t
from detector.timeline.site import SiteSeries

PAGE_STYLE = "img{width:auto;max-width:100%}tr.film td{border-bottom:2px solid #bbb}"
FRAME_PX = 200  # a filmstrip frame's longest side
LABEL_PX = 16


def chart(series: SiteSeries) -> bytes:
    """Built area against date; the onset interval shaded; skipped dates marked on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    days: Any = [dt.date.fromisoformat(d) for d in series.dates]  # matplotlib plots dates
    figure, axes = plt.subplots(figsize=(6.4, 2.6), dpi=100)
    if len(series.built_m2):
        axes.plot(days, series.built_m2 / 1e4, "o-", color="#b22", label="built (fitted)")
        axes.plot(days, series.changed_m2 / 1e4, "x", color="#888", label="changed on that date")
    if series.onset:
        axes.axvspan(days[series.onset - 1], days[series.onset], color="#fc8", alpha=0.5, label="onset")
    skipped: Any = [dt.date.fromisoformat(s[:10]) for s in series.skipped if s[:4].isdigit()]
    if skipped:
        axes.plot(skipped, [0] * len(skipped), "|", color="#36c", markersize=14, label="skipped date")
    axes.set_ylabel("hectares")
    axes.set_title(f"{series.site_id}: {series.kind}", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def filmstrip_png(series: SiteSeries) -> bytes:
    """The site at every usable date, one stretch over all, labelled with the date; the onset date framed."""
    frames = [_framed(f, series.outline) for f in series.frames]
    h, w = frames[0].shape[:2]
    scale = FRAME_PX / max(h, w)
    size = (max(int(w * scale), 1), max(int(h * scale), 1))
    sheet = Image.new("RGB", (len(frames) * (size[0] + 4), size[1] + LABEL_PX), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (frame, date) in enumerate(zip(frames, series.dates, strict=True)):
        x = i * (size[0] + 4)
        sheet.paste(Image.fromarray(frame).resize(size, Image.Resampling.NEAREST), (x, LABEL_PX))
        draw.text((x + 2, 2), date, fill="black")
        if series.onset == i:
            draw.rectangle((x, LABEL_PX, x + size[0] - 1, LABEL_PX + size[1] - 1), outline=(255, 140, 0), width=3)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()


def _framed(frame: np.ndarray, outline: np.ndarray | None) -> np.ndarray:
    out = frame.copy()
    if outline is not None:
        out[outline] = CYAN
    return out


def report(frame: gpd.GeoDataFrame, record: dict[str, Any], path: Path) -> None:
    """``report.html``: the rule and provenance, then every site in rank order with its chart and filmstrip."""
    rows = []
    for row in frame.itertuples():
        pictures = "<br>".join(f'<img src="{_e(getattr(row, kind))}" alt="{kind}">' for kind in ("chart", "filmstrip")
                               if _filled(getattr(row, kind)))
        film = f"<tr class=film><td></td><td colspan=5>{pictures}</td></tr>"
        onset = f"{_e(row.onset_after)} → {_e(row.onset_before)}" if _filled(row.onset_before) else "&ndash;"
        used = [d for d in str(row.dates_used).split(", ") if d]
        dates = f"{len(used)} used: {_e(used[0])} … {_e(used[-1])}" if used else "none used"
        rows.append(f"<tr><td>#{row.rank}</td><td>{_t(row.site_id)}</td><td><b>{_e(row.kind)}</b><br>"
                    f"<small>{_e(row.kind_reason)}</small></td><td>{onset}</td>"
                    f"<td>{_m2(row.built_m2_first)} → {_m2(row.built_m2_last)}</td>"
                    f"<td class=attrs>{dates}<br>skipped: {_e(row.dates_skipped or 'none')}</td></tr>{film}")
    text = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{CSP}<title>Timeline report</title>'
            f"<style>{STYLE}{PAGE_STYLE}</style></head><body>"
            f"<h1>Timeline of {len(frame)} sites</h1><p><b>Rule</b>: {_e(record['rule'])}</p>"
            f"<p><b>Method</b>: {_e(record['method'])} ({_e(record['fusion'])}); model "
            f"{_e((record.get('model') or {}).get('sha256', 'none'))}; catalog {_e(record['inputs']['catalog'])}</p>"
            "<table><thead><tr><th>rank</th><th>site</th><th>kind</th><th>onset (after → before)</th>"
            "<th>built area first → last</th><th>dates</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></body></html>")
    path.write_text(text, encoding="utf-8")


def _m2(value: object) -> str:
    return f"{float(value) / 1e4:.2f} ha" if _filled(value) else "&ndash;"  # type: ignore[arg-type]
