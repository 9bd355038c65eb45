"""What the GUI thread, the worker thread and the training process hand each other, free of
Qt and napari: the training request (:class:`TrainRequest`), the job the GUI thread gathers
for the worker (:class:`TrainingJob`) and the one the worker pickles into the training process
(:class:`ChildJob`), the events that come back (:class:`InterpolationPreview`,
:class:`Preview`, :class:`TrainingUpdate`), the errors (:class:`TrainingProcessDied`,
:func:`_friendly`) and the loss history the events fill (:class:`LossHistory`), with the
texts that describe a training's duration.

These types are built and read in all three places: the GUI thread, the worker thread and the
training process.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src_models.device import select_device
from src_models.errors import SemisegError
from src_models.recipe import DEFAULT_ITERATIONS, DEFAULT_PRIOR_FRACTION, RunRecipe
from src_models.training.checkpoint import ModelBundle
from src_models.training.control import TrainingControl
from src_models.training.trainer import Progress, TrainConfig


def format_seconds(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def describe_training(seconds: float | None, iterations: int) -> str:
    """ "300 iterations (2m05s of training)"."""
    spent = f" ({format_seconds(seconds)} of training)" if seconds else ""
    return f"{iterations} iterations{spent}"


# -- requests and events --------------------------------------------------------------------
@dataclass
class TrainRequest:
    """What the training dock asks for. ``params`` are the method's hyperparameters as the
    form gives them (strings or values; :func:`make_config` coerces and validates them)."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)
    #: budget in iterations (ignored when ``minutes`` is set)
    iterations: int = DEFAULT_ITERATIONS
    minutes: float | None = None  #: wall-clock budget
    batch_size: int = 8
    patch_size: int = 128
    seed: int = 0
    device: str = "auto"
    #: seconds of training (pauses excluded) between live previews of the slice on screen,
    #: the first one after that long, and one at the end (0: off)
    preview_seconds: float = 15.0
    checkpoint_every: int = 250
    #: ...and at least every this many seconds of training, so a crashed run keeps recent work
    checkpoint_seconds: float = 60.0
    #: how much lower the training process's CPU priority is (nice, 0-19): the viewer then
    #: wins the CPU whenever it needs it (see benchmarks/gui_responsiveness)
    nice: int = 10
    #: torch intra-op threads of the training process; 0: all CPUs but one (at least one),
    #: which leaves a core to the GUI thread and avoids oversubscribing busy machines
    threads: int = 0
    #: seconds a stopped training process gets to checkpoint and end before it is terminated
    stop_grace: float = 5.0
    #: the painted value that marks unannotated voxels (not trained on), or None
    ignore_label: int | None = None
    #: share of each labeled batch taken from the propagation (the recipe's default)
    prior_fraction: float = DEFAULT_PRIOR_FRACTION
    #: the outer labeled slices are the structure's first and last (the recipe's)
    ends_labeled: bool = False

    def thread_count(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, min(torch.get_num_threads(), (os.cpu_count() or 2) - 1))

    def recipe(self, axis: int) -> RunRecipe:
        """The run this request asks for (the core's recipe, as the CLI builds it)."""
        return RunRecipe(
            method=self.method,
            params=self.params,
            axis=axis,
            iterations=self.iterations,
            minutes=self.minutes,
            batch_size=self.batch_size,
            patch_size=self.patch_size,
            seed=self.seed,
            checkpoint_every=self.checkpoint_every,
            checkpoint_seconds=self.checkpoint_seconds,
            prior_fraction=self.prior_fraction,
            ends_labeled=self.ends_labeled,
        )

    def train_config(self, start: int = 0, axis: int = 0) -> TrainConfig:
        """The trainer config; a continued run counts its budget from ``start``."""
        config = self.recipe(axis).train_config(self.device)
        config.iterations = start + (1 if self.minutes is not None else self.iterations)
        return config

    def validate(self) -> Any:
        """Check everything cheap to check on the GUI thread; returns the method config."""
        # the run's own values: the core's one rule (the CLI applies it too)
        config = self.recipe(0).check(DOCK_NAMES)
        if not self.preview_seconds >= 0:
            raise SemisegError("the preview interval must be 0 (off) or more seconds")
        if not self.stop_grace >= 0:
            raise SemisegError("the stop grace period must be 0 or more seconds")
        select_device(self.device)
        return config


#: how the training dock calls each :class:`RunRecipe` field its check may refuse
DOCK_NAMES = {
    "iterations": "the iteration budget",
    "minutes": "the time budget (minutes)",
    "batch_size": "the batch size",
    "patch_size": "the patch size",
    "seed": "the seed",
}


@dataclass
class InterpolationPreview:
    """A zero-training result of the sparse labels: labels (Z, Y, X) of the labels' integer
    dtype, filled from the ``labeled`` slices along ``axis``. ``kind`` says which:
    ``"interpolation"`` (shape-based, instant, 0 outside the labeled range) or
    ``"propagation"`` (the random walker along the image's edges, seconds)."""

    axis: int
    labeled: list[int]
    labels: np.ndarray
    kind: str = "interpolation"
    seconds: float = 0.0


@dataclass
class Preview:
    """A predicted slice: labels (H, W) uint8 at ``index`` along ``axis``."""

    axis: int
    index: int
    labels: np.ndarray
    iteration: int


@dataclass
class TrainingUpdate:
    """What the worker yields: the latest progress, every iteration's logs since the last
    update (for the loss curve) and the newest preview, if any."""

    progress: Progress
    history: list[tuple[int, dict[str, float]]]
    preview: Preview | None = None


@dataclass
class TrainingJob:
    """Everything the worker needs, gathered on the GUI thread; ``pid`` is the training
    process's once it started."""

    image: Any  #: (Z, Y, X), (C, Z, Y, X) or RGB (Z, Y, X, C) raw intensities, read lazily
    labels: np.ndarray  #: (Z, Y, X) integer, a copy (the user may paint during training)
    axis: int
    labeled: list[int]
    request: TrainRequest
    run_dir: Path
    control: TrainingControl = field(default_factory=TrainingControl)
    rgb: bool = False  #: channels last (napari RGB image)
    bundle: ModelBundle | None = None  #: continue this model instead of creating one
    preview_index: Callable[[], int | None] = lambda: None
    #: first yield the shape-based interpolation of ``labels`` (needs 2 labeled slices)
    interpolate: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    finished: threading.Event = field(default_factory=threading.Event)
    #: a module-level function (or a partial of one) the training process calls before it
    #: trains: a hook for tests that inject faults into the child
    child_setup: Callable[[], Any] | None = None
    pid: int | None = None


@dataclass
class ChildJob:
    """What the training process gets (pickled into it at its start): the image (C, Z, Y,
    X) as a torch tensor in shared memory (or an array when torch cannot hold its dtype);
    the labels are read from the run folder, where
    :func:`~napari_semiseg._run_parent.prepare_run` saved them, and the model to continue
    (``resume``) from its checkpoint there."""

    image: Any
    axis: int
    labeled: list[int]
    request: TrainRequest
    run_dir: str
    resume: bool
    device: str
    info: dict[str, Any]
    setup: Callable[[], Any] | None = None
    #: ``image`` is a lazy (C, Z, Y, X) view (:func:`~napari_semiseg._layer_data.lazy_image`,
    #: pickled by reference): the child reads the labeled slices of the labels and builds a
    #: volume read slab by slab
    lazy: bool = False


class TrainingProcessDied(SemisegError):
    """The training process ended without a result (a signal, a native crash, an
    out-of-memory kill); ``bundle`` is the run's last good checkpoint, or None."""

    def __init__(self, message: str, bundle: ModelBundle | None = None) -> None:
        super().__init__(message)
        self.bundle = bundle


def _friendly(exc: BaseException) -> BaseException:
    """Turn memory errors into a SemisegError naming the fix; keep the rest."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text:
        return SemisegError(
            "out of memory: lower the batch size or the patch size, or pick a smaller network "
            "in the advanced parameters"
        )
    return exc


class LossHistory:
    """Per-term series (iteration, value) of the training logs, for the loss curve."""

    def __init__(self) -> None:
        self.series: dict[str, tuple[list[int], list[float]]] = {}

    def extend(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        for it, logs in rows:
            for key, value in logs.items():
                xs, ys = self.series.setdefault(key, ([], []))
                xs.append(int(it))
                ys.append(float(value))

    def clear(self) -> None:
        self.series.clear()

    def __len__(self) -> int:
        return max((len(xs) for xs, _ in self.series.values()), default=0)
