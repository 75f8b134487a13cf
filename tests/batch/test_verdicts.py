"""The review state between runs of one batch, on tiny frames and files: no batch is run."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import pytest
from shapely.geometry import box

from detector.batch.verdicts import verdict_edits, verdicts_of
from detector.outputs import write_geojson
from detector.reviews import carry_over

IDS = ("a", "b", "c")


def frame(**verdicts: str) -> gpd.GeoDataFrame:
    """Sites a, b, c (unit squares side by side) with the given review_status, reviewer and notes empty."""
    return gpd.GeoDataFrame({"site_id": list(IDS), "review_status": [verdicts.get(i, "unreviewed") for i in IDS],
                             "reviewer": "", "notes": ""},
                            geometry=[box(k, 0, k + 0.01, 0.01) for k in range(len(IDS))], crs=4326)


def statuses(out: Path, own: gpd.GeoDataFrame, state: dict, given: Path | None = None) -> dict[str, str]:
    """Each site's verdict after the end of the batch carries the edits over."""
    edits, _ = verdict_edits(out, given, own, state)
    sites, _ = carry_over(own.assign(review_status="unreviewed"), edits, every_row=True)
    return dict(zip(sites["site_id"], sites["review_status"], strict=True))


def state_of(**verdicts: str) -> dict:
    return {"verdicts": verdicts_of(frame(**verdicts)), "given": {}}


def test_at_the_first_end_every_reviewed_row_counts_and_sites_geojson_comes_after_the_gpkg(tmp_path: Path) -> None:
    write_geojson(frame(a="confirmed"), tmp_path / "sites.geojson")
    assert statuses(tmp_path, frame(a="rejected", b="unsure"), {}) == {"a": "confirmed", "b": "unsure",
                                                                      "c": "unreviewed"}


def test_later_only_edits_since_the_last_end_count(tmp_path: Path) -> None:
    state = state_of(a="confirmed", b="rejected")
    write_geojson(frame(a="confirmed", b="rejected"), tmp_path / "sites.geojson")  # as the last end wrote it
    own = frame(a="confirmed", b="unreviewed")  # b set back to unreviewed in the gpkg
    assert statuses(tmp_path, own, state) == {"a": "confirmed", "b": "unreviewed", "c": "unreviewed"}


def test_a_reviews_file_left_in_the_configuration_undoes_no_later_edit(tmp_path: Path) -> None:
    given = tmp_path / "old.geojson"
    write_geojson(frame(a="rejected"), given)
    state = {"verdicts": verdicts_of(frame(a="confirmed")), "given": verdicts_of(frame(a="rejected"))}
    write_geojson(frame(a="confirmed"), tmp_path / "sites.geojson")
    assert statuses(tmp_path, frame(a="confirmed"), state, given)["a"] == "confirmed"
    write_geojson(frame(a="unsure"), given)  # the file itself changed: that is an edit
    assert statuses(tmp_path, frame(a="confirmed"), state, given)["a"] == "unsure"


def test_a_site_edited_differently_in_both_files_keeps_the_geojson_verdict_and_warns(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = state_of(a="confirmed")
    write_geojson(frame(a="unsure"), tmp_path / "sites.geojson")
    with caplog.at_level(logging.WARNING):
        assert statuses(tmp_path, frame(a="rejected"), state)["a"] == "unsure"
    assert "site a was reviewed differently" in caplog.text


def test_the_review_state_keeps_only_verdicts_that_say_something() -> None:
    assert verdicts_of(frame(b="rejected")) == {"b": ["rejected", "", ""]}
    assert verdicts_of(frame().assign(notes=["", "seen twice", ""])) == {"b": ["unreviewed", "", "seen twice"]}
