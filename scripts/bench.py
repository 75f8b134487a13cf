"""Time ``detector run`` in cell mode on a Sentinel-2-sized pair against a plain read.

Generates (once, cached in ``--data``) a 10980 x 10980, 4-band (blue, green,
red, nir), uint16, DEFLATE-tiled GeoTIFF pair in UTM with new compounds planted
in the after date (``quiet``), and a second after date (``noisy``) that also
has square-edged patches of ground that changed level, enough to flag over a
thousand cells; then measures for each of ``--scenes``, each in a fresh
process so peak memory is its own:

- ``plain``: a plain rasterio read of both files, whole, with rasterio's
  default settings (``rasterio.open(path).read()``: GDAL decodes on one thread);
- ``threaded``: the same read with GDAL's decoding threads on
  (``GDAL_NUM_THREADS=ALL_CPUS``), the fastest read we know;
- ``run:<method>``: the whole ``detector run`` in cell mode (500 m cells) on
  the pair, for each ``--methods`` (classical, cnn, fused);
- ``cnn``: inference of the shipped model alone on random 256 x 256 tiles of
  6 bands x 2 dates, batched, batch norm folded, channels_last: one call
  with 2 torch threads, and 2 Python threads with 1 torch thread each (what
  ``run`` does), at batches of 2 to 16 tiles (``run`` passes 4); then the same
  network exported to ONNX Runtime (``--backend onnxruntime``), at batch 4, one
  call of a 2-thread session and 2 Python threads over 1-thread sessions.

Prints megapixels per second (spatial pixels of both dates), wall time, peak
resident memory and the ratio of the run's speed to each read's.

    python scripts/bench.py [--size 10980] [--data /tmp/detector-bench] [--repeat 1] [--bin 0]
                            [--methods classical,fused] [--backend auto] [--scenes quiet,noisy] [--skip-runs]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from detector.files import atomic

BANDS = ("blue", "green", "red", "nir")
READS = {"plain": None, "threaded": "ALL_CPUS"}
LEVELS = np.array([900, 1100, 1300, 2600], dtype=np.float32)[:, None, None]


def scene_rows(rng: np.random.Generator, rows: slice, size: int, *, after: bool,
               patches: np.ndarray | None = None) -> np.ndarray:
    """Rows of a synthetic scene: smooth fields, texture, noise; compounds in the after date, and there the
    ``patches`` (K, 5: row, col, height, width, change of level) of the noisy scene."""
    y = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]
    x = np.arange(size, dtype=np.float32)[None, :]
    fields = ((np.floor(y / 97) * 7 + np.floor(x / 131) * 3) % 5) * 60
    ripples = 80 * np.sin(x / 37.0) * np.cos(y / 53.0)
    data = LEVELS + (fields + ripples)[None] + rng.normal(scale=30, size=(4, y.size, size)).astype(np.float32)
    if after:
        data = data * 1.08 + 120
        block = ((y // 1500) % 3 == 1) & ((x // 1500) % 3 == 1) & ((y % 1500) < 300) & ((x % 1500) < 400)
        roofs = block & ((y % 20) < 10) & ((x % 30) < 22)
        data = np.where(roofs[None], LEVELS * 3.2, data)
    for r, c, h, w, step in patches if patches is not None else ():
        top, bottom = max(int(r), rows.start), min(int(r + h), rows.stop)
        if top < bottom:
            data[:, top - rows.start:bottom - rows.start, int(c):int(c + w)] += step
    return np.clip(data, 1, 65535).astype(np.uint16)


# The noisy scene: fields ploughed, flooded or cleared between the dates, square-edged patches of
# 3-15 pixels a side that change level, enough of them that over a thousand 500 m cells flag.
PATCHES_PER_MPX = 15


def noisy_patches(size: int) -> np.ndarray:
    """(K, 5) patches of the noisy scene's after date: row, column, height, width, change of level."""
    rng = np.random.default_rng(7)
    count = int(PATCHES_PER_MPX * size * size / 1e6)
    corner = rng.integers(0, size - 16, size=(count, 2))
    sides = rng.integers(3, 16, size=(count, 2))
    step = rng.choice([-1.0, 1.0], size=count) * rng.uniform(250, 600, size=count)
    return np.column_stack([corner, sides, step])


SCENES = ("quiet", "noisy")


def make_pair(folder: Path, size: int, scene: str = "quiet") -> tuple[Path, Path]:
    """The bench pair of ``scene`` (the two scenes share the before date), written once into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tag = "" if scene == "quiet" else f"{scene}_"
    paths = (folder / f"before_{size}_2017-06-01.tif", folder / f"after_{size}_{tag}2018-06-01.tif")
    profile = dict(driver="GTiff", width=size, height=size, count=4, dtype="uint16", crs="EPSG:32645",
                   transform=from_origin(399960, 4900020, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="deflate", interleave="pixel", NUM_THREADS="ALL_CPUS")
    patches = noisy_patches(size) if scene == "noisy" else None
    for path, after in zip(paths, (False, True), strict=True):
        if path.exists():
            continue
        rng = np.random.default_rng(1 if after else 0)
        with atomic(path, suffix=".tif") as tmp, rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, size, 512):
                rows = slice(r0, min(r0 + 512, size))
                dst.write(scene_rows(rng, rows, size, after=after, patches=patches if after else None),
                          window=Window(0, r0, size, rows.stop - r0))
            for i, name in enumerate(BANDS, start=1):
                dst.set_band_description(i, name)
    return paths


def plain_read(paths: list[str], threads: str | None) -> None:
    options = {"GDAL_NUM_THREADS": threads} if threads else {}
    with rasterio.Env(**options):
        for path in paths:
            with rasterio.open(path) as src:
                src.read()


def cnn_rate(*, tiles: int = 256, batch: int = 4, split_threads: bool) -> float:
    """Tiles of 256 x 256 per second through the shipped model."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from detector import weights
    from detector.methods import default_model_path
    from detector.model import predict

    network = weights.load(default_model_path()).network
    data = np.random.default_rng(0).normal(size=(tiles, 12, 256, 256)).astype(np.float32)
    torch.set_num_threads(1 if split_threads else 2)
    predict(network, data[:batch], batch=batch)  # warm up
    start = time.perf_counter()
    if split_threads:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda half: predict(network, half, batch=batch), np.array_split(data, 2)))
    else:
        predict(network, data, batch=batch)
    return tiles / (time.perf_counter() - start)


def onnx_rate(*, tiles: int = 256, split_threads: bool) -> float:
    """Tiles of 256 x 256 per second through the shipped model in ONNX Runtime, batches of 4."""
    from concurrent.futures import ThreadPoolExecutor

    from detector import inference, weights
    from detector.methods import default_model_path

    network = weights.load(default_model_path()).network
    ort = inference.onnxruntime_module()
    run = inference.onnx_predictor(network, ort, threads=1 if split_threads else 2)
    data = np.random.default_rng(0).normal(size=(tiles, 12, 256, 256)).astype(np.float32)
    run(data[:4])  # warm up
    start = time.perf_counter()
    if split_threads:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(run, np.array_split(data, 2)))
    else:
        run(data)
    return tiles / (time.perf_counter() - start)


def child(kind: str, paths: tuple[Path, Path], out: Path, bin_factor: int = 0,
          backend: str = "auto") -> dict[str, float]:
    """Run one measurement in a fresh process; return wall seconds and peak RSS in MB."""
    if kind in READS:
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench; " \
               f"bench.plain_read({[str(p) for p in paths]!r}, {READS[kind]!r})"
        command = [sys.executable, "-c", code]
    else:
        command = [sys.executable, "-m", "detector", "-q", "run", "--before", str(paths[0]), "--after",
                   str(paths[1]), "--out", str(out / kind), "--overwrite", "--cell-m", "500", "--bin", str(bin_factor),
                   "--method", kind.split(":")[1], "--backend", backend]
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{kind} failed with status {status}")
    return {"wall_s": wall, "peak_mb": usage.ru_maxrss / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10980)
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "detector-bench")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--bin", type=int, default=0, help="detector run --bin (0, the run's default: every pixel of "
                        "the bench's 10 m scene)")
    parser.add_argument("--methods", default="classical,fused", help="detector run --method values to time")
    parser.add_argument("--backend", default="auto", help="detector run --backend (auto, onnxruntime, torch)")
    parser.add_argument("--skip-runs", action="store_true", help="only the CNN inference rate")
    parser.add_argument("--scenes", default=",".join(SCENES), help="quiet (compounds only), noisy (and patches that "
                        "flag over a thousand cells)")
    args = parser.parse_args()
    if args.skip_runs:
        return report_cnn()
    for scene in args.scenes.split(","):
        if scene not in SCENES:
            raise SystemExit(f"--scenes: {scene!r} is not one of {', '.join(SCENES)}")
        bench_scene(args, scene)
    return report_cnn()  # last: a child forked after it would report this process's memory as its own peak


def bench_scene(args: argparse.Namespace, scene: str) -> None:
    """The reads and runs of one scene, each in a fresh process, best of ``--repeat``; printed."""
    tic = time.perf_counter()
    paths = make_pair(args.data, args.size, scene)
    print(f"{scene} pair ready in {time.perf_counter() - tic:.0f} s: {[p.stat().st_size // 2**20 for p in paths]} MiB")
    mpx = 2 * args.size * args.size / 1e6
    runs = [f"run:{m}" for m in args.methods.split(",")]
    out = args.data / "out" / scene
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in (*READS, *runs)}
    for _ in range(args.repeat):
        for kind in results:
            results[kind].append(child(kind, paths, out, args.bin, args.backend))
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in results.items()}
    for kind, r in best.items():
        print(f"{scene} {kind:>13}: {r['wall_s']:6.1f} s  {mpx / r['wall_s']:6.1f} Mpx/s  peak {r['peak_mb']:7.0f} MB")
    for run in runs:
        for kind in READS:
            ratio = best[kind]["wall_s"] / best[run]["wall_s"]
            print(f"{scene} {run} speed / {kind} read speed = {ratio:.2f}")
        record = json.loads((out / run / "run.json").read_text())
        print(f"{scene} {run} stages (bin_applied {record.get('bin_applied', args.bin)}): {record['timings_s']}; "
              f"peak {best[run]['peak_mb']:.0f} MB")
        counts = record["counts"]
        print(f"{scene} {run}: {counts['flagged']} of {counts['sites']} cells flagged, {counts['candidates']} "
              f"candidates; the CNN ran on {counts['cnn_tiles']} of {counts['tiles']} tiles", flush=True)


def report_cnn() -> int:
    for split in (False, True):
        for batch in (2, 4, 8, 16):
            rate = max(cnn_rate(split_threads=split, batch=batch) for _ in range(2))
            label = "2 threads x 1 torch thread" if split else "1 call, 2 torch threads"
            print(f"cnn inference ({label}, batch {batch:2d}): {rate:6.0f} tiles/s of 256 x 256 (target >= 150)",
                  flush=True)
    from detector import inference

    if inference.onnxruntime_module() is None:
        print("cnn inference in ONNX Runtime: not installed (pip install '.[onnx]')")
        return 0
    for split in (False, True):
        rate = max(onnx_rate(split_threads=split) for _ in range(2))
        label = "2 threads x 1-thread session" if split else "1 call, 2-thread session"
        print(f"cnn inference, ONNX Runtime ({label}, batch  4): {rate:6.0f} tiles/s of 256 x 256", flush=True)
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.exit(main())
