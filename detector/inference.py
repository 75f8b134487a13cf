"""Where the change CNN runs: ONNX Runtime when it is installed, else torch, behind one array contract.

A :class:`Predictor` takes what :func:`detector.adapter.adapt` makes,
``(N, C, H, W) float32``, and returns change probabilities ``(N, H, W)
float32 in [0, 1]``, exactly as :func:`detector.model.predict` does.  The
``onnxruntime`` backend exports the loaded network (batch norm already
folded) to ONNX in memory, once per process and model, with dynamic batch,
height and width, and runs it in an ONNX Runtime session of one thread: the
scan's worker threads already keep every core busy, as with torch
(:func:`detector.scan.one_torch_thread`).  Against the torch path (batch norm
folded, ``channels_last``, one thread per call) its compute measured about
even on the 2-core development machine (README *Measured*); what it saves is
the start, where a matching export lets the run skip torch.  Both backends
give the same probabilities within :data:`TOLERANCE` (``tests/test_inference.py``).

Backends: ``auto`` (ONNX Runtime when ``onnxruntime`` imports; torch
otherwise: ``pip install '.[onnx]'``), ``onnxruntime`` (refused with one line
when it is missing) or ``torch``.

An export beside the model file (``X.onnx`` beside ``X.pt``, written by
:func:`write_export`: ``python scripts/export_onnx.py X.pt``; the shipped
weights have one) holds the card and the SHA-256 of the model file it was
exported from; where that hash matches, :func:`load` reads the model from it
without importing torch (1.3 s and about 200 MB less per run: README
*Measured*).  An export that does not match is ignored (the network is
exported again in memory, which needs ``onnx``), so a retrained model never
runs with stale weights.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.adapter import in_batches
from detector.errors import InputError, first_line
from detector.files import atomic
from detector.weights import LoadedModel

if TYPE_CHECKING:  # torch is imported only when a model runs in it or is exported
    from torch import nn

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch")
TOLERANCE = 1e-4  # largest difference of a probability between the backends (measured: about 1e-6)
BATCH = 4  # tiles per call: small batches keep the feature maps in cache (README *Measured*)
OPSET = 17


@dataclass(frozen=True, slots=True)
class Predictor:
    """The CNN of one model on one backend; safe to call from several threads.

    ``run(inputs)`` maps ``(n, C, H, W)`` float32 with ``H`` and ``W``
    multiples of :data:`detector.adapter.STRIDE` to probabilities ``(n, H, W)``.
    """

    backend: str  # "onnxruntime" or "torch"
    version: str
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Change probability per pixel.

        Parameters
        ----------
        inputs : ndarray, shape (N, C, H, W), float32, as made by :func:`detector.adapter.adapt`;
            H and W need not be multiples of :data:`detector.adapter.STRIDE` (edges are replicated).

        Returns
        -------
        ndarray, shape (N, H, W), float32 in [0, 1]
        """
        return in_batches(inputs, self.run, batch=BATCH)

    def record(self) -> dict[str, str]:
        """What ``run.json`` says about where the CNN ran."""
        return {"name": self.backend, "version": self.version}


def onnxruntime_module() -> ModuleType | None:
    """``onnxruntime``, or None when it is not installed."""
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


def exporter_available() -> bool:
    """Whether torch can export to ONNX here: ``torch.onnx.export`` serializes through the ``onnx`` package."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return False
    return True


def export_path(path: Path) -> Path:
    """Where the ONNX export of the model file ``path`` lies: beside it, ``.onnx`` for its suffix."""
    return Path(path).with_suffix(".onnx")


def load(path: Path, backend: str = "auto") -> LoadedModel:
    """The model file ``path``; from its export (:func:`export_path`) without torch where that matches the file
    and the backend is ONNX Runtime, else by :func:`detector.weights.load`."""
    exported = export_path(path)
    ort = onnxruntime_module() if backend != "torch" else None
    if ort is not None and exported.is_file() and Path(path).is_file():
        sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        try:
            session = _session(ort, exported.read_bytes())
        except Exception as exc:  # ONNX Runtime's own errors: a damaged or foreign file beside the model
            log.warning("%s is not an ONNX model ONNX Runtime reads (%s): ignored", exported, first_line(exc))
            session = None
        meta = session.get_modelmeta().custom_metadata_map if session is not None else {}
        if session is not None and meta.get("source_sha256") == sha256:
            model = LoadedModel(None, json.loads(meta["card"]), Path(path), sha256)
            with _lock:
                _predictors[(sha256, backend)] = Predictor("onnxruntime", ort.__version__,
                                                           functools.partial(_onnx_run, session))
            return model
        log.info("%s was exported from another version of %s: exporting it again", exported, path)
    from detector import weights

    return weights.load(path)


def write_export(model: LoadedModel, path: Path) -> None:
    """Write the ONNX export of ``model`` (from :func:`detector.weights.load`) to ``path``, with its card and the
    SHA-256 of its model file, for :func:`load`."""
    import onnx

    if model.network is None:
        raise ValueError(f"{model.path} was read without its network: load it with detector.weights.load")
    proto = onnx.load_model_from_string(export_onnx(model.network))
    onnx.helper.set_model_props(proto, {"source_sha256": model.sha256, "card": json.dumps(model.card)})
    with atomic(path, suffix=".onnx") as tmp:
        onnx.save_model(proto, str(tmp))


_lock = threading.Lock()
_predictors: dict[tuple[str, str], Predictor] = {}


def predictor(model: LoadedModel, backend: str = "auto") -> Predictor:
    """The :class:`Predictor` of ``model`` on ``backend`` (one of :data:`BACKENDS`), made once per process
    and model file (``model.sha256``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {list(BACKENDS)}")
    with _lock:  # the scan's worker threads may ask at once; the export runs once
        key = (model.sha256, backend)
        if key not in _predictors:
            _predictors[key] = _make(model, backend)
        return _predictors[key]


def _make(model: LoadedModel, backend: str) -> Predictor:
    network = model.network if model.network is not None else _network(model.path)
    if backend != "torch":
        ort = onnxruntime_module()
        if ort is not None and exporter_available():
            return onnx_predictor(network, ort)
        if backend == "onnxruntime":
            raise InputError("--backend onnxruntime: onnxruntime (or onnx, to export the model) is not installed: "
                             "pip install '.[onnx]', or choose --backend torch or auto")
        log.info("%s is not installed: the CNN runs in torch (pip install '.[onnx]')",
                 "onnxruntime" if ort is None else "onnx (to export the model)")
    return torch_predictor(network)


def _network(path: Path) -> nn.Module:
    """The network of a model read from its export by :func:`load` (which made its ONNX predictor), for
    another backend."""
    from detector import weights

    network = weights.load(path).network
    if network is None:
        raise ValueError(f"{path}: weights.load gave no network")
    return network


def torch_predictor(network: Any) -> Predictor:
    """The network in torch (:func:`detector.model.predict`), on the calling thread's torch threads."""
    import torch

    from detector.model import predict

    return Predictor("torch", torch.__version__, functools.partial(_torch_run, predict, network))


def _torch_run(predict: Callable[..., np.ndarray], network: Any, x: np.ndarray) -> np.ndarray:
    return predict(network, x, batch=len(x))  # one batch of in_batches, already padded


def onnx_predictor(network: Any, ort: ModuleType, *, threads: int = 1) -> Predictor:
    """The network exported to ONNX in memory and run in an ONNX Runtime session of ``threads`` threads."""
    session = _session(ort, export_onnx(network), threads=threads)
    return Predictor("onnxruntime", ort.__version__, functools.partial(_onnx_run, session))


def _session(ort: ModuleType, model: bytes, *, threads: int = 1) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _onnx_run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"x": x})[0]


def export_onnx(network: nn.Module) -> bytes:
    """``network`` (eval mode) as an ONNX model of probabilities: input ``x`` (N, C, H, W) float32, output
    ``probability`` (N, H, W), with N, H and W dynamic (H, W multiples of :data:`detector.adapter.STRIDE`)."""
    import torch
    from torch import nn

    class Probability(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(self.inner(x))[:, 0]

    channels = next(m for m in network.modules() if isinstance(m, nn.Conv2d)).in_channels
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter: it needs no onnxscript
        torch.onnx.export(Probability(network).eval(), (torch.zeros(1, channels, 64, 64),),
                          buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to any file object
                          dynamo=False,
                          input_names=["x"], output_names=["probability"], opset_version=OPSET,
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "probability": {0: "n", 1: "h", 2: "w"}})
    return buffer.getvalue()
