"""The plugin's state and background work, free of Qt and napari.

Both docks of a viewer share one :class:`Session`: the current model bundle, the slicing
axis, the slices accepted during review and the loss history. The long-running work lives
here as plain functions and generators that a dock hands to napari's ``create_worker``:

- :func:`interpolate_labels` is the zero-training baseline and the instant first preview:
  the shape-based interpolation ("fill between slices", :mod:`src_models.interpolation`) of
  the sparse labels, as an :class:`InterpolationPreview`.
- :func:`training_events` is a generator: it saves the labels to train on in the run folder
  (:data:`LABELS_FILE`, so what the user painted survives any crash), starts the training
  in a child process (:mod:`napari_semiseg._train_process`; the child runs
  :func:`train_job`), yields the interpolation when the job asks for it (so it reaches the
  viewer before any training event), and relays what the child sends as
  :class:`TrainingUpdate` batches at most every ``UPDATE_PERIOD`` seconds (so a fast tiny
  model never floods the GUI thread). Every ``preview_seconds`` seconds of training (pauses
  excluded) the child also predicts the slice the viewer shows (its index is read from
  :attr:`Session.preview_index`, written by the GUI thread, and handed on by the generator)
  and sends it as a :class:`Preview`. At the end the generator loads the trained bundle from
  the run folder's checkpoint and returns it; when the child dies it raises
  :class:`TrainingProcessDied`, holding the last good checkpoint.
- :func:`predict_layers` predicts the whole volume with every map the method offers.

Run folders (``run-<date-time>-…``) go under :meth:`Session.runs_folder`: the user's choice
(remembered in the plugin's settings file), ``$NAPARI_SEMISEG_RUNS``, or the per-user data
folder from platformdirs. :func:`prune_runs` keeps the newest ``keep_runs`` and never deletes
the current run, the current model's, one holding :data:`KEEP_FILE` or anything not named
like a run; :func:`list_runs` gives the history the training dock offers.

Nothing here touches a widget (nor imports napari or Qt: the training process imports this
module); the docks update layers from the worker's signals on the GUI thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import mmap
import os
import pickle
import re
import shutil
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_semiseg import io as semiseg_io
from napari_semiseg._train_process import ChildError, ChildProcess, describe_exit, tail_lines
from src_models.data.label_values import LabelValues, interpret_labels, present_values
from src_models.data.lazy import ChannelsFirst, is_lazy, make_lazy_volume, read_label_slices
from src_models.data.volumes import (
    as_channels_first,
    check_axis,
    check_labels,
    make_volumes,
)
from src_models.device import select_device
from src_models.errors import SemisegError
from src_models.files import atomic_write
from src_models.inference import VolumePrediction, predict_training_slice, predict_volume
from src_models.interpolation import interpolate_volume
from src_models.methods.base import get_method, make_config
from src_models.propagation import affordable, propagate_volume, propagation_prior
from src_models.recipe import DEFAULT_ITERATIONS, DEFAULT_PRIOR_FRACTION, RunRecipe, build_run
from src_models.training.checkpoint import (
    META_FILE,
    ModelBundle,
    load_model,
    save_model,
)
from src_models.training.control import TrainingControl
from src_models.training.trainer import Progress, TrainConfig, train

#: seconds between two batches of events handed to the GUI thread
UPDATE_PERIOD = 0.05
#: longest wait for the training process before the generator checks control and liveness
POLL_PERIOD = 0.1
#: files of a run folder: the labels a run trained on, their slices, the process's log
LABELS_FILE = "labels.npy"
SLICES_FILE = "labeled_slices.json"
PROCESS_LOG = "process.log"
#: least seconds of training between a preview and the one of a newly shown slice
PREVIEW_FOLLOW_SECONDS = 1.0
#: log a progress line in the process log every this many seconds of training
LOG_SECONDS = 10.0
#: seconds to wait for the exit code of a child that closed its end of the pipe
KILL_WAIT = 10.0

log = logging.getLogger(__name__)
#: fewer labeled slices leave nothing to fill in between
MIN_INTERPOLATION_SLICES = 2

AXIS_NAMES = ("Z", "Y", "X")

#: run folders are named ``run-<YYYYmmdd-HHMMSS-micro>-<random>`` under the runs folder
RUN_PREFIX = "run-"
#: a run folder holding this file is never pruned (the user saved the model there)
KEEP_FILE = "keep"
#: run folders kept by default (the oldest beyond are deleted when a new run starts)
DEFAULT_KEEP_RUNS = 5
#: environment variable overriding the runs folder (e.g. for a shared machine or tests)
RUNS_ENV = "NAPARI_SEMISEG_RUNS"
APP_NAME = "napari-semiseg"
SETTINGS_FILE = "settings.json"


# -- labels helpers -------------------------------------------------------------------------
def labeled_slices(labels: np.ndarray, axis: int) -> list[int]:
    """Indices along ``axis`` of the slices holding at least one nonzero label."""
    labels = np.asarray(labels)
    others = tuple(a for a in range(labels.ndim) if a != axis)
    return [int(i) for i in np.flatnonzero(np.any(labels != 0, axis=others))]


def detect_axis(labels: np.ndarray) -> int:
    """The axis the user painted along: the one whose labeled slices are the smallest
    fraction of its length (fully painted slices light up every slice of the other axes).
    Returns 0 when nothing is labeled."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.any(labels):
        return 0
    fractions = [len(labeled_slices(labels, a)) / labels.shape[a] for a in range(3)]
    return int(np.argmin(fractions))


def class_count(labels: np.ndarray) -> int:
    """Classes including background (at least 2), from the largest label value."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    return max(2, top + 1)


def label_values(
    labels: np.ndarray, ignore: int | None = None, model: ModelBundle | None = None
) -> LabelValues:
    """How the plugin reads painted values, as ``semiseg train`` does
    (:func:`~src_models.data.label_values.interpret_labels`): ids with gaps and 0/255 masks
    become classes 0..K-1 and predictions go back to the painted values; an instance mask is
    refused with the fix. Continuing ``model``, its recorded values are used, and values it
    was not trained with are refused."""
    check_labels(labels)  # whole, non-negative numbers first (a float image is refused)
    if model is not None:
        values = LabelValues.from_info(model.info, model.num_classes)
        if ignore is not None and values.ignore is None:  # region corrections began
            values = dataclasses.replace(values, ignore=ignore)
        if not values.binary:
            found = set(present_values([labels], values.ignore).tolist())
            unknown = sorted(found - {*values.values})
            if unknown:
                raise SemisegError(
                    f"the labels hold value(s) {unknown[:5]} that the model was not trained "
                    f"with (its classes: {list(values.values)}): train a new model for them"
                )
        return values
    return interpret_labels([np.asarray(labels)], ignore=ignore)


def describe_values(values: LabelValues) -> str:
    """'2 classes (0, 255 -> 1)' and the like, for the Data tab."""
    text = f"{values.num_classes} classes"
    if values.remapped:
        shown = ", ".join(f"{v} -> {i}" for i, v in enumerate(values.values) if v != i)
        text += f" ({shown})"
    if values.ignore is not None:
        text += f", {values.ignore} = unannotated"
    return text


def image_channels_first(data: Any, rgb: bool = False, labels_ndim: int = 3) -> np.ndarray:
    """A napari image layer's data as (C, Z, Y, X): RGB(A) channels last are moved first,
    an extra leading axis (napari's channel-stacked or 4D data) is taken as channels."""
    image = np.asarray(data)
    if rgb:
        image = np.moveaxis(image, -1, 0)
    return as_channels_first(image, labels_ndim)


# -- image layers larger than memory --------------------------------------------------------
def _read(array: Any, index: tuple) -> np.ndarray:
    part = array[index]
    if hasattr(part, "compute"):  # dask
        part = part.compute()
    return np.asarray(part)


class LayerVolume:
    """A lazy image layer's data (zarr, dask, memory map...) as an array-like that reads only
    what is indexed: RGB(A) channels last come first, dask chunks are given as one chunk
    shape. It pickles by reference (a dask graph, a zarr store, a memory map's file), so the
    training process reads the volume itself; data that cannot be pickled raises a
    :class:`SemisegError` at :func:`picklable_image`."""

    def __init__(self, array: Any, channels_last: bool = False) -> None:
        self.array = array
        self.channels_last = channels_last
        shape = tuple(int(n) for n in array.shape)
        self.shape = (shape[-1], *shape[:-1]) if channels_last else shape
        self.ndim = len(self.shape)
        self.dtype = np.dtype(array.dtype)
        chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)
        self.chunks = None
        if (
            chunks is not None
            and len(chunks) == len(shape)
            and all(isinstance(c, (int, np.integer)) for c in chunks)
        ):
            chunks = tuple(int(c) for c in chunks)
            self.chunks = (chunks[-1], *chunks[:-1]) if channels_last else chunks

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = index + (slice(None),) * (self.ndim - len(index))
        if not self.channels_last:
            return _read(self.array, index)
        ints = [a for a, i in enumerate(index) if isinstance(i, (int, np.integer))]
        keep = tuple(slice(int(i), int(i) + 1) if a in ints else i for a, i in enumerate(index))
        data = np.moveaxis(_read(self.array, (*keep[1:], keep[0])), -1, 0)
        return data.squeeze(axis=tuple(ints)) if ints else data

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        array = self.array
        if isinstance(array, np.memmap):  # would pickle as a full in-memory copy
            if not isinstance(array.base, mmap.mmap) or array.filename is None:
                raise SemisegError(
                    "the image layer is a view of a memory-mapped file, which cannot be handed "
                    "to the training process without reading it whole: open the file itself "
                    "(e.g. a .npy or .zarr) as the layer"
                )
            order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
            state["array"] = (
                "memmap",
                str(array.filename),
                array.dtype.str,
                tuple(array.shape),
                int(array.offset),
                order,
            )
        return state

    def __setstate__(self, state: dict) -> None:
        array = state["array"]
        if isinstance(array, tuple) and array and array[0] == "memmap":
            _, filename, dtype, shape, offset, order = array
            state["array"] = np.memmap(
                filename, dtype=np.dtype(dtype), mode="r", shape=shape, offset=offset, order=order
            )
        self.__dict__.update(state)


def lazy_image(data: Any, rgb: bool = False, labels_ndim: int = 3) -> ChannelsFirst | None:
    """A (C, Z, Y, X) view, read on demand, of an image layer's data (its full-resolution
    level when multiscale) that is not an in-memory numpy array (dask, zarr, memory map) and
    holds more than :data:`napari_semiseg.io.LAZY_VOXELS` voxels; None otherwise (the data
    is then converted with :func:`image_channels_first` as it always was)."""
    if not is_lazy(data) or isinstance(data, torch.Tensor) or not hasattr(data, "__getitem__"):
        return None
    shape = getattr(data, "shape", None)
    if shape is None or getattr(data, "dtype", None) is None:
        return None
    if int(np.prod(shape)) <= semiseg_io.LAZY_VOXELS:
        return None
    ndim = len(shape) - (1 if rgb else 0)
    if ndim not in (labels_ndim, labels_ndim + 1):
        raise SemisegError(
            f"expected a 3D image (Z, Y, X) or (C, Z, Y, X), got an array of shape "
            f"{tuple(shape)}: give a volume or a stack of 2D slices"
        )
    view = LayerVolume(data, channels_last=rgb)
    return ChannelsFirst(view, view.ndim == labels_ndim + 1)


def picklable_image(view: ChannelsFirst) -> ChannelsFirst:
    """``view`` once checked to pickle (what the training process receives); a
    :class:`SemisegError` naming the fix when it cannot."""
    try:
        pickle.dumps(view, protocol=pickle.HIGHEST_PROTOCOL)
    except SemisegError:
        raise
    except Exception as exc:  # noqa: BLE001  (any pickling failure)
        kind = type(getattr(view.array, "array", view.array)).__name__
        raise SemisegError(
            f"the image layer's data ({kind}) cannot be handed to the training process "
            f"({exc}); it is too large to copy: save it as a zarr store (or .npy) and open "
            "that in napari"
        ) from None
    return view


def _plane_step(shape: tuple[int, ...], max_voxels: int) -> int:
    plane = int(np.prod(shape[1:])) or 1
    return max(1, -(-int(shape[0]) * plane // max(1, max_voxels)))


def sampled_percentile(array: Any, q: float, max_voxels: int = 1 << 24) -> float:
    """The ``q`` percentile of an array: exact for an in-memory one, from evenly spaced
    planes (at most ``max_voxels``) of a lazy one."""
    if not is_lazy(array):
        return float(np.percentile(array, q)) if np.size(array) else 1.0
    shape = tuple(array.shape)
    if not shape or not int(np.prod(shape)):
        return 1.0
    step = _plane_step(shape, max_voxels)
    sample = np.stack([_read(array, (i,)) for i in range(0, shape[0], step)])
    return float(np.percentile(sample, q))


def slice_score(volume: np.ndarray, axis: int) -> np.ndarray:
    """Mean of a (Z, Y, X) map over each slice along ``axis`` -> (N,); a lazy map (zarr,
    dask) is read slab by slab."""
    others = tuple(a for a in range(3) if a != axis)
    if not is_lazy(volume):
        return np.asarray(volume, dtype=np.float64).mean(axis=others)
    shape = tuple(volume.shape)
    sums = np.zeros(shape[axis], np.float64)
    step = _plane_step(shape, 1 << 24)
    for z0 in range(0, shape[0], step):
        part = _read(volume, (slice(z0, min(shape[0], z0 + step)),)).astype(np.float64)
        if axis == 0:
            sums[z0 : z0 + part.shape[0]] = part.sum(axis=(1, 2))
        else:
            sums += part.sum(axis=others)
    return sums / (int(np.prod(shape)) // shape[axis])


def rank_slices(score_map: np.ndarray, axis: int, exclude: set[int] | list[int]) -> list[int]:
    """Slices along ``axis`` sorted by decreasing mean of ``score_map`` (e.g. discrepancy),
    leaving out ``exclude`` (labeled ones); ties keep slice order."""
    return rank_means(slice_score(score_map, axis), exclude)


def rank_means(score: np.ndarray, exclude: set[int] | list[int]) -> list[int]:
    """Slice indices by decreasing ``score`` (per-slice means), without ``exclude``."""
    skip = set(exclude)
    order = sorted(range(score.shape[0]), key=lambda i: (-score[i], i))
    return [i for i in order if i not in skip]


def format_seconds(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- run folders ----------------------------------------------------------------------------
def default_run_root() -> Path:
    """Where run folders go unless the user chose another folder: ``$NAPARI_SEMISEG_RUNS``,
    else the per-user data folder (platformdirs, e.g. ``~/.local/share/napari-semiseg/runs``
    on Linux)."""
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "runs"


def settings_path() -> Path:
    import platformdirs

    return platformdirs.user_config_path(APP_NAME, appauthor=False) / SETTINGS_FILE


def load_settings(path: Path | None = None) -> dict[str, Any]:
    """The plugin's saved settings (runs folder, runs kept); {} when none or unreadable."""
    path = settings_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(values: dict[str, Any], path: Path | None = None) -> None:
    path = settings_path() if path is None else Path(path)
    data = load_settings(path)
    data.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


_RUN_NAME = re.compile(r"^run-(\d{8}-\d{6})-")


@dataclass
class RunInfo:
    """One run folder: its model's method and iteration (None: no checkpoint yet)."""

    path: Path
    started: datetime | None
    method: str = ""
    iteration: int | None = None
    kept: bool = False
    #: the run folder of the model this run continued (None: trained from scratch)
    parent: str | None = None

    def label(self) -> str:
        when = self.started.strftime("%d %b %H:%M:%S") if self.started else self.path.name
        if self.iteration is None:
            return f"{when} · no model (stopped before its first checkpoint)"
        continued = ""
        if self.parent:
            parent = run_info(Path(self.parent))
            since = (
                parent.started.strftime("%H:%M:%S") if parent.started else Path(self.parent).name
            )
            continued = f" · continued from {since}"
        return f"{self.method} · {when} · {self.iteration} iterations{continued}" + (
            " · kept" if self.kept else ""
        )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and _RUN_NAME.match(path.name) is not None


def run_info(path: Path) -> RunInfo:
    match = _RUN_NAME.match(path.name)
    started = None
    if match:
        try:
            started = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            started = None
    info = RunInfo(Path(path), started, kept=(Path(path) / KEEP_FILE).exists())
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
        info.method, info.iteration = str(meta["method"]), int(meta["iteration"])
        parent = meta.get("info", {}).get("parent_run")
        info.parent = str(parent) if parent else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return info


def list_runs(root: Path | None) -> list[RunInfo]:
    """The run folders under ``root``, newest first."""
    if root is None or not Path(root).is_dir():
        return []
    runs = [run_info(p) for p in Path(root).iterdir() if is_run_dir(p)]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


def prune_runs(root: Path | None, keep: int, protect: set[Path] | None = None) -> list[Path]:
    """Delete the oldest run folders under ``root`` beyond the newest ``keep`` ones; never a
    folder in ``protect`` (the current run, the current model's) nor one holding
    :data:`KEEP_FILE`. Only folders named like a run are touched. Returns the deleted ones."""
    protected = {Path(p).resolve() for p in (protect or set()) if p is not None}
    removed = []
    for run in list_runs(root)[max(int(keep), 0) :]:
        if run.kept or run.path.resolve() in protected:
            continue
        shutil.rmtree(run.path, ignore_errors=True)
        if not run.path.exists():
            removed.append(run.path)
    return removed


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
        )

    def train_config(self, start: int = 0, axis: int = 0) -> TrainConfig:
        """The trainer config; a continued run counts its budget from ``start``."""
        config = self.recipe(axis).train_config(self.device)
        config.iterations = start + (1 if self.minutes is not None else self.iterations)
        return config

    def validate(self) -> Any:
        """Check everything cheap to check on the GUI thread; returns the method config."""
        cls = get_method(self.method)
        config = make_config(cls.Config, self.params)
        if self.minutes is None and self.iterations < 1:
            raise SemisegError("the iteration budget must be at least 1")
        if self.minutes is not None and not self.minutes > 0:
            raise SemisegError("the time budget must be more than 0 minutes")
        if self.batch_size < 1:
            raise SemisegError("the batch size must be at least 1")
        if self.patch_size < 16 or self.patch_size % 16:
            raise SemisegError(f"patch size {self.patch_size} must be a multiple of 16 (>= 16)")
        if not self.preview_seconds >= 0:
            raise SemisegError("the preview interval must be 0 (off) or more seconds")
        if not self.stop_grace >= 0:
            raise SemisegError("the stop grace period must be 0 or more seconds")
        select_device(self.device)
        return config


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
    the labels are read from the run folder, where :func:`prepare_run` saved them, and the
    model to continue (``resume``) from its checkpoint there."""

    image: Any
    axis: int
    labeled: list[int]
    request: TrainRequest
    run_dir: str
    resume: bool
    device: str
    info: dict[str, Any]
    setup: Callable[[], Any] | None = None
    #: ``image`` is a lazy (C, Z, Y, X) view (:func:`lazy_image`, pickled by reference): the
    #: child reads the labeled slices of the labels and builds a volume read slab by slab
    lazy: bool = False


class TrainingProcessDied(SemisegError):
    """The training process ended without a result (a signal, a native crash, an
    out-of-memory kill); ``bundle`` is the run's last good checkpoint, or None."""

    def __init__(self, message: str, bundle: ModelBundle | None = None) -> None:
        super().__init__(message)
        self.bundle = bundle


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


_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The one session of ``viewer`` (created on first use, dropped with the viewer).

    napari gives each plugin widget its own proxy of the viewer: key on the viewer itself."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session()
    return _SESSIONS[viewer]


class Session:
    """State shared by the training and review docks of one viewer (no Qt).

    Attributes:
        bundle: the current model (trained, stopped, loaded) or None.
        axis: the slicing axis of the current model / labels.
        accepted: slices accepted in review; counted as labeled even if all background.
        preview_index: the slice index along ``axis`` the viewer shows (the GUI thread
            writes it, the worker reads it and hands it to the training process; a plain int
            assignment is atomic in CPython).
        busy: what runs in the background ("" when idle): "training" or "predicting".
    """

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None
        self.axis: int = 0
        self.accepted: set[int] = set()
        #: the labels' value for unannotated voxels (region corrections), or None
        self.ignore_label: int | None = None
        self.preview_index: int | None = None
        self.history = LossHistory()
        self.busy: str = ""
        self.image_name: str = ""
        self.labels_name: str = ""
        self.run_dir: Path | None = None
        #: where run folders go (None: the saved choice or :func:`default_run_root`)
        self.run_root: Path | None = None
        #: run folders kept under ``run_root`` (older ones are deleted when a run starts)
        self.keep_runs: int = DEFAULT_KEEP_RUNS
        settings = load_settings()
        if settings.get("run_root") and not os.environ.get(RUNS_ENV):
            self.run_root = Path(settings["run_root"])
        if isinstance(settings.get("keep_runs"), int) and settings["keep_runs"] >= 1:
            self.keep_runs = settings["keep_runs"]
        #: the training and review docks' shared column was split once (the user's own
        #: split is never undone)
        self.docks_balanced = False
        #: what the last training / prediction ended with, for both docks ("" when nothing)
        self.status: str = ""
        #: seconds of training (pauses excluded) behind the current model, when known
        self.train_seconds: float | None = None
        self._listeners: list[Callable[[str], None]] = []
        #: set by the training dock: continue training the current model for n iterations
        self.continue_training: Callable[[int], bool] | None = None

    # Plain callbacks instead of Qt signals keep the session testable without a GUI.
    def connect(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def disconnect(self, listener: Callable[[str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, what: str) -> None:
        """Tell the docks that ``what`` changed: "model", "busy" or "labels"."""
        for listener in list(self._listeners):
            listener(what)

    def runs_folder(self) -> Path:
        """The folder the run folders go to."""
        return Path(self.run_root) if self.run_root is not None else default_run_root()

    def new_run_dir(self) -> Path:
        """A fresh folder for the checkpoints of a run under :meth:`runs_folder`, named by
        its start time; the oldest runs beyond ``keep_runs`` are deleted (never the new one,
        the current model's or a kept one). Save the model elsewhere to keep it for good."""
        root = self.runs_folder()
        try:
            root.mkdir(parents=True, exist_ok=True)
            # microseconds: runs started within a second still sort by start
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
            new = Path(tempfile.mkdtemp(prefix=f"{RUN_PREFIX}{stamp}-", dir=root))
        except OSError as exc:
            raise SemisegError(
                f"cannot create a run folder in {root}: {exc}; pick another runs folder"
            ) from None
        previous, self.run_dir = self.run_dir, new
        prune_runs(root, self.keep_runs, {new, previous})
        return new

    def runs(self) -> list[RunInfo]:
        """The run folders under :meth:`runs_folder`, newest first."""
        return list_runs(self.runs_folder())

    def prune(self) -> list[Path]:
        return prune_runs(self.runs_folder(), self.keep_runs, {self.run_dir})

    def model_label(self) -> str:
        """ "dfcps · iteration 300" for the current model ("" when none)."""
        b = self.bundle
        return "" if b is None else f"{b.method.name} · iteration {b.iteration}"

    def model_stamp(self) -> dict[str, Any] | None:
        """What identifies the current model's state in the layers predicted with it."""
        b = self.bundle
        if b is None:
            return None
        return {
            "method": b.method.name,
            "iteration": int(b.iteration),
            "run": str(self.run_dir) if self.run_dir else "",
            "id": id(b),
        }

    def labeled(self, labels: np.ndarray, axis: int) -> list[int]:
        """Detected labeled slices plus the accepted ones (only when the axis matches)."""
        found = set(labeled_slices(labels, axis))
        if axis == self.axis:
            found |= {s for s in self.accepted if 0 <= s < np.shape(labels)[axis]}
        return sorted(found)


# -- background work (a worker thread or the training process; touches no Qt) --------------
def interpolation_problem(labeled: list[int] | int, axis: int) -> str:
    """Why the labeled slices cannot be interpolated ("" when they can): with fewer than
    two there is nothing between them, the result would be the labeled slices alone."""
    n = labeled if isinstance(labeled, int) else len(labeled)
    if n >= MIN_INTERPOLATION_SLICES:
        return ""
    return (
        f"nothing to interpolate: {n} labeled slice(s) along axis {axis}, filling between "
        f"slices needs at least {MIN_INTERPOLATION_SLICES}: paint another slice"
    )


def interpolate_labels(
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    num_classes: int | None = None,
    values: LabelValues | None = None,
) -> InterpolationPreview:
    """Shape-based interpolation ("fill between slices") of the sparse ``labels`` (Z, Y, X)
    from their ``labeled`` slices along ``axis`` (:func:`Session.labeled` gives the same ones
    training uses); no model involved. Bad labels raise a :class:`SemisegError`."""
    check_axis(axis)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise SemisegError(
            f"labels have shape {labels.shape}: a 3D label volume (Z, Y, X) is needed"
        )
    check_labels(labels, None if values is not None else num_classes)
    values = values or interpret_labels([labels], num_classes)
    ids = values.encode(labels).clip(min=0)
    used = sorted({int(s) for s in labeled if 0 <= int(s) < labels.shape[axis]})
    if values.ignore is not None:  # partly annotated slices have no outline to morph
        partly = set(labeled_slices(labels == values.ignore, axis))
        used = [s for s in used if s not in partly]
    problem = interpolation_problem(used, axis)
    if problem:
        raise SemisegError(problem)
    try:
        filled = values.decode(interpolate_volume(ids, used, axis, values.num_classes))
    except MemoryError as exc:
        raise _friendly(exc) from None
    dtype = labels.dtype if labels.dtype.kind in "iu" else np.int64
    return InterpolationPreview(axis, used, filled.astype(dtype, copy=False))


def propagate_labels(
    image: Any,
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    rgb: bool = False,
    num_classes: int | None = None,
    values: LabelValues | None = None,
) -> InterpolationPreview | None:
    """The random-walker propagation of the sparse ``labels`` over ``image`` (the better
    zero-training result, :mod:`src_models.propagation`), or None when the image is larger
    than memory or the labeled range too large for it (the interpolation stays)."""
    if lazy_image(image, rgb) is not None:
        return None
    img = image_channels_first(image, rgb)
    labels = np.asarray(labels)
    check_labels(labels, None if values is not None else num_classes)
    values = values or interpret_labels([labels], num_classes)
    used = sorted({int(s) for s in labeled if 0 <= int(s) < labels.shape[axis]})
    if not affordable(np.moveaxis(labels, axis, 0).shape, used):
        return None
    t0 = time.perf_counter()
    try:
        ids = propagate_volume(img, values.encode(labels), used, axis, values.num_classes)
    except MemoryError as exc:
        raise _friendly(exc) from None
    dtype = labels.dtype if labels.dtype.kind in "iu" else np.int64
    filled = values.decode(ids).astype(dtype)
    return InterpolationPreview(axis, used, filled, "propagation", time.perf_counter() - t0)


def zero_training_previews(
    image: Any,
    labels: np.ndarray,
    axis: int,
    labeled: list[int],
    rgb: bool = False,
    ignore: int | None = None,
) -> Generator[InterpolationPreview, None, None]:
    """The interpolation at once, then the propagation when it is affordable (worker side);
    ``ignore``: the value of unannotated voxels (region corrections)."""
    values = label_values(labels, ignore)
    yield interpolate_labels(labels, axis, labeled, values=values)
    propagated = (
        None
        if image is None
        else propagate_labels(image, labels, axis, labeled, rgb, values=values)
    )
    if propagated is not None:
        yield propagated


def _friendly(exc: BaseException) -> BaseException:
    """Turn memory errors into a SemisegError naming the fix; keep the rest."""
    text = str(exc).lower()
    if isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate" in text:
        return SemisegError(
            "out of memory: lower the batch size or the patch size, or pick a smaller network "
            "in the advanced parameters"
        )
    return exc


def save_labels(run_dir: Path, labels: np.ndarray, axis: int, labeled: list[int], info=None):
    """Write the labels a run trains on (``labels.npy``) and their slicing (axis, labeled
    slices, layer names: ``labeled_slices.json``) into ``run_dir``, atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    array = np.asarray(labels)

    def write_array(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    atomic_write(run_dir / LABELS_FILE, write_array)
    meta = {"axis": int(axis), "labeled_slices": [int(s) for s in labeled]}
    meta.update({k: str(v) for k, v in (info or {}).items() if v is not None})
    text = json.dumps(meta, indent=2)
    atomic_write(run_dir / SLICES_FILE, lambda tmp: Path(tmp).write_text(text))


def _share(array: np.ndarray) -> Any:
    """A torch tensor in shared memory for ``array`` (passed to a child without a copy
    through the pipe), or the array itself when torch has no such dtype."""
    try:
        return torch.from_numpy(np.ascontiguousarray(array)).share_memory_()
    except TypeError:
        return array


def prepare_run(job: TrainingJob) -> ChildJob:
    """Parent side of a run: check a model to continue against the job, save the labels (and
    that model) into the run folder, put the image in shared memory (or, for a lazy image
    layer larger than :data:`napari_semiseg.io.LAZY_VOXELS` voxels, hand the child a lazy view
    of it: never read whole here)."""
    view = lazy_image(job.image, job.rgb)
    image = view if view is not None else image_channels_first(job.image, job.rgb)
    bundle = job.bundle
    if bundle is not None:
        if bundle.axis != job.axis:
            raise SemisegError(
                f"the model was trained on slices along axis {bundle.axis}, the labels are "
                f"set to axis {job.axis}: set the axis back to {bundle.axis} or train anew"
            )
        if bundle.method.in_channels != image.shape[0]:
            raise SemisegError(
                f"the model expects {bundle.method.in_channels} channel(s), the image has "
                f"{image.shape[0]}: pick the image it was trained on or train anew"
            )
    run_dir = Path(job.run_dir)
    save_labels(run_dir, job.labels, job.axis, job.labeled, job.info)
    if bundle is not None:
        save_model(bundle, run_dir)  # the child resumes from it, trainer state included
    device = job.request.device if bundle is None else str(bundle.method.device)
    return ChildJob(
        _share(image) if view is None else picklable_image(view),
        job.axis,
        list(job.labeled),
        job.request,
        str(run_dir),
        bundle is not None,
        device,
        dict(job.info),
        job.child_setup,
        lazy=view is not None,
    )


def _lazy_volumes(spec: ChildJob, run_dir: Path, resumed: ModelBundle | None):
    """Child side, lazy image: only the labeled slices of the saved labels are read (the
    file is memory-mapped); the image is read slab by slab through a bounded cache."""
    labels = np.load(run_dir / LABELS_FILE, mmap_mode="r")
    if tuple(labels.shape) != tuple(spec.image.shape[1:]):
        raise SemisegError(
            f"the labels have shape {tuple(labels.shape)}, the image {tuple(spec.image.shape[1:])}"
            ": they must match voxel for voxel"
        )
    slices = read_label_slices(labels, spec.axis, spec.labeled)
    slices = {s: check_labels(a, allow_ignore=True) for s, a in slices.items()}
    if resumed is not None:
        num_classes = resumed.num_classes
    else:
        num_classes = max(2, max((int(a.max()) for a in slices.values() if a.size), default=0) + 1)
    log.info(
        "image %s (%s) read slab by slab: %d labeled slice(s) in memory",
        tuple(spec.image.shape),
        type(getattr(spec.image.array, "array", spec.image.array)).__name__,
        len(slices),
    )
    return [make_lazy_volume(spec.image, slices, spec.axis, num_classes)], num_classes


def train_job(
    spec: ChildJob,
    send: Callable[[Any], None],
    control: TrainingControl,
    preview_index: Callable[[], int | None],
) -> int:
    """Child side of a run (the training process's target; also callable in-process): build
    or resume the model, train it into the run folder, ``send`` every :class:`Progress` and
    :class:`Preview`. Returns the iteration reached (the checkpoint holds the model)."""
    if spec.setup is not None:
        spec.setup()
    req, run_dir = spec.request, Path(spec.run_dir)
    image = spec.image.numpy() if isinstance(spec.image, torch.Tensor) else spec.image
    labels = None if spec.lazy else np.load(run_dir / LABELS_FILE)
    try:
        resumed = load_model(run_dir, device=select_device(spec.device)) if spec.resume else None
        values = None
        if spec.lazy:  # (painted ids are classes as they are)
            volumes, num_classes = _lazy_volumes(spec, run_dir, resumed)
        else:
            # painted values read as the CLI reads them (0/255 -> 2 classes, gaps closed)
            values = label_values(labels, req.ignore_label, resumed)
            volumes, num_classes = make_volumes(
                [image],
                [values.encode(labels)],
                spec.axis,
                [spec.labeled],
                num_classes=values.num_classes,
            )
        volume = volumes[0]
        recipe = req.recipe(spec.axis)
        if control.stop_requested:  # stopped before it started: checkpoint at once, no prior
            recipe.prior_fraction = 0.0
        device = resumed.method.device if resumed is not None else select_device(req.device)
        run = build_run(
            recipe, volumes=volumes, num_classes=num_classes, device=device, resume=resumed
        )
        bundle, sampler = run.bundle, run.sampler
        bundle.info.update(spec.info)
        if values is not None:
            bundle.info.update(values.info())
        bundle.info["labeled_slices"] = list(volume.labeled)
        config = req.train_config(start=bundle.iteration, axis=spec.axis)
        # seconds of training (Progress.elapsed: pauses excluded) of the next preview / log
        next_preview, next_log = req.preview_seconds, 0.0
        # the slice of the last preview and when it was made: a new slice on screen gets
        # its preview at once (at most every PREVIEW_FOLLOW_SECONDS), not a period later
        shown: int | None = None
        shown_at = 0.0

        def callback(progress: Progress) -> None:
            nonlocal next_preview, next_log, shown, shown_at
            send(progress)
            if progress.elapsed >= next_log or progress.done:
                next_log = progress.elapsed + LOG_SECONDS
                logs = " ".join(f"{k} {v:.4g}" for k, v in progress.logs.items())
                log.info("iteration %d/%d %s", progress.iteration, progress.total, logs)
            every = req.preview_seconds
            if every <= 0:
                return
            index = preview_index()
            n = volume.slices.shape[0]
            index = n // 2 if index is None else min(max(int(index), 0), n - 1)
            moved = (
                shown is not None
                and index != shown
                and progress.elapsed - shown_at >= PREVIEW_FOLLOW_SECONDS
            )
            if progress.elapsed >= next_preview or progress.done or moved:
                next_preview = progress.elapsed + every
                shown, shown_at = index, progress.elapsed
                labels = predict_training_slice(bundle.method, volume, index)
                send(Preview(spec.axis, index, labels, progress.iteration))

        log.info(
            "training %s on %s from iteration %d",
            req.method,
            bundle.method.device,
            bundle.iteration,
        )
        train(bundle, sampler, config, run_dir, callback, control)
        return bundle.iteration
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None


def _last_checkpoint(run_dir: Path, device: Any) -> ModelBundle | None:
    """The model of the run folder's checkpoint, None when there is none or it is damaged."""
    if not (run_dir / META_FILE).exists():
        return None
    try:
        return load_model(run_dir, device=device)
    except SemisegError:
        return None


def _ended_without_result(job: TrainingJob, child: ChildProcess, device: Any, last) -> Any:
    """The bundle of a run whose process was ended after a stop request (its last checkpoint),
    or the error to raise for one that died."""
    run_dir = Path(job.run_dir)
    checkpoint = _last_checkpoint(run_dir, device)
    grace = job.request.stop_grace
    if child.stop_time is not None and child.terminated:
        if checkpoint is not None:
            return checkpoint
        return SemisegError(
            f"the training process did not stop within {grace:g} s and was ended before its "
            "first checkpoint: nothing to keep; train again"
        )
    how = describe_exit(child.exitcode)
    hint = " (what the system's out-of-memory killer sends)" if child.exitcode == -9 else ""
    where = f" at iteration {last.iteration}" if last is not None else " before its first iteration"
    lines = tail_lines(run_dir / PROCESS_LOG)
    tail = f" Last log lines: {' | '.join(lines)}." if lines else ""
    if checkpoint is not None:
        kept = (
            f"The last good checkpoint (iteration {checkpoint.iteration}, {run_dir}) is kept "
            "and loaded: continue training from it, save it or train anew."
        )
    else:
        kept = (
            "No checkpoint was written before it died (every "
            f"{job.request.checkpoint_every} iterations or {job.request.checkpoint_seconds:g} s"
            "); the previous model is kept."
        )
    return TrainingProcessDied(
        f"the training process died ({how}{hint}){where}.{tail} {kept} The labels it trained "
        f"on are saved in {run_dir / LABELS_FILE}.",
        checkpoint,
    )


def training_events(
    job: TrainingJob,
) -> Generator[TrainingUpdate | InterpolationPreview, None, ModelBundle]:
    """Train as described by ``job`` in a child process; yields :class:`TrainingUpdate` and
    returns the bundle loaded from the run folder's checkpoint.

    With ``job.interpolate`` the first thing yielded is the :class:`InterpolationPreview` of
    the labels: the instant preview, computed while the child starts. ``job.control``
    pauses, resumes and stops the child (a stopped child that has not ended within
    ``request.stop_grace`` seconds is terminated; its last checkpoint is returned); a child
    that dies raises :class:`TrainingProcessDied`. ``job.finished`` is set when everything
    has ended (also on error) and the child is gone.
    """
    child: ChildProcess | None = None
    try:
        req = job.request
        spec = prepare_run(job)
        device = select_device(spec.device)
        child = ChildProcess(
            train_job,
            (spec,),
            Path(job.run_dir) / PROCESS_LOG,
            nice=req.nice,
            threads=req.thread_count(),
            name="semiseg-train",
        )
        job.pid = child.pid
        del spec  # the child holds the shared image now
        if job.interpolate:
            values = label_values(job.labels, job.request.ignore_label, job.bundle)
            yield interpolate_labels(job.labels, job.axis, job.labeled, values=values)
            # the better zero-training result follows within seconds, while the child trains
            propagated = propagate_labels(
                job.image, job.labels, job.axis, job.labeled, job.rgb, values=values
            )
            if propagated is not None:
                yield propagated
        last: Progress | None = None
        while not child.ended:
            if job.control.stop_requested:
                child.request_stop()
            child.set_paused(job.control.paused)
            child.set_preview_index(job.preview_index())
            child.enforce_stop(req.stop_grace)
            batch = child.receive(POLL_PERIOD, UPDATE_PERIOD)
            progress = [e for e in batch if isinstance(e, Progress)]
            previews = [e for e in batch if isinstance(e, Preview)]
            last = progress[-1] if progress else last
            # a preview can arrive in a batch of its own (after its progress event): never
            # drop it, re-send the latest progress with it
            if last is not None and (progress or previews):
                yield TrainingUpdate(
                    last,
                    [(p.iteration, dict(p.logs)) for p in progress if p.logs and not p.done],
                    previews[-1] if previews else None,
                )
        child.join(KILL_WAIT)
        if child.failure is not None:
            failure = child.failure
            if failure.user_error:
                raise SemisegError(failure.message)
            raise _friendly(ChildError(failure))
        if child.has_result:
            return load_model(job.run_dir, device=device)
        outcome = _ended_without_result(job, child, device, last)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None
    finally:
        if child is not None:
            child.close(job.request.stop_grace)
        job.finished.set()


#: a lazy prediction goes to ``<run folder>/PREDICTIONS/<image>-<time>.zarr``
PREDICTIONS = "predictions"


def prediction_store(run_dir: Path, image_name: str) -> Path:
    """A new zarr store path in the run folder for the prediction of a lazy image."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in image_name).strip("_")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    return Path(run_dir) / PREDICTIONS / f"{safe or 'image'}-{stamp}.zarr"


def _output_chunks(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """Chunks of a streamed output: thin along the slicing axis (slab writes), whole-ish
    planes otherwise (napari reads planes)."""
    return tuple(min(n, 16 if a == axis else 256) for a, n in enumerate(shape))


def predict_layers(
    bundle: ModelBundle,
    image: Any,
    rgb: bool = False,
    store: Path | None = None,
    labels: np.ndarray | None = None,
    labeled: list[int] | None = None,
) -> VolumePrediction:
    """Labels and every map of the method for a whole volume (worker side).

    A lazy image larger than :data:`napari_semiseg.io.LAZY_VOXELS` voxels (:func:`lazy_image`)
    is read slab by slab and, when ``store`` is given, predicted into zarr arrays of a zarr
    group there (``labels`` and one per map, the ``pseudo`` map as float32 with -1 left out);
    the returned prediction then holds those zarr arrays, never whole numpy arrays.

    With the sparse ``labels`` (Z, Y, X) and their ``labeled`` slices along the model's axis,
    an in-memory prediction is fused with their propagation, as ``semiseg predict --labels``
    (:func:`src_models.inference.predict_volume` ``prior=``)."""
    maps = tuple(bundle.method.map_names)
    try:
        view = lazy_image(image, rgb)
        if view is None or store is None:
            source = view if view is not None else image_channels_first(image, rgb)
            values = LabelValues.from_info(bundle.info, bundle.num_classes)
            prior = None
            if view is None and labels is not None and labeled:
                prior = _fusion_prior(bundle, source, labels, labeled)
            pred = predict_volume(bundle, source, maps=maps, prior=prior)
            pred.labels = values.decode(pred.labels)  # the painted values back
            return pred
        import zarr

        spatial = tuple(view.shape[1:])
        chunks = _output_chunks(spatial, bundle.axis)
        Path(store).parent.mkdir(parents=True, exist_ok=True)
        # written under a temporary name and renamed when complete: a crash or a full disk
        # never leaves a half-written store that looks like a prediction
        staging = Path(store).with_name(f".{Path(store).name}.partial")
        group = zarr.open_group(str(staging), mode="w")
        dtype = np.uint8 if bundle.num_classes <= 256 else np.uint16
        out: dict[str, Any] = {
            "labels": group.create_array("labels", shape=spatial, chunks=chunks, dtype=dtype)
        }
        for name in maps:
            out[name] = group.create_array(name, shape=spatial, chunks=chunks, dtype="float32")
        group.attrs["semiseg"] = {
            "method": bundle.method.name,
            "iteration": int(bundle.iteration),
            "maps": list(maps),
        }
        try:
            predict_volume(bundle, view, maps=maps, out=out)
            os.replace(staging, store)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        group = zarr.open_group(str(store), mode="r+")
        return VolumePrediction(group["labels"], None, {name: group[name] for name in maps})
    except OSError as exc:
        raise SemisegError(
            f"cannot write the prediction into {store} ({exc}); check free disk space"
        ) from None
    except (MemoryError, RuntimeError) as exc:
        raise _friendly(exc) from None


def _fusion_prior(bundle: ModelBundle, image: np.ndarray, labels: Any, labeled: list[int]):
    """The propagation prior (K, Z, Y, X) of ``labels`` for a fused prediction, or None when
    the labels do not fit the model or the propagation is not affordable."""
    labels = np.asarray(labels)
    if labels.shape != image.shape[1:]:
        return None
    try:  # the model's reading of the values (refuses values it does not know)
        labels = label_values(labels, model=bundle).encode(labels)
    except SemisegError:  # values the model does not know: no fusion
        return None
    if not affordable(np.moveaxis(labels, bundle.axis, 0).shape, labeled):
        return None
    return propagation_prior(image, labels, labeled, bundle.axis, bundle.num_classes)


def _lazy_pseudo(array: Any) -> Any:
    """The uint8 pseudo-labels of a lazy ``pseudo`` map, as a dask array (read on demand)."""
    import dask.array as da

    data = da.from_zarr(array) if not hasattr(array, "compute") else array
    return da.where(data < 0, 0, da.rint(data)).astype(np.uint8)


def display_maps(prediction: VolumePrediction) -> dict[str, tuple[np.ndarray, str]]:
    """Name -> (array, layer type) of the layers to show for a prediction: ``pseudo`` becomes
    the uint8 ``pseudo-labels`` Labels layer (-1, left out, -> 0), every other map an Image.
    Lazy maps (zarr arrays of a streamed prediction) stay lazy."""
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name, array in prediction.maps.items():
        if is_lazy(array):
            out["pseudo-labels" if name == "pseudo" else name] = (
                (_lazy_pseudo(array), "labels") if name == "pseudo" else (array, "image")
            )
        elif name == "pseudo":
            ids = np.where(array < 0, 0, np.rint(array)).astype(np.uint8)
            out["pseudo-labels"] = (ids, "labels")
        else:
            out[name] = (np.asarray(array, dtype=np.float32), "image")
    return out
