"""Helpers shared by the tests (plain functions and constants; the fixtures are in
``conftest.py``). ``tests/`` is on ``sys.path`` (``pythonpath`` in pyproject.toml), so every
test folder imports them as ``from helpers import ...``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS = Path(os.environ.get("SEMISEG_HIPPOCAMPUS", ROOT.parent / "shared/data/hippocampus"))
EXAMPLE_DIR = ROOT / "examples" / "data"


def synthetic_volume(shape=(12, 40, 36), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy volume with two blob classes (1: bright disc, 2: dark square) on a mid-grey
    background; returns (image float32 (Z, Y, X), labels uint8 (Z, Y, X))."""
    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(shape, np.uint8)
    for k in range(z):
        cy, cx = h / 3 + 2 * np.sin(k / 3), w / 3 + 2 * np.cos(k / 4)
        labels[k][(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) / 6) ** 2] = 1
        labels[k, int(h * 0.6) : int(h * 0.85), int(w * 0.55) : int(w * 0.85)] = 2
    image = np.where(labels == 1, 200.0, np.where(labels == 2, 40.0, 110.0))
    image = image + rng.normal(0, 15, shape)
    return image.astype(np.float32), labels


def growing_disc(shape=(12, 40, 36), first: int = 2, last: int = 9) -> np.ndarray:
    """uint8 labels: a disc of class 1 whose radius grows linearly from 4 (slice ``first``)
    to 10 (slice ``last``), labeled on those two slices only."""
    _, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    labels = np.zeros(shape, np.uint8)
    for s, radius in ((first, 4.0), (last, 10.0)):
        labels[s][(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < radius**2] = 1
    return labels
