"""Write the ONNX export beside a model file, so that ``detector run`` reads it without importing torch.

    python scripts/export_onnx.py [MODEL.pt ...]   (default: the shipped weights)

Writes ``MODEL.onnx`` (:func:`detector.inference.write_export`) with the
model's card and the SHA-256 of ``MODEL.pt``; an export whose hash no longer
matches its model file is ignored by ``run``.  Rerun it after retraining the
shipped weights (``tests/test_inference.py`` fails until then).
"""

from __future__ import annotations

import sys
from pathlib import Path

from detector import inference, weights
from detector.methods import default_model_path


def main(argv: list[str]) -> int:
    for path in [Path(a) for a in argv] or [default_model_path()]:
        target = inference.export_path(path)
        inference.write_export(weights.load(path), target)
        print(f"{target}: {target.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
