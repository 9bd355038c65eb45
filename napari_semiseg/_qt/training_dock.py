"""The training dock: pick image and sparse labels, choose a method, train in the background.

*Propagate* (and *Train*, while the training process starts) shows the zero-training result
of the labeled slices in the ``no-training result`` layer: the shape-based interpolation at
once (3D Slicer's "fill between slices"), then, seconds later, the random walker that carries
the labels along the image's edges, blended with the outlines carried along the image's
optical flow (:mod:`src_models.propagation`), the better of the two
and the bar a trained model must beat. Both are computed in a worker.

Pattern (after napari-nninteractive's ``widget_main.py``): the work runs in
``create_worker(training_events, job)`` from :mod:`napari_semiseg._run_parent`, which trains
in a child process (a crash or an out-of-memory kill there leaves the viewer and its labels
alive) and relays its events; the worker never touches a widget; its ``yielded`` events
update the progress bar, the loss curve and the preview layer on the GUI thread; the controls
are disabled while it runs and re-enabled in the ``finished`` handler (after ``errored``
showed the core's message as a notification: for a process that died, its exit signal, last
log lines and the checkpoint kept, which becomes the current model); closing the dock or the
viewer stops the training process through :class:`TrainingControl` and waits for it.

Layout: the settings sit in tabs (Data, Method, Budget, Runs; each scrolls on its own) above
the Run section, which is always in sight (Train / Pause / Stop, progress, a status line of
at most three lines, the loss curve, Save / Load model); no widget forces the dock wider than
napari's dock column, and when the review dock shares the column the two split it once
(:func:`napari_semiseg._qt.layers.balance_docks`). Each run writes a run folder under the
session's runs folder (per-user data folder by default); the Runs tab lists them (method,
time, iterations) and makes an earlier one's model current again. Notifications are one
short line (:func:`short`), the status line keeps the whole message.

Nothing about the methods is written here: the method list, descriptions and parameter forms
come from the registry in :mod:`src_models.methods.base`.

Why one module of ~950 lines: the tabs are their own widgets
(:mod:`napari_semiseg._qt.training_settings`, :mod:`napari_semiseg._qt.runs_tab`; the dock
keeps their widgets under the same attribute names), and the work runs elsewhere
(:mod:`napari_semiseg._run_parent`, :mod:`napari_semiseg._previews`). What is left is the
controller of one run: starting it, its events (progress, loss curve, live preview, the
no-training result), pause / stop, the model it leaves (save, load) and shutting it down all
read and write the same state (``worker``, ``job``, the session's busy flag and model) and
the same Run section; split, that state would be handed between modules.
"""

from __future__ import annotations

import sys
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_semiseg._jobs import (
    InterpolationPreview,
    Preview,
    TrainingJob,
    TrainingProcessDied,
    TrainingUpdate,
    TrainRequest,
    format_seconds,
)
from napari_semiseg._labels import (
    describe_values,
    detect_axis,
    interpolation_problem,
    label_values,
    labeled_slices,
)
from napari_semiseg._previews import zero_training_previews
from napari_semiseg._qt.layers import (
    add_or_update,
    check_pair,
    current_index,
    data_note,
    image_data,
    spatial_shape,
)
from napari_semiseg._qt.loss_plot import LossPlot
from napari_semiseg._qt.runs_tab import RunsTab
from napari_semiseg._qt.training_settings import BudgetTab, DataTab, MethodTab, plural
from napari_semiseg._qt.widgets import (
    DOCK_WIDTH,
    StatusLine,
    balance_later,
    error_message,
    prediction_colormap,
    short,
)
from napari_semiseg._run_parent import training_events
from napari_semiseg._runs import KEEP_FILE, RunInfo, is_run_dir
from napari_semiseg._session import Change, ContinueTraining, SessionEvent, session_for
from napari_semiseg._train_process import ChildError, format_bytes, resident_memory
from src_models.device import select_device
from src_models.errors import SemisegError
from src_models.method_choice import AUTO, resolve_method
from src_models.methods.base import config_to_dict
from src_models.training.checkpoint import ModelBundle, load_model, save_model
from src_models.training.control import TrainingControl

#: seconds the dock waits for the training process to end when it is closed mid-run (it is
#: terminated after ``TrainRequest.stop_grace`` seconds)
STOP_TIMEOUT = 60.0
#: the layer the zero-training result goes to (added or updated in place): the shape-based
#: interpolation at once, then the random-walker propagation when it is ready
NO_TRAINING_LAYER = "no-training result"
#: the settings tabs never shrink below this (tab bar + three rows of the Data tab)
TABS_MIN_HEIGHT = 165
#: the loss curve's least height (legend, axes and a readable curve)
LOSS_PLOT_MIN_HEIGHT = 100


class TrainingDock(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari (npe2 widget contribution)."""

    dock_role = "training"

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.job: TrainingJob | None = None
        self.interpolation_worker = None
        #: the labels layer the running training interpolates (geometry of its preview)
        self._job_labels: Labels | None = None
        self._axis_manual = False
        self._closed = False
        self._watched_labels: Labels | None = None
        self._window_filtered: QObject | None = None
        self._docked = False
        self._info_timer = QTimer(self)
        self._info_timer.setSingleShot(True)
        self._info_timer.setInterval(250)
        self._info_timer.timeout.connect(self.refresh_data_info)
        self._build()
        self.session.connect(self._on_session)
        self.session.training_dock_open = True
        self.viewer.dims.events.current_step.connect(self._update_preview_index)
        self._on_labels_layer(self.labels_combo.layer())
        self._update_preview_index()
        #: training seconds of the model a continued run starts from
        self._seconds_before = 0.0
        self._set_busy(False)

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        """Settings in tabs (each scrolls on its own), the Run section below them always in
        sight: buttons, progress, status, loss curve, model history / save / load. Nothing
        forces the dock wider than napari's default dock width (~330 px)."""
        outer = QVBoxLayout(self)
        outer.setContentsMargins(4, 4, 4, 4)
        outer.setSpacing(4)
        # the settings fold away while training and reviewing, so the review dock below
        # gets the room at napari's default window (1089 x 639 on a 1280 x 800 screen)
        self.settings_toggle = QToolButton()
        self.settings_toggle.setText("Settings")
        self.settings_toggle.setCheckable(True)
        self.settings_toggle.setChecked(True)
        self.settings_toggle.setArrowType(Qt.ArrowType.DownArrow)
        self.settings_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.settings_toggle.setAutoRaise(True)
        self.settings_toggle.setToolTip(
            "Show or fold the settings (data, method, budget, runs); they fold while "
            "training so the review dock has room"
        )
        self.settings_toggle.toggled.connect(self.show_settings)
        outer.addWidget(self.settings_toggle)
        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        self.tabs.setUsesScrollButtons(False)
        self.tabs.setMinimumHeight(TABS_MIN_HEIGHT)
        outer.addWidget(self.tabs, 2)

        # each tab owns its widgets; the dock keeps their names (tests, the review loop)
        self.data_tab = DataTab(self.viewer)
        self.tabs.addTab(self.data_tab, "Data")
        self.image_combo = self.data_tab.image_combo
        self.labels_combo = self.data_tab.labels_combo
        self.axis_combo = self.data_tab.axis_combo
        self.data_info = self.data_tab.data_info
        self.interpolate_button = self.data_tab.interpolate_button
        self.ends_labeled = self.data_tab.ends_labeled
        self.ends_labeled.toggled.connect(self._on_ends_labeled)
        self.image_combo.layerChanged.connect(self._on_image_layer)
        self.labels_combo.layerChanged.connect(self._on_labels_layer)
        self.axis_combo.activated.connect(self._on_axis_chosen)

        self.method_tab = MethodTab()
        self.tabs.addTab(self.method_tab, "Method")
        self.method_combo = self.method_tab.method_combo
        self.method_description = self.method_tab.method_description
        self.params = self.method_tab.params
        self.advanced = self.method_tab.advanced

        self.budget_tab = BudgetTab()
        self.tabs.addTab(self.budget_tab, "Budget")
        self.iterations = self.budget_tab.iterations
        self.minutes = self.budget_tab.minutes
        self.budget_unit = self.budget_tab.budget_unit
        self.batch_size = self.budget_tab.batch_size
        self.patch_size = self.budget_tab.patch_size
        self.device_combo = self.budget_tab.device_combo
        self.device_label = self.budget_tab.device_label
        self.seed = self.budget_tab.seed
        self.preview_seconds = self.budget_tab.preview_seconds

        self.runs_tab = RunsTab(self.session, lambda path: self.load_model_from(path))
        self.tabs.addTab(self.runs_tab, "Runs")
        self.runs_label = self.runs_tab.runs_label
        self.runs_button = self.runs_tab.runs_button
        self.keep_runs = self.runs_tab.keep_runs
        self.runs_list = self.runs_tab.runs_list
        self.use_run_button = self.runs_tab.use_run_button

        run = QGroupBox("Run")
        rlay = QVBoxLayout(run)
        rlay.setContentsMargins(4, 4, 4, 4)
        rlay.setSpacing(4)
        buttons = QGridLayout()
        buttons.setHorizontalSpacing(4)
        self.train_button = QPushButton("Train")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.interpolate_button.setToolTip(
            "No training: the labeled slices carried to the others, into the "
            f"'{NO_TRAINING_LAYER}' layer: the shape-based interpolation at once (3D Slicer's "
            "'Fill between slices'), then a random walker along the image's edges and "
            "the outlines carried along its optical flow, seconds "
            "later (Biomedisa's 'smart interpolation'). It is the result a trained model "
            "should beat; Train shows it too while training starts"
        )
        self.train_button.setToolTip(
            "Train a new model from scratch on the labeled slices (the no-training result "
            f"shows at once in the '{NO_TRAINING_LAYER}' layer); the current model "
            "stays in the Runs tab"
        )
        for i, b in enumerate((self.train_button, self.pause_button, self.stop_button)):
            b.setMinimumWidth(40)
            b.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            buttons.addWidget(b, 0, i)
            buttons.setColumnStretch(i, 3 if i == 0 else 2)
        rlay.addLayout(buttons)
        self.interpolate_button.clicked.connect(lambda: self.interpolate())
        self.train_button.clicked.connect(lambda: self.start_training())
        self.pause_button.clicked.connect(self.toggle_pause)
        self.pause_button.setToolTip(
            "Pause the training (the process waits and uses no CPU; the clock of a minutes "
            "budget stops too); Resume goes on. Stop instead to keep the model"
        )
        self.stop_button.setToolTip(
            "Stop after this iteration: the model is checkpointed, loaded as the current one "
            "and kept in the Runs tab (continue it later with Continue training)"
        )
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setFormat("no run yet")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = StatusLine("idle")
        self.loss_plot = LossPlot(self.session.history)
        self.loss_plot.setMinimumHeight(LOSS_PLOT_MIN_HEIGHT)
        rlay.addWidget(self.progress)
        rlay.addWidget(self.status)
        rlay.addWidget(self.loss_plot, 1)
        models = QHBoxLayout()
        self.save_button = QPushButton("Save model…")
        self.save_button.setToolTip(
            "Copy the current model into a folder of yours: run folders are deleted after "
            "the last few runs, a saved model stays"
        )
        self.load_button = QPushButton("Load model…")
        self.load_button.setToolTip(
            "Load a model folder (model.json + model.pt) saved by the plugin or by "
            "`semiseg train`: predict with it, continue training it"
        )
        for b in (self.save_button, self.load_button):
            b.setMinimumWidth(40)
            b.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            models.addWidget(b)
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        rlay.addLayout(models)
        outer.addWidget(run, 3)
        self.refresh_runs()

    def sizeHint(self) -> QSize:  # noqa: N802  (Qt override)
        hint = super().sizeHint()
        return QSize(DOCK_WIDTH, hint.height())

    # -- run folders and model history (the Runs tab) ---------------------------------------
    def refresh_runs(self) -> None:
        """Show the runs folder and its runs (newest first; the current model's marked)."""
        if self._closed:
            return
        self.runs_tab.refresh()

    def use_selected_run(self, run: RunInfo | Path | str | None = None) -> ModelBundle | None:
        """Make a run's model the current one (the selected row by default)."""
        return self.runs_tab.use_selected_run(run)

    def set_runs_folder(self, folder: str | Path, remember: bool = True) -> None:
        self.runs_tab.set_runs_folder(folder, remember)

    # -- reactions --------------------------------------------------------------------------
    def _on_image_layer(self, layer) -> None:
        self.session.image_name = layer.name if layer is not None else ""
        self._update_preview_index()
        self.refresh_data_info()

    def _on_labels_layer(self, layer) -> None:
        if self._watched_labels is not None:
            for ev in (self._watched_labels.events.paint, self._watched_labels.events.data):
                ev.disconnect(self._schedule_info)
        self._watched_labels = layer
        if layer is not None:
            layer.events.paint.connect(self._schedule_info)
            layer.events.data.connect(self._schedule_info)
            self.session.labels_name = layer.name
        self._axis_manual = False
        self.refresh_data_info()

    def _on_axis_chosen(self, index: int) -> None:
        self._axis_manual = True
        self.session.axis = index
        self._update_preview_index()
        self.refresh_data_info()

    def _on_ends_labeled(self, checked: bool) -> None:
        self.session.ends_labeled = bool(checked)

    def _schedule_info(self, *_: Any) -> None:
        self._info_timer.start()

    def _on_session(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if isinstance(event, ContinueTraining):  # the review dock's Continue training
            self.continue_training(event.iterations)
        elif event is Change.LABELS:
            self.refresh_data_info()
        elif event is Change.BUSY:
            self._set_busy(bool(self.session.busy))
        elif event is Change.MODEL:
            self._show_model(self.session.bundle)

    def show_settings(self, shown: bool) -> None:
        """Show or fold the settings tabs; the dock column is shared again."""
        if self.settings_toggle.isChecked() != shown:
            self.settings_toggle.setChecked(shown)  # toggled: comes back here
            return
        self.tabs.setVisible(shown)
        self.settings_toggle.setArrowType(
            Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow
        )
        if self._docked:
            balance_later(self, again=True)

    def refresh_data_info(self) -> None:
        """Detect the axis (unless chosen by hand) and show labeled slices and classes."""
        labels = self.labels_combo.layer()
        if labels is None:
            self.data_info.setText("Add a labels layer and paint a few slices.")
            return
        data = np.asarray(labels.data)
        if data.ndim != 3:
            self.data_info.setText(f"Labels must be 3D (Z, Y, X); this one is {data.ndim}D.")
            return
        image = self.image_combo.layer()
        if image is not None:  # said as soon as the pair is picked, not after Train
            try:
                check_pair(image, labels)
            except SemisegError as exc:
                self.data_info.setText(f"⚠ {exc}")
                return
        if not self._axis_manual and not self.session.busy:
            axis = detect_axis(data) if np.any(data) else self.session.axis
            self.axis_combo.setCurrentIndex(axis)
            self.session.axis = axis
        axis = self.axis_combo.currentIndex()
        found = labeled_slices(data, axis)
        labeled = self.session.labeled(data, axis)
        extra = len(labeled) - len(found)
        shown = ", ".join(str(s) for s in labeled[:8]) + (" …" if len(labeled) > 8 else "")
        text = (
            f"{plural(len(labeled), 'labeled slice')} of {data.shape[axis]} (axis {axis})"
            + (f" ({extra} accepted empty)" if extra else "")
            + (f": {shown}" if labeled else "")
        )
        try:
            text += f" · {describe_values(label_values(data, self.session.ignore_label))}"
        except SemisegError as exc:  # e.g. an instance mask: said now, not after Train
            text += f" · ⚠ {exc}"
        self.data_info.setText(text)

    def _update_preview_index(self, *_: Any) -> None:
        layer = self.image_combo.layer()
        if layer is None or self._closed:
            return
        try:
            self.session.preview_index = current_index(
                self.viewer, layer, self.axis_combo.currentIndex()
            )
        except (IndexError, ValueError):
            self.session.preview_index = None

    # -- training ---------------------------------------------------------------------------
    def request(self) -> TrainRequest:
        """The training request described by the dock's controls."""
        minutes = self.minutes.value() if self.budget_unit.currentIndex() == 1 else None
        chosen = self.method_combo.currentText()
        return TrainRequest(
            method=resolve_method(chosen, minutes, self.session.ends_labeled),
            params={} if chosen == AUTO else self.params.values(),
            iterations=self.iterations.value(),
            minutes=minutes,
            batch_size=self.batch_size.value(),
            patch_size=self.patch_size.value(),
            seed=self.seed.value(),
            device=self.device_combo.currentText(),
            preview_seconds=self.preview_seconds.value(),
            ignore_label=self.session.ignore_label,
            ends_labeled=self.session.ends_labeled,
        )

    def start_training(self, resume: bool = False, iterations: int | None = None) -> bool:
        """Validate on the GUI thread, then train in a worker. Returns whether it started;
        every problem is shown as a notification and no thread is created."""
        try:
            job = self._make_job(resume, iterations)
        except SemisegError as exc:
            show_error(short(str(exc)))
            self.status.setText(f"not started: {exc}")
            return False
        previous = self.session.bundle
        self.job = job
        self._job_labels = self.labels_combo.layer()
        self._update_preview_index()
        self._prepare_preview_layer(job.axis)
        problem = interpolation_problem(job.labeled, job.axis)
        if not resume and problem:
            show_info(f"{problem} (training goes on)")
        self._drop_other_no_training_result(self._job_labels, problem)
        note = data_note(self.image_combo.layer())
        if note:
            show_info(note)
        if not resume:
            self.session.history.clear()
        self.loss_plot.set_history(self.session.history)
        self.worker = create_worker(
            training_events,
            job,
            _start_thread=False,
            _connect={
                "yielded": self._on_update,
                "returned": self._on_returned,
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        start = job.bundle.iteration if job.bundle is not None else 0
        self._seconds_before = (self.session.train_seconds or 0.0) if resume else 0.0
        self._first_update = True
        # until the training process reports: never the previous run's "n / m · ETA" (a
        # 0..1 range, not Qt's busy look, which hides the text)
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("starting…")
        if resume:
            text = f"continuing {job.request.method} from iteration {start}: starting…"
        else:
            text = f"starting {job.request.method}: starting the training process…"
            if previous is not None:
                text += (
                    f" The previous model ({previous.method.name}, iteration "
                    f"{previous.iteration}) stays in the Runs tab."
                )
        self.status.setText(f"{text} ({note})" if note else text)
        self.session.status = ""
        self.session.busy = "training"
        self.session.notify(Change.BUSY)
        self.show_settings(False)  # the run and the review need the room now
        self.worker.start()
        self.refresh_runs()
        return True

    def continue_training(self, iterations: int) -> bool:
        """Fine-tune the current model for ``iterations`` more (the review dock's button)."""
        return self.start_training(resume=True, iterations=iterations)

    def _make_job(self, resume: bool, iterations: int | None) -> TrainingJob:
        if self.session.busy:
            raise SemisegError(f"{self.session.busy} is running: wait or stop it first")
        image, labels = self.image_combo.layer(), self.labels_combo.layer()
        check_pair(image, labels)
        axis = self.axis_combo.currentIndex()
        labels_data = np.array(labels.data)  # a copy: painting goes on during training
        labeled = self.session.labeled(labels_data, axis)
        if not labeled:
            raise SemisegError(
                f"no labeled slice in {labels.name!r}: paint at least one slice along axis "
                f"{axis} (or pick the axis you painted along)"
            )
        request = self.request()
        bundle = None
        if resume:
            bundle = self.session.bundle
            if bundle is None:
                raise SemisegError("no model to continue: train or load a model first")
            request.method = bundle.method.name
            request.params = config_to_dict(bundle.method.config)
            if iterations is not None:
                request.iterations, request.minutes = int(iterations), None
        request.validate()
        # a continued model trains in a new run folder that records its parent: the model
        # from before a correction stays in the Runs tab, to go back to
        parent = self.session.run_dir if resume else None
        run_dir = self.session.new_run_dir()
        return TrainingJob(
            image=image_data(image),  # level 0 of a multiscale layer; lazy data stays lazy
            rgb=bool(image.rgb),
            labels=labels_data,
            axis=axis,
            labeled=labeled,
            request=request,
            run_dir=run_dir,
            control=TrainingControl(),
            bundle=bundle,
            preview_index=lambda: self.session.preview_index,
            # also when continuing: the preview follows the corrected labels
            interpolate=not interpolation_problem(labeled, axis),
            info={
                "image": image.name,
                "labels": labels.name,
                "source": image.metadata.get("source") or getattr(image.source, "path", None),
                "parent_run": str(parent) if parent else None,
                "spacing": [float(s) for s in image.scale[-3:]],
            },
        )

    def _on_update(self, update: TrainingUpdate | InterpolationPreview) -> None:
        if self._closed:
            return
        if isinstance(update, InterpolationPreview):
            if self.show_interpolation(update, self._job_labels) is not None:
                self.status.setText(f"{self.status.text()} · starting the training process…")
            return
        p = update.progress
        self.progress.setRange(0, max(p.total, 1))
        self.progress.setValue(min(p.iteration, p.total))
        control = self.job.control if self.job is not None else None
        paused = bool(control is not None and control.paused)
        stopping = bool(control is not None and control.stop_requested)
        # no time left to show while paused (the clock stands) or stopping
        when = "paused" if paused else "stopping" if stopping else f"ETA {format_seconds(p.eta)}"
        self.progress.setFormat(f"%v / %m · {when}")
        self.session.train_seconds = self._seconds_before + float(p.elapsed)
        self.session.history.extend(update.history)
        self.loss_plot.refresh()
        logs = " · ".join(f"{k} {v:.3g}" for k, v in p.logs.items())
        state = "paused" if paused else "training"
        if stopping:  # the Stop message stays until the model is back
            state = "stopping after this iteration"
        device = self.job.bundle.method.device.type if self.job and self.job.bundle else ""
        # the training process's memory: a run too large for the machine shows it growing
        memory = resident_memory(self.job.pid if self.job is not None else None)
        self.status.setText(
            f"{state} · iteration {p.iteration}/{p.total} · {logs}"
            + (f" · {device}" if device else "")
            + (f" · process {format_bytes(memory)}" if memory else "")
        )
        if update.preview is not None:
            self._show_preview(update.preview)
        if self._first_update:
            self._first_update = False
            self.session.notify(Change.PROGRESS)

    def _prepare_preview_layer(self, axis: int) -> None:
        """Add the (empty) preview layer now, when the user has just clicked Train: adding a
        layer costs napari 0.2-0.6 s of the GUI thread (vispy visuals; measured under Xvfb),
        which the first live preview then does not pay mid-run (it only replaces data)."""
        image = self.image_combo.layer()
        if image is None:
            return
        shape = list(spatial_shape(image))
        index = self.session.preview_index
        index = shape[axis] // 2 if index is None else index
        in_plane = [n for a, n in enumerate(shape) if a != axis]
        self._show_preview(Preview(axis, index, np.zeros(in_plane, np.uint8), 0))

    def _show_preview(self, preview) -> None:
        image = self.image_combo.layer()
        if image is None:
            return
        data = np.expand_dims(preview.labels, preview.axis)
        layer = add_or_update(
            self.viewer,
            f"{image.name} preview",
            data,
            "labels",
            image,
            opacity=0.7,
            colormap=prediction_colormap(),
        )
        translate = np.array(image.translate[-3:], dtype=float)
        translate[preview.axis] += preview.index * float(image.scale[-3 + preview.axis])
        layer.translate = tuple(translate)
        layer.metadata["preview_index"] = preview.index
        layer.metadata["preview_iteration"] = preview.iteration
        layer.metadata["description"] = (
            f"live preview: the model's prediction of slice {preview.index} at iteration "
            f"{preview.iteration} (bright colours; your labels keep napari's)"
        )

    # -- interpolation ----------------------------------------------------------------------
    def interpolate(self) -> bool:
        """Fill the unlabeled slices from the labeled ones of the chosen labels layer into the
        ``no-training result`` layer, in a worker, without training: the interpolation at
        once, then the propagation. Returns whether it started; every problem is shown as a
        notification."""
        if self.interpolation_worker is not None:
            return False
        labels = self.labels_combo.layer()
        image = self.image_combo.layer()
        try:
            if labels is None:
                raise SemisegError(
                    "no labels layer: add one (the 'new labels layer' button), paint a few "
                    "slices and pick it as Labels"
                )
            data = np.array(labels.data)  # a copy: painting goes on meanwhile
            if data.ndim != 3:
                raise SemisegError(
                    f"labels layer {labels.name!r} has shape {data.shape}: a 3D label volume "
                    "(Z, Y, X) is needed"
                )
        except SemisegError as exc:
            show_error(str(exc))
            self.status.setText(f"not interpolated: {exc}")
            return False
        axis = self.axis_combo.currentIndex()
        labeled = self.session.labeled(data, axis)
        problem = interpolation_problem(labeled, axis)
        if problem:
            show_warning(problem)
            self.status.setText(problem)
            return False
        pixels = None
        if image is not None and tuple(image_data(image).shape[:3]) == data.shape:
            pixels = image_data(image)
        self.interpolation_worker = create_worker(
            zero_training_previews,
            pixels,
            data,
            axis,
            labeled,
            rgb=bool(image.rgb) if pixels is not None else False,
            ignore=self.session.ignore_label,
            ends_labeled=self.session.ends_labeled,
            spacing=tuple(image.scale[-3:]) if pixels is not None else None,
            _start_thread=False,
            _connect={
                "yielded": partial(self.show_interpolation, source=labels),
                "errored": self._on_error,
                "finished": self._on_interpolation_finished,
            },
        )
        self.interpolate_button.setEnabled(False)
        self.status.setText(f"interpolating between {len(labeled)} labeled slices…")
        self.interpolation_worker.start()
        return True

    def _drop_other_no_training_result(self, labels: Labels | None, problem: str) -> None:
        """The ``no-training result`` the plugin made from *other* labels (or that this run
        will not replace: too few slices) goes, so it is never taken for this run's."""
        layers = self.viewer.layers
        if NO_TRAINING_LAYER not in layers:
            return
        layer = layers[NO_TRAINING_LAYER]
        if not layer.metadata.get("semiseg_output"):
            return  # the user's own layer of that name
        made_from = layer.metadata.get("source_labels")
        if problem or (labels is not None and made_from not in (None, labels.name)):
            layers.remove(layer)

    def show_interpolation(
        self, result: InterpolationPreview, source: Labels | None = None
    ) -> Labels | None:
        """Add or update the ``no-training result`` layer, overlaying ``source`` (the labels
        it comes from); a layer of that name the plugin did not make, or the labels being
        trained from, is never overwritten."""
        if self._closed:
            return None
        source = source if source is not None else self.labels_combo.layer()
        if source is None:
            return None
        layers = self.viewer.layers
        theirs = NO_TRAINING_LAYER in layers and (
            not layers[NO_TRAINING_LAYER].metadata.get("semiseg_output")
            or NO_TRAINING_LAYER in (source.name, self.labels_combo.currentText())
        )
        if theirs:
            message = (
                f"the no-training result was not shown: layer {NO_TRAINING_LAYER!r} holds "
                "your labels; rename it to see it"
            )
            show_warning(message)
            self.status.setText(message)
            return None
        layer = add_or_update(
            self.viewer, NO_TRAINING_LAYER, result.labels, "labels", source, opacity=0.5
        )
        layer.metadata["interpolated_slices"] = list(result.labeled)
        layer.metadata["kind"] = result.kind
        layer.metadata["source_labels"] = source.name
        span = f"{len(result.labeled)} labeled slices ({result.labeled[0]}…{result.labeled[-1]})"
        if result.kind == "propagation":
            layer.metadata["description"] = (
                "no training: the labeled slices carried along the image's edges by a random "
                f"walker ({result.seconds:.1f} s)"
            )
            text = (
                f"propagated {span} along the image's edges in {result.seconds:.1f} s into "
                f"layer {NO_TRAINING_LAYER!r} (no training)"
            )
        else:
            layer.metadata["description"] = (
                "no training: shape-based interpolation between the labeled slices"
            )
            text = (
                f"interpolated between {span} along axis {result.axis} into layer "
                f"{NO_TRAINING_LAYER!r}; propagating along the image's edges…"
            )
        self.status.setText(text)
        return layer

    def _on_interpolation_finished(self) -> None:
        self.interpolation_worker = None
        if not self._closed:
            self.interpolate_button.setEnabled(True)

    def _on_returned(self, bundle: ModelBundle) -> None:
        self.session.bundle = bundle
        if self.job is not None:
            self.job.bundle = bundle
        stopped = self.job is not None and self.job.control.stop_requested
        spent = self.session.train_seconds
        text = (
            f"{'stopped' if stopped else 'finished'}: {bundle.method.name} at iteration "
            f"{bundle.iteration}" + (f" after {format_seconds(spent)} of training" if spent else "")
        )
        self.session.status = text
        self.status.setText(text)
        if self.session.run_dir:
            self.status.setToolTip(f"{text}; checkpoint in {self.session.run_dir}")
        self.progress.setFormat(f"%v / %m · {'stopped' if stopped else 'done'}")
        self.session.notify(Change.MODEL)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, ChildError):
            print(exc.remote_traceback, file=sys.stderr)
        elif not isinstance(exc, SemisegError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        if isinstance(exc, TrainingProcessDied) and exc.bundle is not None:
            self.session.bundle = exc.bundle  # the last good checkpoint
            if self.job is not None:
                self.job.bundle = exc.bundle
            self.session.notify(Change.MODEL)
        message = error_message(exc)
        show_error(short(message))
        self.status.setText(f"error: {message}")
        if self.worker is not None:  # training (not the interpolation) failed
            self.session.status = f"training failed: {short(message)}"
            self.progress.setFormat("%v / %m · failed")

    def _on_finished(self) -> None:
        self.worker = None
        if self.progress.maximum() == 0:  # never reported: leave the busy look
            self.progress.setRange(0, 1)
        self.session.busy = ""
        self.session.notify(Change.BUSY)
        self.refresh_runs()

    def _set_busy(self, busy: bool) -> None:
        training = busy and self.worker is not None
        for w in (
            self.image_combo,
            self.labels_combo,
            self.axis_combo,
            self.method_combo,
            self.params,
            self.iterations,
            self.minutes,
            self.budget_unit,
            self.batch_size,
            self.patch_size,
            self.device_combo,
            self.seed,
            self.train_button,
            self.load_button,
            self.runs_button,
            self.keep_runs,
            self.use_run_button,
            self.runs_list,
        ):
            w.setEnabled(not busy)
        self.pause_button.setEnabled(training)
        self.stop_button.setEnabled(training)
        self.save_button.setEnabled(not busy and self.session.bundle is not None)
        if not training:
            self.pause_button.setText("Pause")
            if self.progress.maximum() == 0:  # never reported: leave the busy look
                self.progress.setRange(0, 1)

    def toggle_pause(self) -> None:
        if self.job is None or self.worker is None:
            return
        control = self.job.control
        if control.paused:
            control.resume()
            self.pause_button.setText("Pause")
            self.status.setText("resumed")
        else:
            control.pause()
            self.pause_button.setText("Resume")
            self.status.setText("paused (stop to keep the model: it checkpoints at once)")
        self._set_busy(True)

    def stop(self) -> None:
        if self.job is not None and self.worker is not None:
            self.job.control.stop()
            grace = self.job.request.stop_grace
            self.status.setText(
                f"stopping after this iteration (ended after {grace:g} s if it hangs)…"
            )

    # -- models -----------------------------------------------------------------------------
    def save_model_to(self, path: str | Path) -> Path | None:
        bundle = self.session.bundle
        try:
            if bundle is None:
                raise SemisegError("no model yet: train or load one first")
            if self.worker is not None:
                raise SemisegError("training is running: stop it before saving")
            out = save_model(bundle, path)
            if is_run_dir(Path(out)):  # saved into a run folder: never prune it
                (Path(out) / KEEP_FILE).touch()
        except (SemisegError, OSError) as exc:
            message = (
                error_message(exc)
                if isinstance(exc, SemisegError)
                else f"cannot save the model: {exc}"
            )
            show_error(short(message))
            self.status.setText(f"error: {message}")
            return None
        show_info(f"model saved to {out}")
        self.status.setText(f"saved {bundle.method.name} (iteration {bundle.iteration}) to {out}")
        self.refresh_runs()
        return out

    def load_model_from(self, path: str | Path) -> ModelBundle | None:
        try:
            if self.session.busy:
                raise SemisegError(f"{self.session.busy} is running: wait or stop it first")
            bundle = load_model(path, device=select_device(self.device_combo.currentText()))
        except SemisegError as exc:
            show_error(short(str(exc)))
            self.status.setText(f"error: {exc}")
            return None
        self.session.bundle = bundle
        # a run folder's model continues training in its folder; any other is copied into
        # a new run folder when training continues
        self.session.run_dir = Path(path) if is_run_dir(Path(path)) else None
        self.session.train_seconds = None
        self.session.status = f"loaded {bundle.method.name} at iteration {bundle.iteration}"
        self.session.axis = bundle.axis
        self.session.history.clear()
        self.loss_plot.refresh()
        self.session.notify(Change.MODEL)
        self.status.setText(
            f"loaded {bundle.method.name} model (iteration {bundle.iteration}) from {path}"
        )
        self.progress.setRange(0, max(bundle.iteration, 1))
        self.progress.setValue(bundle.iteration)
        self.progress.setFormat("%v iterations · loaded")
        self.refresh_runs()
        return bundle

    def _show_model(self, bundle: ModelBundle | None) -> None:
        """Reflect a loaded or trained model in the method, parameters and axis controls."""
        self.save_button.setEnabled(bundle is not None and not self.session.busy)
        if bundle is None:
            return
        index = self.method_combo.findText(bundle.method.name)
        if self.method_combo.currentText() != AUTO:  # auto stays: it picks at each new run
            if index >= 0 and index != self.method_combo.currentIndex():
                self.method_combo.setCurrentIndex(index)
            self.params.set_values(config_to_dict(bundle.method.config))
        if self.axis_combo.currentIndex() != bundle.axis:
            self.axis_combo.setCurrentIndex(bundle.axis)
            self._axis_manual = True
        self.patch_size.setValue(bundle.patch_size)
        if "ends_labeled" in bundle.info:  # predictions stop at the ends as the model trained
            self.ends_labeled.setChecked(bool(bundle.info["ends_labeled"]))

    def _save_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Save the model into a folder")
        if path:
            self.save_model_to(path)

    def _load_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Load a model folder (model.json)")
        if path:
            self.load_model_from(path)

    # -- shutdown ---------------------------------------------------------------------------
    def shutdown(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the training process (a checkpoint is written) and wait until it is gone;
        release hooks."""
        if self._closed:
            return
        self._closed = True
        job, worker = self.job, self.worker
        if worker is not None and job is not None:
            job.control.stop()
            job.finished.wait(timeout)
            deadline = time.monotonic() + 5
            while worker.is_running and time.monotonic() < deadline:
                time.sleep(0.01)
        self.session.disconnect(self._on_session)
        self.session.training_dock_open = False
        if self.session.busy == "training":
            self.session.busy = ""
            self.session.notify(Change.BUSY)
        self.viewer.dims.events.current_step.disconnect(self._update_preview_index)
        self._on_labels_layer(None)
        self.image_combo.disconnect_viewer()
        self.labels_combo.disconnect_viewer()
        if self._window_filtered is not None:
            self._window_filtered.removeEventFilter(self)
            self._window_filtered = None

    def closeEvent(self, event) -> None:  # noqa: N802  (Qt override)
        self.shutdown()
        super().closeEvent(event)

    def event(self, event) -> bool:
        # napari removes a closed dock by un-parenting its widget, and closing the main
        # window does not close child widgets: watch both.
        kind = event.type()
        if kind == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.shutdown()
        elif kind == QEvent.Type.Show and not self._closed:
            balance_later(self)
            window = self.window()
            if window is not self and window is not self._window_filtered:
                if self._window_filtered is not None:
                    self._window_filtered.removeEventFilter(self)
                self._window_filtered = window
                window.installEventFilter(self)
        return super().event(event)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802  (Qt override)
        if obj is self._window_filtered and event.type() == QEvent.Type.Close:
            self.shutdown()
        return False
