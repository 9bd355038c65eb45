"""One recipe builds every training run: the CLI, the plugin's training process and the
benchmarks ask it, so they train the same thing with the same defaults.

A :class:`RunRecipe` holds what a user chooses (method, its parameters, budget, crops,
the prior, seed); :func:`build_run` turns it and the volumes into a :class:`Run`: the batch
sampler, the model (new, or a checkpoint to continue) and the :class:`TrainConfig`. The
defaults here are *the* defaults of the product, measured in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from src_models.data import SliceSampler, Volume, make_volumes
from src_models.data.context import check_context, context_channels
from src_models.data.planes import check_planes
from src_models.data.sampler import PRIORS
from src_models.errors import SemisegError
from src_models.method_choice import AUTO, resolve_method
from src_models.methods.base import get_method, make_config
from src_models.training.checkpoint import ModelBundle, create_model
from src_models.training.trainer import TrainConfig

DEFAULT_METHOD = AUTO
#: iteration budget when neither iterations nor minutes are given
DEFAULT_ITERATIONS = 1000
#: share of the labeled crops placed over the labeled structure
DEFAULT_FOREGROUND_CROPS = 0.5
#: where the prior's targets come from, and its share of each labeled batch
DEFAULT_PRIOR = "propagation"
DEFAULT_PRIOR_FRACTION = 0.5
#: the share of the budget ``--prior-refresh`` suggests: after it the prior's targets become
#: the product's own fused, smoothed output (:mod:`src_models.training.prior_refresh`). Off
#: by default: a prototype measured +0.8 / +0.4 points at 2 minutes with the ends labeled
#: (hippocampus / left atrium); through the trainer it measured level to worse on the
#: hippocampus with the ends, -0.2 on the left atrium strictly inside and level for SDCL at
#: 5 minutes (docs/benchmarks.md)
DEFAULT_PRIOR_REFRESH = 0.5

#: the methods that train on all three axes by default when the labeled slices include the
#: structure's ends (``planes`` 3, :mod:`src_models.data.planes`): the supervised default
#: (2 minutes) gains there; SDCL (5 minutes) measured level to worse, so it keeps one axis
MULTI_PLANAR_METHODS = ("supervised",)


def default_planes(method: str, ends_labeled: bool) -> int:
    """The axes ``method`` trains on and predicts along when the user does not say: 3 for
    :data:`MULTI_PLANAR_METHODS` with ``ends_labeled`` (every cross-section then shows the
    structure's whole extent between labeled rows, and background beyond them), else 1
    (strictly inside its ends are the walk's guesses; not measured)."""
    return 3 if method in MULTI_PLANAR_METHODS and ends_labeled else 1


#: the fields :meth:`RunRecipe.check` refuses bad values of
_CHECKED = (
    "iterations",
    "minutes",
    "batch_size",
    "patch_size",
    "checkpoint_every",
    "seed",
    "warmup",
    "warmup_plateau",
    "prior_final",
    "prior_fraction",
    "prior_refresh",
    "foreground_crops",
    "context_slices",
    "planes",
)


@dataclass
class RunRecipe:
    """Everything a user chooses about a training run (the data comes separately)."""

    method: str = DEFAULT_METHOD
    params: dict[str, Any] = field(default_factory=dict)
    axis: int = 0
    iterations: int | None = None  #: None: DEFAULT_ITERATIONS unless minutes are given
    minutes: float | None = None
    batch_size: int = 8
    patch_size: int = 128
    seed: int = 0
    foreground_crops: float = DEFAULT_FOREGROUND_CROPS
    prior: str = DEFAULT_PRIOR
    prior_fraction: float = DEFAULT_PRIOR_FRACTION
    #: the outer labeled slices are the structure's first and last (what Slicer / ITK-SNAP
    #: users label): the propagation, as target and in the fused prediction, stops there
    ends_labeled: bool = False
    #: with ``ends_labeled``, the slices beyond the outer labeled ones train as background
    #: (prior targets of full weight): the user said nothing of the structure lies there.
    #: Measured (docs/benchmarks.md, "background beyond the ends"; 5 + 5 volumes, 4 slices):
    #: the network alone +2.5 to +4.4 points (SDCL no longer drifts on a left-atrium
    #: volume), the product's fused output level to +0.5
    background_beyond_ends: bool = True
    #: neighbouring slices on each side the network takes as channels ("2.5D",
    #: :mod:`src_models.data.context`); a continued run keeps its model's
    context_slices: int = 0
    #: the axes the network trains on and predicts along: 1 (the labeled slices') or 3 (all
    #: three, :mod:`src_models.data.planes`); None: :func:`default_planes` of the method and
    #: ``ends_labeled``; a continued run keeps its model's
    planes: int | None = None
    warmup: float = 0.4
    warmup_plateau: float = 0.0
    prior_final: float = 0.5
    #: 0: off (an option, :data:`DEFAULT_PRIOR_REFRESH` the share tried)
    prior_refresh: float = 0.0
    checkpoint_every: int = 250
    checkpoint_seconds: float = 0.0
    #: fit torch's threads to the cores other programs leave free (on the CPU)
    adapt_threads: bool = True

    def __post_init__(self) -> None:
        self.method = resolve_method(self.method, self.minutes, self.ends_labeled)
        if self.planes is None:
            self.planes = default_planes(self.method, self.ends_labeled)

    def check(self, names: dict[str, str] | None = None) -> Any:
        """Refuse values no run can use (one rule for the CLI and the plugin), before any
        work; ``names`` says how the caller's user calls each field (``--batch-size``, "the
        batch size"). Returns the method's config (its parameters checked by their types
        and ranges)."""
        name = {f: (names or {}).get(f, f.replace("_", " ")) for f in _CHECKED}
        config = make_config(get_method(self.method).Config, self.params)

        def at_least(field_: str, low: int) -> None:
            value = getattr(self, field_)
            if value is not None and value < low:
                raise SemisegError(f"{name[field_]} must be at least {low}, got {value}")

        def fraction(field_: str, high_open: bool = False) -> None:
            value = getattr(self, field_)
            ok = math.isfinite(value) and value >= 0 and (value < 1 if high_open else value <= 1)
            if not ok:
                bound = "[0, 1)" if high_open else "[0, 1]"
                raise SemisegError(f"{name[field_]} must be a number in {bound}, got {value}")

        at_least("iterations", 1)
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise SemisegError(f"{name['minutes']} must be a positive number")
        at_least("batch_size", 1)
        if self.patch_size < 16 or self.patch_size % 16:
            raise SemisegError(
                f"{name['patch_size']} {self.patch_size} must be a multiple of 16 "
                "(16, 32, ..., 128)"
            )
        at_least("checkpoint_every", 0)
        at_least("seed", 0)
        fraction("warmup")
        fraction("warmup_plateau")
        fraction("prior_final")
        fraction("prior_fraction", high_open=True)
        fraction("prior_refresh")
        fraction("foreground_crops")
        if self.prior not in PRIORS:
            raise SemisegError(f"prior must be one of {', '.join(PRIORS)}, not {self.prior!r}")
        check_context(self.context_slices, name["context_slices"])
        check_planes(self.planes, name["planes"])
        return config

    def train_config(self, device: torch.device | str = "cpu") -> TrainConfig:
        iterations = self.iterations
        if iterations is None:
            iterations = DEFAULT_ITERATIONS if self.minutes is None else 0
        return TrainConfig(
            iterations=iterations,
            minutes=self.minutes,
            batch_size=self.batch_size,
            patch_size=self.patch_size,
            seed=self.seed,
            device=str(device),
            checkpoint_every=self.checkpoint_every,
            checkpoint_seconds=self.checkpoint_seconds,
            warmup=self.warmup,
            warmup_plateau=self.warmup_plateau,
            prior_final=self.prior_final,
            prior_refresh=self.prior_refresh,
            adapt_threads=self.adapt_threads,
        )


@dataclass
class Run:
    """A run ready for :func:`src_models.training.train`."""

    volumes: list[Volume]
    sampler: SliceSampler
    bundle: ModelBundle
    config: TrainConfig


def build_run(
    recipe: RunRecipe,
    images: Sequence[np.ndarray] | None = None,
    labels: Sequence[np.ndarray | None] | None = None,
    labeled_slices: Sequence[Sequence[int] | None] | None = None,
    *,
    volumes: list[Volume] | None = None,
    num_classes: int | None = None,
    device: torch.device | str = "cpu",
    resume: ModelBundle | None = None,
    bundle_fields: dict[str, Any] | None = None,
) -> Run:
    """Build the run of ``recipe`` on arrays (``images``, ``labels``, ``labeled_slices``,
    validated by :func:`make_volumes`) or on ready ``volumes`` with ``num_classes``.
    ``resume`` continues a loaded model; otherwise a new one is created with
    ``bundle_fields`` (info, class names) on top of the recipe's axis and patch size."""
    method_cls = get_method(recipe.method)
    recipe.check()  # bad values fail before any work
    if volumes is None:
        volumes, num_classes = make_volumes(
            images, labels, recipe.axis, labeled_slices, num_classes=num_classes
        )
    elif num_classes is None:
        raise ValueError("give num_classes with ready volumes")
    # the model first: what it cannot train with fails before the prior is computed
    if resume is not None:
        bundle = resume
        context = bundle.context_slices
        planes = bundle.planes
    else:
        planes = recipe.planes
        context = check_context(recipe.context_slices)
        bundle = create_model(
            recipe.method,
            recipe.params,
            context_channels(volumes[0].slices.shape[1], context),
            num_classes,
            device,
            seed=recipe.seed,
            axis=recipe.axis,
            patch_size=recipe.patch_size,
            **(bundle_fields or {}),
        )
        bundle.method.check_new_run()
        bundle.info.setdefault("prior", recipe.prior if recipe.prior_fraction > 0 else None)
        bundle.info["context_slices"] = context
    # predictions fuse with the propagation as the run trained with it (also when continued)
    bundle.info["ends_labeled"] = bool(recipe.ends_labeled)
    sampler = SliceSampler(
        volumes,
        patch_size=recipe.patch_size,
        batch_size=recipe.batch_size,
        device=device,
        seed=recipe.seed,
        holdout_fraction=method_cls.holdout_fraction,
        foreground_crops=recipe.foreground_crops,
        prior_fraction=recipe.prior_fraction,
        prior=recipe.prior,
        ends_labeled=recipe.ends_labeled,
        context=context,
        keep_prior_probabilities=recipe.prior_refresh > 0,
        background_beyond_ends=recipe.background_beyond_ends,
        planes=planes,
    )
    # predictions average the three axes only when the network trained on them
    bundle.info["planes"] = 3 if sampler.cross_volumes else 1
    if len(volumes) == 1:  # what `semiseg suggest` starts from without --labels
        bundle.info["labeled_slices"] = list(volumes[0].labeled)
    return Run(volumes, sampler, bundle, recipe.train_config(device))
