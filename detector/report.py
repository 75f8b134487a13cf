"""``report.html``: one offline page to review the ranked sites from, chips side by side.

Everything that comes from the user (site ids, names, attributes, file
names, notes) is escaped; the page loads nothing from the network, only the
chips beside it by relative path.
"""

from __future__ import annotations

import html
import re
from typing import Any

import geopandas as gpd
import pandas as pd

SHOWN = ("score", "flagged", "changed_area_m2", "cell_count", "cells", "valid_fraction", "cloud_fraction", "status",
         "shift_px", "shift_peak", "shift_corrected",
         "before_scene", "after_scene", "pairing", "review_status", "reviewer", "notes")  # scenes: batch only
STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left}
th{background:#f4f4f4;position:sticky;top:0}tr.flagged td:first-child{border-left:4px solid #d33}
img{width:220px;height:auto;image-rendering:pixelated;margin-right:4px}dl{margin:0}dt{font-weight:600}
.attrs{font-size:12px;color:#555;max-width:22em;overflow-wrap:anywhere}code{font-size:12px}
summary{font-size:12px;color:#555;cursor:pointer}"""


# the page runs nothing and loads nothing but its own pictures: user text in it cannot act
CSP = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\' file: data:; '
       'style-src \'unsafe-inline\'">')


def render(sites: gpd.GeoDataFrame, record: dict[str, Any], user_columns: list[str], *,
           listed: str = "sites.geojson") -> str:
    """The page as text: provenance, then one row per site to review, in rank order.

    The sites to review are those with chips (every flagged site and the
    best ranked; in cell mode the best candidate sites); the rest are
    counted, and listed in ``listed``.
    """
    shown = sites[sites["chip_before"].notna()] if "chip_before" in sites.columns else sites
    rows = [_row(site, user_columns) for _, site in shown.iterrows()]
    rest = len(sites) - len(shown)
    tail = f"<p>{rest} further sites, ranked lower, are in {_e(listed)}.</p>" if rest else ""
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', CSP,
        f"<title>{_e('Change report: ' + str(record.get('mode', '')))}</title><style>{STYLE}</style></head><body>",
        "<h1>Site change report</h1>", _provenance(record),
        "<table><thead><tr><th>rank</th><th>site</th><th>before</th><th>after</th><th>change</th>"
        "<th>scores</th></tr></thead><tbody>", *rows, "</tbody></table>", tail, "</body></html>",
    ])


def _provenance(record: dict[str, Any]) -> str:
    inputs = record.get("inputs", {})
    model = record.get("model") or {}
    items = {
        "before": f"{inputs.get('before', {}).get('path')} ({inputs.get('before', {}).get('date')})",
        "after": f"{inputs.get('after', {}).get('path')} ({inputs.get('after', {}).get('date')})",
        "method": f"{record.get('method')}; {record.get('fusion') or ''}",
        **({"applied": f"{applied.get('rule')}: {applied.get('why')}"} if (applied := record.get("fusion_applied"))
           else {}),
        "model": f"{model.get('path')} sha256 {model.get('sha256')}" if model else "none",
        "threshold": f"{record.get('threshold', {}).get('value')}: {record.get('threshold', {}).get('rule')} "
                     f"(chosen by {record.get('threshold', {}).get('chosen_by')})",
        "counts": ", ".join(f"{k} {v}" for k, v in record.get("counts", {}).items()),
        "detector": str(record.get("detector_version")),
    }
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd><code>{_e(v)}</code></dd>" for k, v in items.items()) + "</dl>"


def _row(site: pd.Series, user_columns: list[str]) -> str:
    chips = [site.get(f"chip_{kind}") for kind in ("before", "after", "change")]
    cells = "".join(f'<td><img src="{_e(c)}" alt="{kind}" loading="lazy"></td>' if isinstance(c, str) and c else
                    "<td></td>" for c, kind in zip(chips, ("before", "after", "change"), strict=True))
    filled = [c for c in user_columns if _filled(site.get(c))]
    attrs = "".join(f"<dt>{_t(c)}</dt><dd>{_t(site.get(c))}</dd>" for c in filled)
    folded = f"<details><summary>{len(filled)} attributes</summary><dl class=\"attrs\">{attrs}</dl></details>"
    scores = "".join(f"<dt>{_e(c)}</dt><dd>{_t(site.get(c))}</dd>" for c in SHOWN if c in site.index)
    dates = f"{_e(site.get('before_date'))} → {_e(site.get('after_date'))}"
    rank = site.get("rank")
    return (f'<tr class="{"flagged" if bool(site.get("flagged")) else ""}"><td>{_e(rank if _filled(rank) else "-")}'
            f"</td><td><b>{_t(site.get('site_id'))}</b><br>{dates}<br><small>{_e(_where(site))}</small>"
            f"{folded if filled else ''}</td>{cells}<td><dl>{scores}</dl></td></tr>")


def _where(site: pd.Series) -> str:
    """The site's centre as latitude, longitude (to paste into a map), from its outline."""
    geometry = site.get("geometry")
    if geometry is None or getattr(geometry, "is_empty", True):
        return ""
    centre = geometry.centroid
    return f"{centre.y:.5f}, {centre.x:.5f}"


def _filled(value: object) -> bool:
    return value is not None and not (isinstance(value, float) and value != value) and value is not pd.NA


# Unicode's bidirectional controls: in a site name they would make the page show another name
BIDI = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _e(value: object) -> str:
    """Text escaped for HTML, its bidirectional controls shown as visible code points (``[U+202E]``)."""
    text = "" if value is None or value is pd.NA else str(value)
    return html.escape(BIDI.sub(lambda m: f"[U+{ord(m.group()):04X}]", text), quote=True)


def _t(value: object) -> str:
    """User text as element content: :func:`_e`, isolated in ``<bdi>`` so it cannot reorder what is around it."""
    return f"<bdi>{_e(value)}</bdi>"
