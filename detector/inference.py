"""Where the change CNN runs: ONNX Runtime when it is installed, else torch, behind one array contract.

A :class:`Predictor` takes what :func:`detector.model.adapt` makes,
``(N, C, H, W) float32``, and returns change probabilities ``(N, H, W)
float32 in [0, 1]``, exactly as :func:`detector.model.predict` does.  The
``onnxruntime`` backend exports the loaded network (batch norm already
folded) to ONNX in memory, once per process and model, with dynamic batch,
height and width, and runs it in an ONNX Runtime session of one thread: the
scan's worker threads already keep every core busy, as with torch
(:func:`detector.scan.one_torch_thread`).  On the 2-core development machine
the same network goes 2.5x faster in ONNX Runtime than in torch
(``../shared/PERFORMANCE.md``; README *Measured*).  Both backends give the
same probabilities within :data:`TOLERANCE` (``tests/test_inference.py``).

Backends: ``auto`` (ONNX Runtime when ``onnxruntime`` and ``onnx``, which
torch's exporter needs, import; torch otherwise: ``pip install '.[onnx]'``),
``onnxruntime`` (refused with one line when it is missing) or ``torch``.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.errors import InputError

if TYPE_CHECKING:  # torch is imported only when a model is used
    from detector.weights import LoadedModel

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "torch")
TOLERANCE = 1e-4  # largest difference of a probability between the backends (measured: about 1e-6)
BATCH = 4  # tiles per call: small batches keep the feature maps in cache (README *Measured*)
OPSET = 17


@dataclass(frozen=True, slots=True)
class Predictor:
    """The CNN of one model on one backend; safe to call from several threads.

    ``run(inputs)`` maps ``(n, C, H, W)`` float32 with ``H`` and ``W``
    multiples of :data:`detector.model.STRIDE` to probabilities ``(n, H, W)``.
    """

    backend: str  # "onnxruntime" or "torch"
    version: str
    run: Callable[[np.ndarray], np.ndarray]

    def __call__(self, inputs: np.ndarray) -> np.ndarray:
        """Change probability per pixel.

        Parameters
        ----------
        inputs : ndarray, shape (N, C, H, W), float32, as made by :func:`detector.model.adapt`;
            H and W need not be multiples of :data:`detector.model.STRIDE` (edges are replicated).

        Returns
        -------
        ndarray, shape (N, H, W), float32 in [0, 1]
        """
        from detector.model import STRIDE

        n, _, h, w = inputs.shape
        ph, pw = -h % STRIDE, -w % STRIDE
        out = np.empty((n, h, w), dtype=np.float32)
        for start in range(0, n, BATCH):
            x = np.ascontiguousarray(inputs[start:start + BATCH], dtype=np.float32)
            if ph or pw:
                x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")
            out[start:start + BATCH] = self.run(x)[:, :h, :w]
        return out

    def record(self) -> dict[str, str]:
        """What ``run.json`` says about where the CNN ran."""
        return {"name": self.backend, "version": self.version}


def onnxruntime_module() -> ModuleType | None:
    """``onnxruntime``, or None when it (or ``onnx``, which the exporter needs) is not installed."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export serializes through it)
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime


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
    if backend != "torch":
        ort = onnxruntime_module()
        if ort is not None:
            return onnx_predictor(model.network, ort)
        if backend == "onnxruntime":
            raise InputError("--backend onnxruntime: onnxruntime (or onnx) is not installed: "
                             "pip install '.[onnx]', or choose --backend torch or auto")
        log.info("onnxruntime is not installed: the CNN runs in torch (pip install '.[onnx]' runs it faster)")
    return torch_predictor(model.network)


def torch_predictor(network: Any) -> Predictor:
    """The network in torch (:func:`detector.model.predict`), on the calling thread's torch threads."""
    import torch

    from detector.model import predict

    return Predictor("torch", torch.__version__, functools.partial(_torch_run, predict, network))


def _torch_run(predict: Callable[..., np.ndarray], network: Any, x: np.ndarray) -> np.ndarray:
    return predict(network, x, batch=BATCH)


def onnx_predictor(network: Any, ort: ModuleType, *, threads: int = 1) -> Predictor:
    """The network exported to ONNX in memory and run in an ONNX Runtime session of ``threads`` threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(export_onnx(network), options, providers=["CPUExecutionProvider"])
    return Predictor("onnxruntime", ort.__version__, functools.partial(_onnx_run, session))


def _onnx_run(session: Any, x: np.ndarray) -> np.ndarray:
    return session.run(None, {"x": x})[0]


def export_onnx(network: Any) -> bytes:
    """``network`` (eval mode) as an ONNX model of probabilities: input ``x`` (N, C, H, W) float32, output
    ``probability`` (N, H, W), with N, H and W dynamic (H, W multiples of :data:`detector.model.STRIDE`)."""
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
