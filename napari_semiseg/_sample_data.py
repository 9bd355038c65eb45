"""Sample data: a hippocampus MRI with three annotated slices, and its ground truth.

The volume is case ``hippocampus_003`` of the Medical Segmentation Decathlon (Task04, CC-BY-SA
4.0; see ``sample_data/ATTRIBUTION.md``). The ``labels`` layer keeps only slices 10, 16 and
22 along axis 0 of the expert mask (the slices the ``make demo`` run uses), so a first-time
user can train, review and compare with the ``ground truth`` layer within a minute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_semiseg._reader import layer_geometry
from napari_semiseg.io import read_labels, read_volume

DATA = Path(__file__).parent / "sample_data"
CASE = "hippocampus_003"
AXIS = 0
ANNOTATED_SLICES = (10, 16, 22)


def sparse_labels(truth: np.ndarray, slices=ANNOTATED_SLICES, axis: int = AXIS) -> np.ndarray:
    """A copy of ``truth`` with every slice along ``axis`` but ``slices`` cleared."""
    out = np.zeros_like(truth)
    where = [slice(None)] * truth.ndim
    where[axis] = list(slices)
    out[tuple(where)] = truth[tuple(where)]
    return out


def make_sample_data() -> list[tuple[np.ndarray, dict[str, Any], str]]:
    image, meta = read_volume(DATA / f"{CASE}_image.nii.gz")
    truth, truth_meta = read_labels(DATA / f"{CASE}_labels.nii.gz")
    geo = layer_geometry(meta, image.ndim)
    metadata = {"affine": meta.affine, "image_meta": meta, "source": meta.source}
    labeled = ", ".join(map(str, ANNOTATED_SLICES))
    return [
        (image, {"name": CASE, **geo, "metadata": metadata}, "image"),
        (
            truth,
            {
                "name": "ground truth",
                **geo,
                "metadata": dict(metadata),
                "visible": False,
                "opacity": 0.4,
            },
            "labels",
        ),
        (
            sparse_labels(truth),
            {"name": "labels", **geo, "metadata": {**metadata, "annotated_slices": labeled}},
            "labels",
        ),
    ]
