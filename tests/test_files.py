"""Files that appear whole or not at all: the atomic write and the staging of a run's outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from detector.files import atomic
from detector.outputs import Staging


def test_an_atomic_write_replaces_the_file_only_when_it_completes(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["a.json"]
    with atomic(target, suffix=".gpkg") as tmp:
        assert tmp.name.endswith(".gpkg") and tmp.name.startswith(".")
        tmp.write_text("new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


def test_staged_files_appear_on_commit_with_the_record_last_and_a_folder_whole(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "chips").mkdir()
    (tmp_path / "chips" / "old.png").write_text("old")
    order: list[str] = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (order.append(Path(b).name), replace(a, b)))
    with Staging(tmp_path) as staging:
        staging.path("run.json").write_text("{}")
        staging.path("sites.geojson").write_text("{}")
        chips = staging.path("chips")
        chips.mkdir()
        (chips / "new.png").write_text("new")
        staging.commit()
    assert order[-1] == "run.json" and "sites.geojson" in order
    assert sorted(p.name for p in (tmp_path / "chips").iterdir()) == ["new.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chips", "run.json", "sites.geojson"]


def test_an_error_before_commit_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    (tmp_path / "sites.geojson").write_text("old")
    with pytest.raises(ValueError), Staging(tmp_path) as staging:
        staging.path("sites.geojson").write_text("new")
        raise ValueError("bad input")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sites.geojson"]
    assert (tmp_path / "sites.geojson").read_text() == "old"


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(tmp_path: Path) -> None:
    (tmp_path / ".sites.geojson.12345.tmp").write_text("left by a kill")
    (tmp_path / "mine.txt").write_text("kept")
    with Staging(tmp_path):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
