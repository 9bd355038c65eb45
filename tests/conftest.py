"""Shared fixtures: tiny synthetic volumes (fast, always available) and the hippocampus data
(skipped cleanly when ../shared/data/hippocampus is absent). They apply to every test folder
(``core/``, ``cli/``, ``plugin/``); plain helpers live in ``helpers.py``, not here: import
them with ``from helpers import ...``, never from ``conftest``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import HIPPOCAMPUS, synthetic_volume

# Tiny networks gain nothing from intra-op threads, and on a shared 2-core machine a second
# thread was measured 5-10x slower: the suite runs single-threaded.
torch.set_num_threads(1)


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
