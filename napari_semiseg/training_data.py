"""Training volumes from files: read, check the voxel grid, read the label values as the user
means them, in memory or — for volumes larger than :data:`io.LAZY_VOXELS` voxels stored as
zarr / OME-Zarr, ``.npy`` or TIFF — lazily (:mod:`src_models.data.lazy`): then only the
labeled slices are read up front and the rest slab by slab during training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_semiseg import io
from src_models.data.label_values import LabelValues
from src_models.data.lazy import (
    find_labeled_slices,
    is_lazy,
    make_lazy_volume,
    read_label_slices,
)
from src_models.data.volumes import Volume, check_axis, make_volumes
from src_models.errors import SemisegError


@dataclass
class TrainingData:
    """The volumes to train on (labeled ones first, in the order given), how their label
    values map to classes, and the geometry of the first labels (for outputs)."""

    volumes: list[Volume]
    values: LabelValues
    label_metas: list[io.ImageMeta] = field(default_factory=list)
    spacing: tuple[float, ...] = ()

    @property
    def lazy(self) -> bool:
        return any(is_lazy(v.slices) for v in self.volumes)


_NO_LABELED_SLICE = (
    "no labeled slice: paint at least one slice of the labels "
    "(or list the annotated slices explicitly with --labeled-slices)"
)


def _grid_problem(img_path, lbl_path, meta, lbl_meta) -> None:
    problem = io.geometry_mismatch(meta, lbl_meta)
    if problem:
        raise SemisegError(
            f"{img_path} and {lbl_path} are not on the same voxel grid ({problem}): resample "
            "the labels onto the image (e.g. in 3D Slicer), or pass --ignore-geometry if only "
            "the headers differ"
        )


def load_training_data(
    image_paths: Sequence[str],
    label_paths: Sequence[str],
    unlabeled_paths: Sequence[str],
    axis: int,
    chosen: Sequence[list[int] | None] | None,
    decide_values: Callable[[list[np.ndarray]], LabelValues],
    ignore: int | None = None,
    ignore_geometry: bool = False,
) -> TrainingData:
    """Read every volume; ``decide_values`` gets the label arrays (for a lazy volume, its
    labeled slices) and returns how values map to classes; ``ignore`` is the value of
    unannotated voxels (it decides which lazy slices count as labeled)."""
    check_axis(axis)
    chosen = list(chosen) if chosen is not None else [None] * len(label_paths)
    images, raw, metas, spacings = [], [], [], []
    for i, (img_path, lbl_path) in enumerate(zip(image_paths, label_paths, strict=True)):
        img, meta = io.open_image(img_path)
        if is_lazy(img):
            lbl, lbl_meta = io.open_volume(lbl_path)
            if lbl_meta.layout.startswith("C"):
                raise SemisegError(f"{lbl_path} has channels: labels must be one channel of ids")
            if tuple(lbl.shape) != tuple(img.shape[1:]):
                raise SemisegError(
                    f"{img_path} has spatial shape {tuple(img.shape[1:])} but {lbl_path} has "
                    f"{tuple(lbl.shape)}: they must match voxel for voxel"
                )
            picked = chosen[i] if chosen[i] is not None else find_labeled_slices(lbl, axis, ignore)
            bad = [s for s in picked if not 0 <= s < lbl.shape[axis]]
            if bad:
                raise SemisegError(f"labeled slice(s) {bad} are out of range for image {i}")
            slices = read_label_slices(lbl, axis, picked)
            lbl = {s: io.as_labels(a, str(lbl_path)) for s, a in slices.items()}
        else:
            lbl, lbl_meta = io.read_labels(lbl_path)
            lbl = io.label_volume(lbl, lbl_meta)
        if not ignore_geometry:
            _grid_problem(img_path, lbl_path, meta, lbl_meta)
        images.append(img)
        raw.append(lbl)
        metas.append(lbl_meta)
        spacings.append(tuple(meta.spacing))
    for path in unlabeled_paths or []:
        img, meta = io.open_image(path)
        images.append(img)
        raw.append(None)
        spacings.append(tuple(meta.spacing))
    given = [
        np.stack(list(r.values())) if isinstance(r, dict) else r
        for r in raw
        if r is not None and (not isinstance(r, dict) or r)
    ]
    if not given:  # lazy labels where no slice holds a label
        raise SemisegError(_NO_LABELED_SLICE)
    values = decide_values(given)
    k = values.num_classes
    eager = [i for i, img in enumerate(images) if not is_lazy(img)]
    volumes: dict[int, Volume] = {}
    if eager:
        vols, _ = make_volumes(
            [images[i] for i in eager],
            [None if raw[i] is None else values.encode(raw[i]) for i in eager],
            axis,
            [chosen[i] if i < len(chosen) else None for i in eager],
            num_classes=k,
            require_labeled=len(eager) == len(images),
            spacings=[spacings[i] for i in eager],
        )
        volumes.update(zip(eager, vols, strict=True))
    for i, img in enumerate(images):
        if i in volumes:
            continue
        encoded = None if raw[i] is None else {s: values.encode(a) for s, a in raw[i].items()}
        volumes[i] = make_lazy_volume(img, encoded, axis, k)
    ordered = [volumes[i] for i in range(len(images))]
    channels = {v.slices.shape[1] for v in ordered}
    if len(channels) > 1:
        raise SemisegError(f"the images have different channel counts {sorted(channels)}")
    if not any(v.labeled for v in ordered):
        raise SemisegError(_NO_LABELED_SLICE)
    return TrainingData(ordered, values, metas, spacings[0] if spacings else ())
