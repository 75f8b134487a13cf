"""Where the CNN runs: ONNX Runtime and torch give the same probabilities; torch when onnxruntime is missing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from detector import inference, weights
from detector.cli import main
from detector.errors import InputError
from detector.methods import default_model_path
from detector.model import build, fuse_batchnorm

pytest.importorskip("onnxruntime")  # the `onnx` extra; `test` installs it
pytest.importorskip("onnx")


def inputs(channels: int, shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Standardized dates as :func:`detector.model.adapt` makes them: the after date the before one, brighter in a
    block (change), so that the probabilities span 0 to about 0.85 rather than sit at 0."""
    x = np.clip(np.random.default_rng(seed).normal(scale=2.0, size=(shape[0], channels, *shape[1:])), -6, 6)
    x[:, 6:12] = x[:, :6]
    x[:, 6:12, shape[1] // 4:shape[1] * 3 // 4, shape[2] // 5:shape[2] * 4 // 5] += 4.0
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", [(5, 128, 128), (3, 100, 52)])  # a batch past BATCH; edges to pad
def test_onnxruntime_and_torch_give_the_same_probabilities(shape: tuple[int, int, int]) -> None:
    loaded = weights.load(default_model_path())
    channels = 2 * len(loaded.card["bands"]) + len(loaded.evidence)
    x = inputs(channels, shape)
    onnx = inference.onnx_predictor(loaded.network, inference.onnxruntime_module())
    torch = inference.torch_predictor(loaded.network)
    a, b = onnx(x), torch(x)
    assert a.shape == b.shape == (shape[0], *shape[1:]) and a.dtype == np.float32
    assert np.abs(a - b).max() <= inference.TOLERANCE
    assert a.max() > 0.5 and a.min() < 0.01  # a constant would also agree


def test_a_network_that_reads_evidence_exports_with_its_extra_channel() -> None:
    import torch

    torch.manual_seed(0)
    network = fuse_batchnorm(build("ef-fpn-s", evidence=("classical",)).eval())
    x = inputs(13, (2, 64, 64), seed=1)
    a = inference.onnx_predictor(network, inference.onnxruntime_module())(x)
    assert np.abs(a - inference.torch_predictor(network)(x)).max() <= inference.TOLERANCE


def run_with(scene, out: Path, backend: str) -> tuple[np.ndarray, dict]:
    code = main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out", str(out),
                 "--method", "cnn", "--backend", backend])
    assert code == 0
    with rasterio.open(out / "change.tif") as src:
        score = src.read(1, masked=True).filled(np.nan)
    return score, json.loads((out / "run.json").read_text())


def test_run_scores_the_same_in_onnxruntime_and_torch(scene, tmp_path: Path) -> None:
    onnx, onnx_record = run_with(scene, tmp_path / "onnx", "onnxruntime")
    torch, torch_record = run_with(scene, tmp_path / "torch", "torch")
    assert onnx_record["model"]["backend"]["name"] == "onnxruntime"
    assert torch_record["model"]["backend"]["name"] == "torch" and torch_record["model"]["backend"]["version"]
    assert onnx_record["counts"]["cnn_tiles"] > 0
    assert np.array_equal(np.isnan(onnx), np.isnan(torch)) and np.isfinite(onnx).any()
    assert np.nanmax(np.abs(onnx - torch)) <= inference.TOLERANCE
    assert onnx_record["counts"] == torch_record["counts"]


def test_without_onnxruntime_auto_runs_in_torch_and_onnxruntime_is_refused(
        scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(inference, "onnxruntime_module", lambda: None)
    monkeypatch.setattr(inference, "_predictors", {})
    loaded = weights.load(default_model_path())
    assert inference.predictor(loaded, "auto").backend == "torch"
    with pytest.raises(InputError, match=r"pip install '\.\[onnx\]'"):
        inference.predictor(loaded, "onnxruntime")
    _, record = run_with(scene, tmp_path / "auto", "auto")
    assert record["model"]["backend"]["name"] == "torch"
    code = main(["-q", "run", "--before", str(scene.before), "--after", str(scene.after), "--out",
                 str(tmp_path / "refused"), "--method", "cnn", "--backend", "onnxruntime"])
    err = capsys.readouterr().err
    assert code == 2 and "onnxruntime" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_the_shipped_export_is_of_the_shipped_weights() -> None:
    """Fails after the weights are retrained until ``python scripts/export_onnx.py`` is rerun (a stale export is
    ignored by run, which then exports in memory: right scores, a slower start)."""
    ort = inference.onnxruntime_module()
    session = inference._session(ort, inference.export_path(default_model_path()).read_bytes())
    meta = session.get_modelmeta().custom_metadata_map
    loaded = weights.load(default_model_path())
    assert meta["source_sha256"] == loaded.sha256, "rerun python scripts/export_onnx.py"
    assert json.loads(meta["card"]) == loaded.card
    x = inputs(12, (2, 64, 64))
    assert np.abs(session.run(None, {"x": x})[0] - inference.torch_predictor(loaded.network)(x)).max() <= \
        inference.TOLERANCE


def test_a_model_with_a_matching_export_runs_without_torch(scene, tmp_path: Path) -> None:
    code = ("import sys; from detector.cli import main; "
            f"code = main(['-q', 'run', '--before', {str(scene.before)!r}, '--after', {str(scene.after)!r}, "
            f"'--out', {str(tmp_path / 'out')!r}, '--method', 'cnn']); "
            "print(code, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-2:] == ["0", "False"], done.stderr
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["model"]["backend"]["name"] == "onnxruntime"
    assert record["model"]["sha256"] == weights.load(default_model_path()).sha256
    assert record["model"]["standardized_over_px"] == 256  # 128-px training tiles, the coarser of 2 x 2 blocks


def test_an_export_of_other_weights_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(default_model_path().read_bytes())
    import torch

    torch.manual_seed(0)
    other = weights.load(default_model_path())
    other = weights.LoadedModel(fuse_batchnorm(build("ef-fpn-s").eval()), other.card, model, other.sha256)
    monkeypatch.setattr(inference, "_predictors", {})
    inference.write_export(other, inference.export_path(model))
    assert inference.load(model).network is None  # the export matches the file: read without torch
    monkeypatch.setattr(inference, "_predictors", {})
    weights.save(weights.load(default_model_path(), for_training=True).network, {**other.card, "name": "changed"},
                 model)  # other bytes: the export is stale
    loaded = inference.load(model)
    assert loaded.network is not None and loaded.card["name"] == "changed"
    x = inputs(12, (2, 64, 64))
    expected = inference.torch_predictor(weights.load(default_model_path()).network)(x)
    assert np.abs(inference.predictor(loaded)(x) - expected).max() <= inference.TOLERANCE


def test_a_damaged_export_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "m.pt"
    model.write_bytes(default_model_path().read_bytes())
    inference.export_path(model).write_bytes(b"not an onnx model")
    monkeypatch.setattr(inference, "_predictors", {})
    loaded = inference.load(model)
    assert loaded.network is not None and inference.predictor(loaded).backend == "onnxruntime"
