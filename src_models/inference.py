"""Whole-volume prediction, slice by slice, with bounded memory.

One function, :func:`predict_volume`, serves the CLI, the plugin and the benchmarks. The
volume is normalised with the model's scheme, cut along the model's axis, and processed in
slabs of ``slab_size`` slices and batches of ``batch_size``; each slice is padded to a
multiple of the network divisor (or tiled with overlap when larger than ``tile_size``) and
cropped back. Results can be written into caller-provided arrays (e.g. zarr arrays) slab by
slab, so neither the probabilities nor the maps need to fit in memory at once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from src_models.area_profile import match_areas
from src_models.class_ids import class_ids
from src_models.data.context import context_of, slice_with_context, stack_context
from src_models.data.lazy import ChannelsFirst
from src_models.data.normalization import fit_normalization
from src_models.data.planes import averaged_axes
from src_models.data.volumes import MIN_SLICE_SIZE, as_channels_first, from_slices, to_slices
from src_models.errors import SemisegError
from src_models.methods.base import Method
from src_models.slice_smoothing import (
    DEFAULT_SMOOTHING,
    check_smoothing,
    smooth_across_slices,
    smoothing_halo,
)
from src_models.training.checkpoint import ModelBundle
from src_models.training.fit import MIN_FIT

DIVISOR = 16
#: share of the zero-training prior in a fused prediction whose model fits its labeled slices
#: with Dice :data:`FIT_PIVOT` (docs/benchmarks.md: left atrium and hippocampus, the
#: supervised default with the propagation prior, 0.5 measured best at a fixed weight)
DEFAULT_PRIOR_WEIGHT = 0.5
#: the prior's share grows as the model fits its own labeled slices worse than FIT_PIVOT
#: (:func:`prior_weight_for_fit`); measured on 33 kept predictions of 10 volumes
#: (benchmarks/annotation_notes.md, "the prior's weight from the model's fit"): any pivot
#: 0.90-0.95 and slope 2-3 gained the same 0.5 points on average, none lost over 0.02 in
#: a group
FIT_PIVOT = 0.93
PRIOR_WEIGHT_SLOPE = 2.0
#: never under 0.5: where the prior is certain background (beyond the labeled ends, beyond
#: the walk's reach) the fused mask stays background whatever the network says
PRIOR_WEIGHT_RANGE = (DEFAULT_PRIOR_WEIGHT, 0.9)
#: bytes of the float32 slices, probabilities and maps of one slab of a prediction
#: (benchmarks/predict_memory.py: 256 MiB put DFCPS's peak 130 MB over the 1 GB goal on a
#: 64 x 512 x 512 volume)
SLAB_BYTES = 64 << 20
#: pixels of the slices of one forward pass (the batch of large slices is cut to fit)
BATCH_PIXELS = 2**19
#: maps that hold class ids (-1 = left out) rather than continuous values
CATEGORICAL_MAPS = frozenset({"pseudo"})


def prior_weight_for_fit(fit: float | None) -> float:
    """The prior's share in a fused prediction, from the model's mean Dice on its own
    labeled slices (``bundle.info["labeled_fit"]``, :func:`src_models.training.fit.
    labeled_fit`): :data:`DEFAULT_PRIOR_WEIGHT` from :data:`FIT_PIVOT` up, rising by
    :data:`PRIOR_WEIGHT_SLOPE` per point of fit below it, within :data:`PRIOR_WEIGHT_RANGE`
    (never under the default); 1 (the prior alone) below :data:`MIN_FIT`, where the model
    has not learned; the default weight when the fit is unknown (models saved before it was
    recorded). The propagation reproduces the labeled slices by construction; a network that
    does not reproduce the slices it trained on is less likely to be right between them
    (left atrium, SDCL 5 minutes: labeled-slice fit 0.58-0.90, the best weight 0.5-1.0)."""
    if fit is None or not math.isfinite(fit):
        return DEFAULT_PRIOR_WEIGHT
    if fit < MIN_FIT:
        return 1.0
    low, high = PRIOR_WEIGHT_RANGE
    return float(min(high, max(low, DEFAULT_PRIOR_WEIGHT + PRIOR_WEIGHT_SLOPE * (FIT_PIVOT - fit))))


def recorded_fit(bundle: ModelBundle) -> float | None:
    """The model's fit on its labeled slices as its trainer recorded it (None: not
    recorded: a model saved mid-training, or before the trainer recorded it)."""
    fit = bundle.info.get("labeled_fit")
    return float(fit) if isinstance(fit, (int, float)) else None


@dataclass
class VolumePrediction:
    """labels: uint8/uint16 (Z, Y, X); probabilities: float32 (K, Z, Y, X) or None;
    maps: name -> float32 (Z, Y, X)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    #: what the caller should tell the user about this prediction ("" when nothing)
    note: str = ""


def _pad_to(x: torch.Tensor, height: int, width: int, value: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    return F.pad(x, (0, width - w, 0, height - h), value=value)


def _round_up(n: int, d: int = DIVISOR) -> int:
    return -(-n // d) * d


def _predict_padded(
    method: Method, x: torch.Tensor, fill: float, names: Sequence[str], flips: bool = False
):
    """Predict (B, C, H, W) of any size by padding to the divisor; crop back."""
    h, w = x.shape[-2:]
    xp = _pad_to(x, _round_up(h), _round_up(w), fill)
    pred = method.predict(xp)
    probs = pred.probs[..., :h, :w]
    if flips:  # test-time augmentation: the mean over the slice and its two mirror images
        for dims in ((-1,), (-2,)):
            flipped = _pad_to(x.flip(dims), _round_up(h), _round_up(w), fill)
            probs = probs + method.predict(flipped).probs[..., :h, :w].flip(dims)
        probs = probs / 3.0
    maps = {k: pred.maps[k][..., :h, :w] for k in names}
    return probs, maps


def _tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def predict_slices(
    method: Method,
    x: torch.Tensor,
    fill: float,
    names: Sequence[str],
    tile_size: int = 512,
    overlap: float = 0.25,
    flips: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Probabilities (B, K, H, W) and maps (B, H, W) of a normalised batch (B, C, H, W);
    slices larger than ``tile_size`` are tiled with ``overlap`` and averaged. Class-id maps
    (``CATEGORICAL_MAPS``, e.g. ``pseudo``) are not averaged: where tiles overlap the
    later tile's value is kept, so they stay valid class ids. ``flips``: the probabilities
    are averaged with those of the horizontally and vertically mirrored slices (maps are
    the slice's own)."""
    h, w = x.shape[-2:]
    if h <= tile_size and w <= tile_size:
        return _predict_padded(method, x, fill, names, flips)
    probs = torch.zeros(x.shape[0], method.num_classes, h, w, device=x.device)
    maps = {k: torch.zeros(x.shape[0], h, w, device=x.device) for k in names}
    count = torch.zeros(1, 1, h, w, device=x.device)
    for y0 in _tile_starts(h, tile_size, overlap):
        for x0 in _tile_starts(w, tile_size, overlap):
            tile = x[..., y0 : y0 + tile_size, x0 : x0 + tile_size]
            p, m = _predict_padded(method, tile, fill, names, flips)
            th, tw = tile.shape[-2:]
            probs[..., y0 : y0 + th, x0 : x0 + tw] += p
            for k in names:
                if k in CATEGORICAL_MAPS:
                    maps[k][..., y0 : y0 + th, x0 : x0 + tw] = m[k]
                else:
                    maps[k][..., y0 : y0 + th, x0 : x0 + tw] += m[k]
            count[..., y0 : y0 + th, x0 : x0 + tw] += 1
    averaged = {k: v if k in CATEGORICAL_MAPS else v / count[:, 0] for k, v in maps.items()}
    return probs / count, averaged


@contextlib.contextmanager
def _looking_mid_training(method: Method) -> Iterator[None]:
    """Evaluation mode without gradients for a look in the middle of training; the method
    goes back to training mode and the global torch RNG is restored, so looking never
    changes the run."""
    rng = torch.get_rng_state()
    method.eval()
    try:
        with torch.no_grad(), method.autocast():
            yield
    finally:
        method.train()
        torch.set_rng_state(rng)


def predict_training_slice(method: Method, volume, index: int) -> np.ndarray:
    """Class ids (H, W) uint8 of slice ``index`` of a normalised training
    :class:`~src_models.data.volumes.Volume`, in the middle of training
    (:func:`_looking_mid_training`: the plugin's live preview, the trainer's labeled-slice
    fit)."""
    with _looking_mid_training(method):
        context = context_of(method.in_channels, volume.slices.shape[1])
        x = slice_with_context(volume.slices, index, context)
        x = torch.from_numpy(np.ascontiguousarray(x)[None]).to(method.device)
        probs, _ = predict_slices(method, x, volume.background, ())
        return probs[0].argmax(dim=0).to(torch.uint8).cpu().numpy()


def predict_training_volume(
    method: Method, volume, batch_size: int = 16, indices: Sequence[int] | None = None
) -> np.ndarray:
    """Class probabilities (K, N, H, W) float32 of every slice of a normalised, in-memory
    training :class:`~src_models.data.volumes.Volume` (of its slices ``indices`` only:
    (K, len(indices), H, W)), in the middle of training (as :func:`predict_training_slice`)."""
    with _looking_mid_training(method):
        slices = volume.slices
        n, _, h, w = slices.shape
        context = context_of(method.in_channels, slices.shape[1])
        batch = max(1, min(batch_size, BATCH_PIXELS // (_round_up(h) * _round_up(w))))
        order = range(n) if indices is None else indices
        out = np.empty((method.num_classes, len(order), h, w), np.float32)
        for start in range(0, len(order), batch):
            part = order[start : start + batch]
            stacked = np.stack([slice_with_context(slices, i, context) for i in part])
            x = torch.from_numpy(stacked).to(method.device)
            probs, _ = predict_slices(method, x, volume.background, ())
            out[:, start : start + len(part)] = probs.float().permute(1, 0, 2, 3).cpu().numpy()
        return out


def _slab_and_batch(
    method: Method,
    spatial: Sequence[int],
    axis: int,
    n_maps: int,
    slab_size: int,
    batch_size: int,
    tile_size: int,
) -> tuple[int, int]:
    """Slices per slab and per forward pass of a volume of ``spatial`` shape cut along
    ``axis``, at most ``slab_size`` and ``batch_size``."""
    # a slab's float32 slices, probabilities and maps stay within SLAB_BYTES whatever the
    # volume (they exist twice while a slab is assembled)
    plane = int(np.prod([n for a, n in enumerate(spatial) if a != axis]))
    per_slice = 4 * plane * (method.in_channels + method.num_classes + n_maps)  # neighbours in
    slab = max(1, min(slab_size, SLAB_BYTES // per_slice))
    # and a forward pass's activations grow with the pixels of its batch: large slices go a
    # few at a time (16 slices of 512 x 512 took 3 GB in a UNet of 32 base channels)
    batch = max(1, min(batch_size, BATCH_PIXELS // min(plane, tile_size * tile_size)))
    return slab, batch


def _add_network_along(
    method: Method,
    img: np.ndarray,
    norm,
    axis: int,
    fill: float,
    context: int,
    slab_size: int,
    batch_size: int,
    tile_size: int,
    flips: bool,
    total: np.ndarray,
) -> None:
    """Add the network's class probabilities of the in-memory ``img`` (C, Z, Y, X) cut
    along ``axis`` to ``total`` (K, Z, Y, X), slab by slab."""
    n = img.shape[1 + axis]
    for s0 in range(0, n, slab_size):
        s1 = min(n, s0 + slab_size)
        h0, h1 = max(0, s0 - context), min(n, s1 + context)
        index = [slice(None)] * 4
        index[axis + 1] = slice(h0, h1)
        slab = np.ascontiguousarray(to_slices(norm.apply(img[tuple(index)]), axis))
        slab = stack_context(slab, context, s0 - h0, h1 - s1)
        parts = []
        for b0 in range(0, slab.shape[0], batch_size):
            x = torch.from_numpy(slab[b0 : b0 + batch_size]).to(method.device)
            with torch.no_grad(), method.autocast():
                p, _ = predict_slices(method, x, fill, (), tile_size, flips=flips)
            parts.append(p.float().cpu().numpy())
        index[axis + 1] = slice(s0, s1)
        total[tuple(index)] += from_slices(np.concatenate(parts), axis)


def cross_probabilities(
    bundle: ModelBundle,
    img: np.ndarray,
    norm,
    fill: float,
    slab_size: int,
    batch_size: int,
    tile_size: int,
    flips: bool,
) -> tuple[np.ndarray | None, int]:
    """The sum of the network's class probabilities (K, Z, Y, X) over the axes other than
    the model's it fits well enough (:func:`~src_models.data.planes.averaged_axes`), and
    how many axes were summed, for a model trained on all three (:attr:`ModelBundle.planes`,
    :mod:`src_models.data.planes`); ``(None, 0)`` otherwise."""
    fits = bundle.info.get("plane_fits")
    axes = averaged_axes(bundle.axis, img.shape[1:], fits) if bundle.planes == 3 else []
    if not axes:
        return None, 0
    method = bundle.method
    total = np.zeros((method.num_classes, *img.shape[1:]), np.float32)
    for a in axes:
        slab, batch = _slab_and_batch(method, img.shape[1:], a, 0, slab_size, batch_size, tile_size)
        _add_network_along(
            method, img, norm, a, fill, bundle.context_slices, slab, batch, tile_size, flips, total
        )
    return total, len(axes)


def predict_volume(
    bundle: ModelBundle,
    image: np.ndarray,
    maps: Sequence[str] = ("confidence",),
    *,
    batch_size: int = 16,
    slab_size: int = 64,
    tile_size: int = 512,
    return_probabilities: bool = False,
    out: MutableMapping[str, object] | None = None,
    progress: Callable[[int, int], None] | None = None,
    prior: np.ndarray | None = None,
    prior_weight: float | None = None,
    flips: bool = False,
    smoothing: float = DEFAULT_SMOOTHING,
    areas: np.ndarray | None = None,
) -> VolumePrediction:
    """Predict a whole volume.

    Args:
        bundle: a trained model (its axis and normalisation scheme are used).
        image: raw intensities (Z, Y, X) or (C, Z, Y, X), not normalised: a numpy array, or
            a lazy array (zarr, memmap, :class:`ChannelsFirst`) read slab by slab.
        maps: names of maps to return; each must be in ``bundle.method.map_names``.
        batch_size: slices per forward pass (at most :data:`BATCH_PIXELS` pixels of slices or
            tiles). slab_size: slices converted at a time.
        out: optional arrays to fill instead of allocating: keys ``labels`` (Z, Y, X),
            ``probabilities`` (K, Z, Y, X) and map names (Z, Y, X), e.g. zarr arrays.
        progress: called with (slices done, slices total).
        prior: class probabilities (K, Z, Y, X) of a zero-training result on this volume
            (the propagation of its labeled slices, :func:`src_models.propagation.
            propagation_prior`): the mask and the probabilities become the blend
            ``(1 - prior_weight) * model + prior_weight * prior``; maps stay the model's.
        prior_weight: the prior's share; None: from the model's fit on its labeled slices
            (:func:`prior_weight_for_fit`). Below :data:`MIN_FIT` the prior alone, always.
        flips: test-time augmentation (three forward passes per slice, see
            :func:`predict_slices`).
        smoothing: sigma in slices of a Gaussian across slices on the final probabilities
            (:mod:`src_models.slice_smoothing`; 0: off); maps stay per slice.
        areas: the structure's estimated voxels on each slice along the model's axis, NaN
            where unknown (:func:`src_models.area_profile.volume_area_profile` of the
            labeled slices): the mask of each such slice moves halfway towards it
            (:func:`~src_models.area_profile.match_area`); the probabilities stay as they
            are.

    A model trained on all three axes (``bundle.planes`` 3) predicts an in-memory image
    also along the other axes it fits its labeled slices along, and averages them
    (:func:`cross_probabilities`; before the fusion with ``prior``; maps stay those along its
    axis); a lazy image is predicted along the model's axis only.

    Returns:
        VolumePrediction whose arrays are the ``out`` arrays when given.
    """
    method = bundle.method
    unknown = [m for m in maps if m not in method.map_names]
    if unknown:
        raise SemisegError(
            f"method {method.name!r} has no map(s) {unknown}: available maps are "
            f"{', '.join(method.map_names)}"
        )
    if isinstance(image, np.ndarray) and not isinstance(image, np.memmap):
        img = as_channels_first(image)
    else:  # larger than memory (zarr, memmap): read slab by slab below
        img = image if isinstance(image, ChannelsFirst) else ChannelsFirst(image, image.ndim == 4)
    context = bundle.context_slices
    if img.shape[0] != bundle.image_channels:
        raise SemisegError(
            f"the model expects {bundle.image_channels} channel(s), the image has {img.shape[0]}"
        )
    axis = bundle.axis
    in_plane = [s for k, s in enumerate(img.shape[1:]) if k != axis]
    if min(in_plane) < MIN_SLICE_SIZE:
        raise SemisegError(
            f"slices along axis {axis} are {in_plane[0]}x{in_plane[1]} pixels, smaller than "
            f"the minimum {MIN_SLICE_SIZE}x{MIN_SLICE_SIZE}"
        )
    if prior is not None and tuple(np.shape(prior)) != (method.num_classes, *img.shape[1:]):
        raise SemisegError(
            f"the prior has shape {tuple(np.shape(prior))}, the prediction needs "
            f"{(method.num_classes, *img.shape[1:])} (classes, Z, Y, X): compute it from "
            "labels of this image with the model's classes"
        )
    smoothing = check_smoothing(smoothing)
    halo = smoothing_halo(smoothing)
    if areas is not None:
        areas = np.asarray(areas, np.float64)
        if areas.shape != (img.shape[1 + axis],):
            raise SemisegError(
                f"the area profile has shape {areas.shape}, the prediction needs "
                f"({img.shape[1 + axis]},): one value per slice along axis {axis}"
            )
    note = ""
    fit = recorded_fit(bundle)
    if prior_weight is None:
        prior_weight = prior_weight_for_fit(fit)
    if prior is not None and fit is not None and fit < MIN_FIT:
        prior_weight = 1.0
        note = (
            f"the model fits its own labeled slices with Dice {fit:.2f} only (iteration "
            f"{bundle.iteration}): it has not learned yet, so the result is the zero-training "
            "propagation; train longer"
        )
    norm = fit_normalization(img, bundle.percentiles)
    fill = min((norm.low[c] - norm.mean[c]) / norm.std[c] for c in range(img.shape[0]))
    spatial = img.shape[1:]
    n_slices = spatial[axis]
    k = method.num_classes
    out = dict(out or {})
    label_dtype = np.uint8 if k <= 256 else np.uint16
    labels = out.get("labels")
    if labels is None:
        labels = np.zeros(spatial, dtype=label_dtype)
    probs_out = out.get("probabilities")
    if probs_out is None and return_probabilities:
        probs_out = np.zeros((k, *spatial), dtype=np.float32)
    maps_out = {
        m: out.get(m) if out.get(m) is not None else np.zeros(spatial, np.float32) for m in maps
    }
    method.eval()
    device = method.device
    cross, n_cross = (None, 0)
    if isinstance(img, np.ndarray):
        cross, n_cross = cross_probabilities(
            bundle, img, norm, fill, slab_size, batch_size, tile_size, flips
        )
    slab_size, batch_size = _slab_and_batch(
        method, spatial, axis, len(maps), slab_size, batch_size, tile_size
    )
    # the smoothing across slices needs ``halo`` slices of raw probabilities on each side of
    # a slice: each slab's are kept (``raw``, from slice ``r0``) until the next slab has
    # come, and a slice's mask is written once its right-hand neighbours are known (the
    # maps, per slice, are written with their slab)
    raw: np.ndarray | None = None  # (n, K, H, W) raw probabilities of slices r0 ... s1 - 1
    r0 = written = 0
    for s0 in range(0, n_slices, slab_size):
        s1 = min(n_slices, s0 + slab_size)
        index = [slice(None)] * 4
        # with context, a halo of neighbouring slices is read around the slab
        h0, h1 = max(0, s0 - context), min(n_slices, s1 + context)
        index[axis + 1] = slice(h0, h1)
        slab = np.ascontiguousarray(to_slices(norm.apply(img[tuple(index)]), axis))
        slab = stack_context(slab, context, s0 - h0, h1 - s1)
        index[axis + 1] = slice(s0, s1)
        if prior is not None:  # (K, Z, Y, X) -> the slab's (n, K, H, W)
            prior_slab = torch.from_numpy(to_slices(np.asarray(prior[tuple(index)]), axis).copy())
        if cross is not None:
            cross_slab = torch.from_numpy(to_slices(cross[tuple(index)], axis).copy())
        slab_probs, slab_maps = [], {m: [] for m in maps}
        for b0 in range(0, slab.shape[0], batch_size):
            x = torch.from_numpy(slab[b0 : b0 + batch_size]).to(device)
            with torch.no_grad(), method.autocast():
                p, mp = predict_slices(method, x, fill, maps, tile_size, flips=flips)
            if cross is not None:  # the mean over the three axes
                q = cross_slab[b0 : b0 + x.shape[0]].to(p.device)
                p = (p.float() + q) / (1 + n_cross)
            if prior is not None:
                q = prior_slab[b0 : b0 + x.shape[0]].to(p.device)
                p = (1.0 - prior_weight) * p.float() + prior_weight * q
            slab_probs.append(p.float().cpu().numpy())
            for m in maps:
                slab_maps[m].append(mp[m].float().cpu().numpy())
        new = np.concatenate(slab_probs)
        raw = new if raw is None else np.concatenate([raw, new])
        index3 = [slice(None)] * 3
        index3[axis] = slice(s0, s1)
        for m in maps:
            maps_out[m][tuple(index3)] = from_slices(np.concatenate(slab_maps[m]), axis)
        end = s1 if s1 == n_slices else max(written, s1 - halo)  # slices final now
        if end > written:
            probs = smooth_across_slices(raw, 0, smoothing)[written - r0 : end - r0]
            index3[axis] = slice(written, end)
            ids = class_ids(torch.from_numpy(np.ascontiguousarray(probs))).numpy()
            if areas is not None:  # towards the area the labeled slices say
                ids = match_areas(probs, ids, areas[written:end])
            labels[tuple(index3)] = from_slices(ids.astype(label_dtype), axis)
            if probs_out is not None:  # (n, K, H, W) -> (K, Z, Y, X)
                probs_out[(slice(None), *index3)] = from_slices(probs, axis)
            keep_from = max(0, end - halo)  # the left-hand neighbours of the next slices
            raw, r0, written = raw[keep_from - r0 :], keep_from, end
            if progress is not None:
                progress(written, n_slices)
    return VolumePrediction(labels, probs_out, maps_out, note)
