"""Peak memory of `semiseg train` and `semiseg predict` on volumes larger than memory allows.

Writes synthetic uint16 zarr volumes (a bright ellipsoid in noise; 3 labeled slices of a
uint8 label store) of two sizes once into ``--work``, then runs, each in its own process,
measuring its peak resident memory (``ru_maxrss`` of the child) and wall time:

- ``semiseg train --method dfcps`` for a few iterations (two networks, unlabeled slices read
  slab by slab);
- ``semiseg predict`` into a zarr store (streamed), with a tiny supervised U-Net trained for
  2 iterations on the same data (prediction memory does not depend on the method; its time
  does, and this keeps the benchmark to minutes);
- on the smaller volume, the same two commands with the lazy path switched off
  (``SEMISEG_LAZY_VOXELS`` set huge): the in-memory baseline for memory and throughput.

Usage: python benchmarks/large_volumes.py [--sizes-gb 0.5 2] [--work /tmp/semiseg-large]
Writes benchmarks/results/large_volumes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, machine  # noqa: E402

SIDE = 512  #: in-plane size (Y = X; one inference tile); Z grows with the size
LABELED = (0.25, 0.5, 0.75)  #: labeled slices, as fractions of Z
NET = "channels=4,8,16,32,64"
PEAK = (
    "import resource, subprocess, sys, time; t = time.perf_counter(); "
    "code = subprocess.run(sys.argv[1:]).returncode; "
    "print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def write_volume(folder: Path, z: int) -> tuple[Path, Path]:
    """image.zarr (uint16, z x SIDE x SIDE) and labels.zarr (uint8, 3 labeled slices)."""
    import zarr

    image_path, labels_path = folder / "image.zarr", folder / "labels.zarr"
    if image_path.exists() and labels_path.exists():
        return image_path, labels_path
    folder.mkdir(parents=True, exist_ok=True)
    shape, chunks = (z, SIDE, SIDE), (64, 256, 256)
    image = zarr.open_array(str(image_path), mode="w", shape=shape, chunks=chunks, dtype="u2")
    labels = zarr.open_array(str(labels_path), mode="w", shape=shape, chunks=chunks, dtype="u1")
    yy, xx = np.mgrid[:SIDE, :SIDE]
    rng = np.random.default_rng(0)
    labeled = {int(f * z) for f in LABELED}
    for z0 in range(0, z, 64):
        zz = np.arange(z0, min(z, z0 + 64))[:, None, None]
        inside = ((zz - z / 2) / (z / 3)) ** 2 + ((yy - SIDE / 2) / 300) ** 2 + (
            (xx - SIDE / 2) / 200
        ) ** 2 < 1
        noise = rng.normal(1000, 200, inside.shape)
        image[z0 : z0 + len(zz)] = np.clip(noise + 800 * inside, 0, 65535).astype(np.uint16)
        for s in labeled & set(range(z0, z0 + len(zz))):
            labels[s] = inside[s - z0].astype(np.uint8)
    return image_path, labels_path


def run(argv: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PEAK, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    code, seconds, kb = out.stdout.strip().splitlines()[-1].split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{out.stdout[-2000:]}")
    return {"exit": int(code), "seconds": round(float(seconds), 1), "peak_mb": int(kb) // 1024}


def measure(folder: Path, z: int, eager: bool) -> dict:
    semiseg = str(Path(sys.executable).with_name("semiseg"))
    image, labels = write_volume(folder, z)
    tag = "in_memory" if eager else "lazy"
    env = {"SEMISEG_LAZY_VOXELS": str(10**15)} if eager else None
    run_dir, pred = folder / f"run_{tag}", folder / f"pred_{tag}.zarr"
    sup_dir = folder / f"run_{tag}_supervised"
    for path in (run_dir, pred, sup_dir):
        shutil.rmtree(path, ignore_errors=True)
    data = [semiseg, "train", "--image", str(image), "--labels", str(labels)]
    data += ["--patch", "128", "--batch-size", "4", "--set", NET]
    train = [*data, "--method", "dfcps", "--iterations", "5", "--out", str(run_dir)]
    quick = [*data, "--method", "supervised", "--iterations", "2", "--out", str(sup_dir)]
    predict = [semiseg, "predict", "--model", str(sup_dir), "--image", str(image)]
    predict += ["--out", str(pred), "--batch-size", "8"]
    row = {"z": z, "gb_on_disk_raw": round(z * SIDE * SIDE * 2 / 2**30, 2), "path": tag}
    row["train"] = run(train, env)
    run(quick, env)
    row["predict"] = run(predict, env)
    row["predict"]["slices_per_s"] = round(z / row["predict"]["seconds"], 2)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes-gb", type=float, nargs="+", default=[0.5, 2.0])
    ap.add_argument("--work", default="/tmp/semiseg-large")
    ap.add_argument("--keep", action="store_true", help="keep the volumes for another run")
    args = ap.parse_args()
    work = Path(args.work)
    rows = []
    t0 = time.perf_counter()
    for i, gb in enumerate(args.sizes_gb):
        z = int(round(gb * 2**30 / (SIDE * SIDE * 2)))
        rows.append(measure(work / f"z{z}", z, eager=False))
        if i == 0:
            rows.append(measure(work / f"z{z}", z, eager=True))
    result = {"machine": machine(), "side": SIDE, "rows": rows, "seconds": time.perf_counter() - t0}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "large_volumes.json").write_text(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
