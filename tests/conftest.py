"""Shared fixtures: tiny synthetic volumes (fast, always available) and the hippocampus data
(skipped cleanly when ../shared/data/hippocampus is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Tiny networks gain nothing from intra-op threads, and on a shared 2-core machine a second
# thread was measured 5-10x slower: the suite runs single-threaded.
torch.set_num_threads(1)

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(
    "one_torch_thread")``): the tiny networks gain nothing from a second OpenMP thread, and on
    a shared 2-core machine threads competing with other processes made steps ~15x slower.
    Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sparse_niftis(tmp_path, tiny_volume) -> Path:
    """``image.nii.gz`` and ``labels.nii.gz`` (slices 3 and 8 labeled) of the tiny volume in
    ``tmp_path``, which is returned."""
    import nibabel as nib

    image, labels = tiny_volume
    sparse = np.zeros_like(labels)
    sparse[[3, 8]] = labels[[3, 8]]
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "image.nii.gz")
    nib.save(nib.Nifti1Image(sparse, np.eye(4)), tmp_path / "labels.nii.gz")
    return tmp_path


@pytest.fixture
def tiny_volume() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_volume()


@pytest.fixture
def hippocampus() -> Path:
    if not (HIPPOCAMPUS / "splits.json").exists():
        pytest.skip("hippocampus data not found (../shared/data/hippocampus)")
    return HIPPOCAMPUS
