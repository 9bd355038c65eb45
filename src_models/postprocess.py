"""Post-processing of label maps.

:func:`largest_component_per_class` keeps, for every foreground class of every 2D slice, only
the largest connected component (8-connectivity in the slice plane, the default of
``skimage.measure.label`` on 2D arrays). It is the pseudo-label filter of BCP and SDCL
(``pascalcpp/SDCL``, ``code/ACDC_train.py``, ``get_ACDC_2DLargestCC``), which loops over
slices and classes with one ``label`` call each; here one ``scipy.ndimage.label`` call labels
all (class, slice) planes at once and the per-plane winners are chosen with array operations.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def largest_component_per_class(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Keep the largest connected component of each class > 0 in each slice.

    Args:
        labels: int (B, H, W) class ids (a single slice (H, W) is accepted too).
        num_classes: class count K incl. background (default: ``labels.max() + 1``).
    Returns:
        int64 array of the same shape; pixels of a class outside its largest component of
        their slice become 0. Ties between equally large components keep the first one in
        raster order (as ``np.argmax`` over ``bincount`` in the official code).
    """
    lab = np.asarray(labels)
    single = lab.ndim == 2
    if single:
        lab = lab[None]
    if lab.ndim != 3:
        raise ValueError(f"expected labels (B, H, W), got shape {lab.shape}")
    lab = lab.astype(np.int64, copy=False)
    k = int(num_classes) if num_classes is not None else int(lab.max(initial=0)) + 1
    classes = np.arange(1, k)
    out = np.zeros_like(lab)
    if classes.size == 0 or lab.size == 0:
        return out[0] if single else out
    b, h, w = lab.shape
    planes = classes.size * b
    binary = lab[None] == classes[:, None, None, None]  # (K-1, B, H, W)
    structure = np.zeros((3, 3, 3, 3), dtype=bool)
    structure[1, 1] = True  # 3x3 in-plane: components never cross slices or classes
    comp, n = ndimage.label(binary, structure=structure)
    if n > 0:
        comp = comp.reshape(planes, h * w)
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        plane_of = np.zeros(n + 1, dtype=np.int64)
        plane_of[comp] = np.broadcast_to(np.arange(planes)[:, None], comp.shape)
        ids = np.arange(1, n + 1)
        # Sort by plane, then size (descending), then id (raster order); first per plane wins.
        order = np.lexsort((ids, -sizes[1:], plane_of[1:]))
        _, first = np.unique(plane_of[1:][order], return_index=True)
        keep = np.zeros(n + 1, dtype=bool)
        keep[ids[order][first]] = True
        kept = keep[comp].reshape(classes.size, b, h, w)
        out = (kept * classes[:, None, None, None]).sum(axis=0)
    return out[0] if single else out


def largest_component_torch(labels: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """:func:`largest_component_per_class` for a tensor (B, H, W); same device and dtype."""
    filtered = largest_component_per_class(labels.detach().cpu().numpy(), num_classes)
    return torch.from_numpy(filtered).to(device=labels.device, dtype=labels.dtype)


def largest_component_3d(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Keep the largest 3D connected component (26-connectivity) of each class > 0 of a
    volume (Z, Y, X); the rest of that class becomes background. For one structure per
    class (an organ, the left atrium, each hippocampus part), not for many objects."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"largest_component_3d needs a 3D volume, got shape {lab.shape}")
    k = int(num_classes if num_classes is not None else int(lab.max()) + 1)
    out = lab.copy()
    structure = np.ones((3, 3, 3), bool)
    for c in range(1, k):
        components, n = ndimage.label(lab == c, structure=structure)
        if n > 1:
            sizes = np.bincount(components.ravel())
            sizes[0] = 0
            out[(components != int(sizes.argmax())) & (lab == c)] = 0
    return out
