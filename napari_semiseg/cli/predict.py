"""``semiseg predict``: segment a volume with a trained model; the mask and the maps are
written all or none, in memory or (a volume larger than memory into ``.zarr``) slab by slab;
``--labels`` fuses the prediction with the propagation of the sparse labels."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np

from napari_semiseg.cli._common import _check_at_least, _refuse_labels_as_image, _refuse_overlap
from src_models.errors import SemisegError


def cmd_predict(args: argparse.Namespace) -> int:
    from napari_semiseg.io import is_zarr_store, map_path, open_image, volume_format
    from src_models.data.label_values import LabelValues
    from src_models.data.lazy import is_lazy
    from src_models.device import select_device
    from src_models.files import check_writable
    from src_models.training.checkpoint import META_FILE, WEIGHTS_FILE, load_model

    volume_format(args.out)  # fail early on an unsupported extension
    _check_at_least("--batch-size", args.batch_size, 1)
    args.smoothing = _smoothing(args)
    maps = [m.strip() for m in (args.maps or "").split(",") if m.strip()]
    not_names = [m for m in maps if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", m)]
    if not_names:  # a map's name becomes part of a file name: never a path
        raise SemisegError(
            f"--maps {not_names[0]!r} is not a map name: give names such as "
            "confidence,discrepancy (`semiseg methods` lists each method's maps)"
        )
    twice = sorted({m for m in maps if maps.count(m) > 1})
    if twice:
        raise SemisegError(f"--maps lists {', '.join(twice)} more than once: name each map once")
    targets = [Path(args.out).expanduser()] + [map_path(args.out, m) for m in maps]
    model_files = [Path(args.model) / META_FILE, Path(args.model) / WEIGHTS_FILE]
    for target in targets:
        _refuse_overlap("--out", target, [args.image, *model_files])
        if target.exists() and not args.force:
            raise SemisegError(
                f"{target} exists: choose another --out, or pass --force to replace it"
            )
        if target.is_dir() and not is_zarr_store(target):
            raise SemisegError(
                f"{target} is a folder holding files that are not a zarr store's (--force "
                "replaces a store, never other files): choose another --out"
            )
    check_writable(targets[0].parent)
    bundle = load_model(args.model, device=select_device(args.device))
    img, meta = open_image(args.image)
    lazy = is_lazy(img)
    if args.smoothing is None:
        args.smoothing = _default_smoothing(meta, bundle.axis)
    if lazy and args.largest_component:
        raise SemisegError(
            "--largest-component needs the whole mask in memory: this volume is larger; drop it"
        )
    values = LabelValues.from_info(bundle.info, bundle.num_classes)
    fusion = _fused_prior(args, bundle, img, meta.spacing) if args.labels else None
    if lazy and volume_format(args.out) == ".zarr":
        counts = _predict_streaming(args, bundle, img, meta, maps, targets, values)
        written = targets
    else:
        counts, written = _predict_in_memory(args, bundle, img, meta, maps, targets, values, fusion)
    shown = ", ".join(f"{v}: {c}" for v, c in zip(values.values, counts.tolist(), strict=False))
    print(f"wrote {written[0]} (voxels per label value: {shown})")
    for path in written[1:]:
        print(f"wrote {path}")
    return 0


def _model_labels(args, bundle, img) -> tuple[np.ndarray, list[int]]:
    """``--labels`` as the model's class ids (unannotated voxels -1) and their labeled slices
    along the model's axis; values the model does not know are refused."""
    from napari_semiseg.io import label_volume, read_labels
    from src_models.data.label_values import LabelValues
    from src_models.data.volumes import check_labels, detect_labeled_slices, to_slices

    values = LabelValues.from_info(bundle.info, bundle.num_classes)
    _refuse_labels_as_image(args.image, args.labels)
    raw, label_meta = read_labels(args.labels)
    raw = label_volume(raw, label_meta)
    if raw.shape != tuple(img.shape[1:]):
        raise SemisegError(
            f"--labels has shape {raw.shape}, the image {tuple(img.shape[1:])}: give the "
            "sparse labels of this image"
        )
    unknown = sorted(set(np.unique(raw).tolist()) - {*values.values, values.ignore})
    if unknown and not values.binary:
        raise SemisegError(
            f"--labels holds value(s) {unknown[:5]} that the model does not know (its classes: "
            f"{list(values.values)}): give the labels the model was trained with"
        )
    ids = check_labels(values.encode(raw), bundle.num_classes, allow_ignore=True)
    labeled = detect_labeled_slices(to_slices(ids[None], bundle.axis)[:, 0])
    if not labeled:
        raise SemisegError(f"--labels {args.labels} has no labeled slice along axis {bundle.axis}")
    return ids, labeled


def _smoothing(args) -> float | None:
    """``--smooth-slices`` checked (None when not given: :func:`_default_smoothing`)."""
    from src_models.slice_smoothing import check_smoothing

    if args.smooth_slices is None:
        return None
    try:
        return check_smoothing(args.smooth_slices)
    except SemisegError as exc:
        raise SemisegError(f"--smooth-slices: {exc}") from None


def _default_smoothing(meta, axis: int) -> float:
    """The core's default smoothing across slices for the image's voxel spacing, said when
    thick slices make it less than the default."""
    from src_models.slice_smoothing import DEFAULT_SMOOTHING, smoothing_for_spacing

    sigma = smoothing_for_spacing(meta.spacing, axis)
    if sigma < DEFAULT_SMOOTHING:
        print(
            f"smoothing across slices: {sigma:.2g} slices (the slices are thicker than their "
            "pixels; --smooth-slices SIGMA to choose)"
        )
    return sigma


def _labels_prior(
    args, bundle, img, spacing, instead: str = ""
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """The propagation of the labeled slices of ``--labels`` over ``img`` (K, Z, Y, X) of
    voxel ``spacing``, the prior a prediction is fused with (``predict --labels``, ``suggest
    --labels``), those slices and the labels as class ids; ``instead`` ends the message
    refusing a volume too large for memory."""
    from src_models.data.lazy import is_lazy
    from src_models.propagation import propagation_prior

    if is_lazy(img):
        raise SemisegError(
            "--labels needs the volume in memory (the propagation is computed on the whole "
            f"volume): this one is larger; drop --labels{instead}"
        )
    ids, labeled = _model_labels(args, bundle, img)
    prior = propagation_prior(
        np.asarray(img),
        ids,
        labeled,
        bundle.axis,
        bundle.num_classes,
        bundle.ends_labeled,
        spacing=spacing,
    )
    return prior, labeled, ids


def _fused_prior(args, bundle, img, spacing) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_labels_prior` for ``predict``, which says how long it took and the prior's
    share in the blend, with the structure's area the labeled slices say on the slices
    between them (:mod:`src_models.area_profile`)."""
    from src_models.area_profile import volume_area_profile
    from src_models.inference import prior_weight_for_fit, recorded_fit

    _refuse_overlap("--out", args.out, [args.labels])
    t0 = time.perf_counter()
    prior, labeled, ids = _labels_prior(args, bundle, img, spacing)
    fit = recorded_fit(bundle)
    why = f": the model fits its labeled slices with Dice {fit:.2f}" if fit is not None else ""
    print(
        f"fused with the propagation of {len(labeled)} labeled slice(s) of {args.labels} "
        f"({time.perf_counter() - t0:.1f} s), its share {prior_weight_for_fit(fit):.2f}{why}"
    )
    areas = volume_area_profile(ids, labeled, bundle.axis, spacing=spacing)
    if np.isfinite(areas).any():
        print(
            f"the masks of {int(np.isfinite(areas).sum())} slice(s) between labeled ones lean "
            "towards the structure's area there (a curve through the labeled slices' areas)"
        )
    return prior, areas


def _predict_in_memory(args, bundle, img, meta, maps, targets, values, fusion=None):
    """Predict, then write the mask and the maps all or none."""
    from napari_semiseg.io import write_volumes
    from src_models.inference import predict_volume

    prior, areas = fusion if fusion is not None else (None, None)
    pred = predict_volume(
        bundle,
        img,
        maps,
        batch_size=args.batch_size,
        prior=prior,
        smoothing=args.smoothing,
        areas=areas,
    )
    if pred.note:
        print(pred.note)
    if args.largest_component:
        from src_models.postprocess import largest_component_3d

        pred.labels = largest_component_3d(pred.labels, bundle.num_classes)
    counts = np.bincount(pred.labels.ravel(), minlength=bundle.num_classes)
    arrays = [(targets[0], values.decode(pred.labels), True)]
    arrays += [(t, pred.maps[m], False) for t, m in zip(targets[1:], maps, strict=True)]
    flat = meta.layout in ("YX", "CYX")  # a 2D image gets a 2D mask
    written = write_volumes([(t, a[0] if flat else a, meta, lab) for t, a, lab in arrays])
    return counts, written


def _predict_streaming(args, bundle, img, meta, maps, targets, values) -> np.ndarray:
    """A volume larger than memory into zarr stores filled slab by slab (staged, renamed
    when all are complete)."""
    from napari_semiseg.io import stage_zarr
    from src_models.files import commit, discard
    from src_models.inference import predict_volume

    spatial = tuple(img.shape[1:])
    # the dtype of the user's values (what LabelValues.decode gives back)
    ids = np.arange(bundle.num_classes, dtype=np.uint8 if bundle.num_classes <= 256 else np.uint16)
    dtype = values.decode(ids).dtype
    staged, outs = [], {}
    try:
        try:
            for target, key in zip(targets, ["labels", *maps], strict=True):
                is_labels = key == "labels"
                st, arr = stage_zarr(
                    target, spatial, dtype if is_labels else np.float32, meta, is_labels
                )
                staged.append(st)
                outs[key] = arr
            predict_volume(
                bundle, img, maps, batch_size=args.batch_size, out=outs, smoothing=args.smoothing
            )
            counts = np.zeros(bundle.num_classes, np.int64)
            labels = outs["labels"]
            for z0 in range(0, spatial[0], 16):  # class counts, and the user's values back
                part = np.asarray(labels[z0 : z0 + 16])
                counts += np.bincount(part.ravel(), minlength=bundle.num_classes)
                if values.remapped:
                    labels[z0 : z0 + 16] = values.decode(part)
        except OSError as exc:  # e.g. a full disk while the chunks stream out
            raise SemisegError(
                f"could not write the prediction into {targets[0].parent} "
                f"({exc.strerror or exc}): free space and predict again; nothing was written"
            ) from None
        commit(staged)
        return counts
    finally:
        discard(staged)  # what was committed is gone from its temporary name
