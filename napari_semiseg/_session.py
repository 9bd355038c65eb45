"""The plugin's GUI-side state, free of Qt and napari.

Both docks of a viewer share one :class:`Session` (:func:`session_for`): the current model
bundle, the slicing axis, the slices accepted during review and the loss history. It lives on
the GUI thread; a worker thread only reads :attr:`Session.preview_index`. The long-running
work lives in other modules as plain functions and generators that a dock hands to napari's
``create_worker``: the zero-training previews (:mod:`napari_semiseg._previews`), the
training run (:mod:`napari_semiseg._run_parent` in the worker thread,
:mod:`napari_semiseg._run_child` in the training process) and the whole-volume prediction
(:mod:`napari_semiseg._predict`).

Run folders go under :meth:`Session.runs_folder` (:mod:`napari_semiseg._runs`: the user's
choice, remembered in the plugin's settings file, ``$NAPARI_SEMISEG_RUNS``, or the per-user
data folder).

Nothing here touches a widget (nor imports napari or Qt); the docks update layers from the
worker's signals on the GUI thread.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from napari_semiseg._jobs import LossHistory
from napari_semiseg._labels import labeled_slices
from napari_semiseg._runs import (
    DEFAULT_KEEP_RUNS,
    RUN_PREFIX,
    RUNS_ENV,
    RunInfo,
    default_run_root,
    list_runs,
    load_settings,
    prune_runs,
)
from src_models.errors import SemisegError
from src_models.training.checkpoint import ModelBundle

_SESSIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The one session of ``viewer`` (created on first use, dropped with the viewer).

    napari gives each plugin widget its own proxy of the viewer: key on the viewer itself."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    if viewer not in _SESSIONS:
        _SESSIONS[viewer] = Session()
    return _SESSIONS[viewer]


class Change(Enum):
    """What changed in the session (a :data:`SessionEvent`)."""

    MODEL = "model"  #: the current model (trained, stopped, loaded, made current)
    BUSY = "busy"  #: training, predicting or exporting started or ended
    LABELS = "labels"  #: accepted slices changed the training labels
    PROGRESS = "progress"  #: the first progress of a run arrived


@dataclass(frozen=True)
class ContinueTraining:
    """The review dock asks the training dock to continue the current model."""

    iterations: int


#: what session listeners receive
SessionEvent = Change | ContinueTraining


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
        #: the outer labeled slices are the structure's first and last (the training dock's
        #: "Labeled slices include the first and last"): the propagation stops there
        self.ends_labeled: bool = False
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
        self._listeners: list[Callable[[SessionEvent], None]] = []
        #: a training dock of this viewer is open (it answers :class:`ContinueTraining`)
        self.training_dock_open = False

    # Plain callbacks instead of Qt signals keep the session testable without a GUI.
    def connect(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.append(listener)

    def disconnect(self, listener: Callable[[SessionEvent], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def notify(self, event: SessionEvent) -> None:
        """Tell the docks what happened (every listener gets every event)."""
        for listener in list(self._listeners):
            listener(event)

    def request_continue(self, iterations: int) -> bool:
        """Ask for the current model to be trained ``iterations`` more (the review dock's
        *Continue training*): a :class:`ContinueTraining` event; the training dock starts
        the run. Returns whether a training now runs."""
        self.notify(ContinueTraining(iterations))
        return self.busy == "training"

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
