"""``semiseg suggest``: the next slices to annotate, ranked, with scores and reasons."""

from __future__ import annotations

import argparse
import json

from napari_semiseg.cli._common import _check_at_least
from napari_semiseg.cli.predict import _labels_prior
from src_models.errors import SemisegError
from src_models.suggest import DEFAULT_STRATEGY as DEFAULT_STRATEGY_CHOICE
from src_models.suggest import STRATEGIES as STRATEGY_CHOICES
from src_models.suggest import STRIDED_UNTIL

#: ``semiseg suggest --strategy``'s choices, default and switch count: the core's (the
#: parser reads them; src_models.suggest imports no torch)
__all__ = ["DEFAULT_STRATEGY_CHOICE", "STRATEGY_CHOICES", "STRIDED_UNTIL", "cmd_suggest"]


def cmd_suggest(args: argparse.Namespace) -> int:
    """``semiseg suggest``: the next slices to annotate, ranked, with scores and reasons."""
    from napari_semiseg._ranking import slice_score, structure_slices
    from napari_semiseg.io import open_image
    from src_models.area_profile import volume_area_profile
    from src_models.device import select_device
    from src_models.inference import predict_volume
    from src_models.slice_smoothing import smoothing_for_spacing
    from src_models.suggest import suggest
    from src_models.training.checkpoint import load_model

    _check_at_least("-n", args.n, 1)
    bundle = load_model(args.model, device=select_device(args.device))
    img, meta = open_image(args.image)
    axis = bundle.axis
    prior = areas = None
    if args.labels:  # the prediction fused with their propagation, as predict --labels, the dock
        prior, labeled, ids = _labels_prior(
            args, bundle, img, meta.spacing, " (the model's labeled slices are used)"
        )
        areas = volume_area_profile(ids, labeled, axis, spacing=meta.spacing)
    else:
        labeled = bundle.info.get("labeled_slices")
        if not isinstance(labeled, list) or not all(isinstance(s, int) for s in labeled):
            raise SemisegError(
                f"the model in {args.model} does not record the labeled slices of one volume: "
                "give the labels so far with --labels"
            )
    method = bundle.method
    name = "discrepancy" if "discrepancy" in method.map_names else "confidence"
    pred = predict_volume(
        bundle,
        img,
        maps=[name] if args.strategy != "strided" else [],
        prior=prior,
        smoothing=smoothing_for_spacing(meta.spacing, axis),  # as predict, the dock
        areas=areas,
    )
    structure = structure_slices(pred.labels, axis)
    uncertainty = None
    if args.strategy != "strided":
        score = slice_score(pred.maps[name], axis)
        uncertainty = score if name == "discrepancy" else 1.0 - score
    n_slices = int(img.shape[1 + axis])
    picks = suggest(
        labeled, n_slices, uncertainty, structure, args.n, args.strategy, bundle.ends_labeled
    )
    if args.json:
        rows = [{"slice": p.index, "score": p.score, "why": p.why} for p in picks]
        print(json.dumps({"axis": axis, "labeled": labeled, "strategy": args.strategy,
                          "map": name if uncertainty is not None else None,
                          "suggestions": rows}))  # fmt: skip
        return 0
    print(
        f"{len(labeled)} labeled slice(s) along axis {axis}; next to annotate "
        f"({args.strategy}{', from the ' + name + ' map' if uncertainty is not None else ''}):"
    )
    for rank, p in enumerate(picks, 1):
        print(f"{rank}. {p.why}")
    return 0
