"""The training dock: pick image and sparse labels, choose a method, train in the background.

*Interpolate* (and *Train*, before its first iteration) shows the shape-based interpolation
of the labeled slices in the ``interpolation`` layer: 3D Slicer's "fill between slices", the
zero-training baseline, computed in a worker and there at once.

Pattern (after napari-nninteractive's ``widget_main.py``): the work runs in
``create_worker(training_events, job)`` from :mod:`napari_semiseg._session`, which trains in
a child process (a crash or an out-of-memory kill there leaves the viewer and its labels
alive) and relays its events; the worker never touches a widget; its ``yielded`` events
update the progress bar, the loss curve and the preview layer on the GUI thread; the controls
are disabled while it runs and re-enabled in the ``finished`` handler (after ``errored``
showed the core's message as a notification: for a process that died, its exit signal, last
log lines and the checkpoint kept, which becomes the current model); closing the dock or the
viewer stops the training process through :class:`TrainingControl` and waits for it.

Nothing about the methods is written here: the method list, descriptions and parameter forms
come from the registry in :mod:`src_models.methods.base`.
"""

from __future__ import annotations

import sys
import time
import traceback
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_semiseg._layers import (
    LayerCombo,
    add_or_update,
    check_pair,
    current_index,
    spatial_shape,
)
from napari_semiseg._loss_plot import LossPlot
from napari_semiseg._param_form import ParamForm
from napari_semiseg._session import (
    AXIS_NAMES,
    InterpolationPreview,
    Preview,
    TrainingJob,
    TrainingProcessDied,
    TrainingUpdate,
    TrainRequest,
    class_count,
    detect_axis,
    format_seconds,
    interpolate_labels,
    interpolation_problem,
    labeled_slices,
    session_for,
    training_events,
)
from napari_semiseg._train_process import ChildError
from src_models.device import DEVICE_CHOICES, select_device
from src_models.errors import SemisegError
from src_models.methods.base import config_to_dict, get_method, method_names
from src_models.training.checkpoint import ModelBundle, load_model, save_model
from src_models.training.control import TrainingControl

#: seconds the dock waits for the training process to end when it is closed mid-run (it is
#: terminated after ``TrainRequest.stop_grace`` seconds)
STOP_TIMEOUT = 60.0
#: the layer the shape-based interpolation goes to (added or updated in place)
INTERPOLATION_LAYER = "interpolation"


def error_message(exc: BaseException) -> str:
    """The core's message for SemisegError; type and message for anything unexpected."""
    if isinstance(exc, SemisegError):
        return str(exc)
    kind = exc.kind if isinstance(exc, ChildError) else type(exc).__name__
    return f"unexpected {kind}: {exc} (see the console for the traceback)"


class TrainingDock(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari (npe2 widget contribution)."""

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
        self.session.continue_training = self.continue_training
        self.viewer.dims.events.current_step.connect(self._update_preview_index)
        self._on_labels_layer(self.labels_combo.layer())
        self._on_method(self.method_combo.currentIndex())
        self._set_busy(False)

    # -- layout ---------------------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        root = QVBoxLayout(content)
        root.setContentsMargins(6, 6, 6, 6)

        data = QGroupBox("Data")
        form = QFormLayout(data)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.axis_combo = QComboBox()
        for a, name in enumerate(AXIS_NAMES):
            self.axis_combo.addItem(f"{a} ({name})")
        self.axis_combo.setToolTip(
            "The axis the labeled slices are cut along (detected from "
            "where the labels are; change it if needed)"
        )
        self.data_info = QLabel()
        self.data_info.setWordWrap(True)
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Slice axis", self.axis_combo)
        form.addRow(self.data_info)
        root.addWidget(data)
        self.image_combo.layerChanged.connect(self._on_image_layer)
        self.labels_combo.layerChanged.connect(self._on_labels_layer)
        self.axis_combo.activated.connect(self._on_axis_chosen)

        method = QGroupBox("Method")
        mlay = QVBoxLayout(method)
        self.method_combo = QComboBox()
        self.method_combo.addItems(method_names())
        self.method_description = QLabel()
        self.method_description.setWordWrap(True)
        self.params = ParamForm()
        self.advanced = QCollapsible("Advanced parameters")
        self.advanced.addWidget(self.params)
        mlay.addWidget(self.method_combo)
        mlay.addWidget(self.method_description)
        mlay.addWidget(self.advanced)
        root.addWidget(method)
        self.method_combo.currentIndexChanged.connect(self._on_method)

        budget = QGroupBox("Training")
        bform = QFormLayout(budget)
        self.iterations = QSpinBox()
        self.iterations.setRange(1, 10_000_000)
        self.iterations.setValue(1000)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 100_000)
        self.minutes.setValue(5.0)
        self.budget_unit = QComboBox()
        self.budget_unit.addItems(["iterations", "minutes"])
        self.budget_unit.currentIndexChanged.connect(self._on_budget_unit)
        row = QHBoxLayout()
        row.addWidget(self.iterations)
        row.addWidget(self.minutes)
        row.addWidget(self.budget_unit)
        bform.addRow("Budget", row)
        self.batch_size = QSpinBox()
        self.batch_size.setRange(1, 1024)
        self.batch_size.setValue(8)
        self.patch_size = QSpinBox()
        self.patch_size.setRange(16, 2048)
        self.patch_size.setSingleStep(16)
        self.patch_size.setValue(128)
        self.patch_size.setToolTip("Side of the square training crop, a multiple of 16")
        row = QHBoxLayout()
        row.addWidget(QLabel("batch"))
        row.addWidget(self.batch_size)
        row.addWidget(QLabel("patch"))
        row.addWidget(self.patch_size)
        bform.addRow("Size", row)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICE_CHOICES))
        self.device_label = QLabel()
        self.device_combo.currentTextChanged.connect(self._on_device)
        row = QHBoxLayout()
        row.addWidget(self.device_combo)
        row.addWidget(self.device_label, 1)
        bform.addRow("Device", row)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.preview_seconds = QDoubleSpinBox()
        self.preview_seconds.setRange(0.0, 3600.0)
        self.preview_seconds.setDecimals(1)
        self.preview_seconds.setSingleStep(5.0)
        self.preview_seconds.setValue(TrainRequest.preview_seconds)
        self.preview_seconds.setSuffix(" s")
        self.preview_seconds.setToolTip(
            "Predict the slice shown in the viewer into the preview layer every N seconds "
            "of training (the first after N seconds, the last at the end; 0: off)"
        )
        row = QHBoxLayout()
        row.addWidget(self.seed)
        row.addWidget(QLabel("preview every"))
        row.addWidget(self.preview_seconds)
        bform.addRow("Seed", row)
        root.addWidget(budget)

        run = QGroupBox("Run")
        rlay = QVBoxLayout(run)
        buttons = QHBoxLayout()
        self.interpolate_button = QPushButton("Interpolate")
        self.train_button = QPushButton("Train")
        self.pause_button = QPushButton("Pause")
        self.stop_button = QPushButton("Stop")
        self.interpolate_button.setToolTip(
            "Fill between slices, no training: the shape-based interpolation of the labeled "
            f"slices into the '{INTERPOLATION_LAYER}' layer (what 3D Slicer's 'Fill between "
            "slices' does). It is the zero-training baseline a trained model should beat; "
            "Train shows it too before its first iteration"
        )
        self.train_button.setToolTip(
            "Train a new model from scratch on the labeled slices (the interpolation of the "
            f"labels shows at once in the '{INTERPOLATION_LAYER}' layer)"
        )
        for b in (self.interpolate_button, self.train_button, self.pause_button, self.stop_button):
            buttons.addWidget(b)
        rlay.addLayout(buttons)
        self.interpolate_button.clicked.connect(lambda: self.interpolate())
        self.train_button.clicked.connect(lambda: self.start_training())
        self.pause_button.clicked.connect(self.toggle_pause)
        self.stop_button.clicked.connect(self.stop)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m")
        self.status = QLabel("idle")
        self.status.setWordWrap(True)
        self.loss_plot = LossPlot(self.session.history)
        rlay.addWidget(self.progress)
        rlay.addWidget(self.status)
        rlay.addWidget(self.loss_plot)
        models = QHBoxLayout()
        self.save_button = QPushButton("Save model…")
        self.load_button = QPushButton("Load model…")
        self.save_button.clicked.connect(self._save_dialog)
        self.load_button.clicked.connect(self._load_dialog)
        models.addWidget(self.save_button)
        models.addWidget(self.load_button)
        rlay.addLayout(models)
        root.addWidget(run)
        root.addStretch(1)
        self._on_budget_unit(0)
        self._on_device(self.device_combo.currentText())

    # -- reactions --------------------------------------------------------------------------
    def _on_method(self, _index: int) -> None:
        name = self.method_combo.currentText()
        if not name:
            return
        cls = get_method(name)
        self.method_description.setText(cls.description)
        self.params.set_config_class(cls.Config)

    def _on_budget_unit(self, index: int) -> None:
        self.iterations.setVisible(index == 0)
        self.minutes.setVisible(index == 1)

    def _on_device(self, name: str) -> None:
        try:
            self.device_label.setText(f"→ {select_device(name).type}")
            self.device_label.setStyleSheet("")
        except SemisegError as exc:
            self.device_label.setText(f"{name} not available")
            self.device_label.setToolTip(str(exc))
            self.device_label.setStyleSheet("color: #e57373")

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

    def _schedule_info(self, *_: Any) -> None:
        self._info_timer.start()

    def _on_session(self, what: str) -> None:
        if self._closed:
            return
        if what == "labels":
            self.refresh_data_info()
        elif what == "busy":
            self._set_busy(bool(self.session.busy))
        elif what == "model":
            self._show_model(self.session.bundle)

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
            f"{len(labeled)} labeled slice(s) of {data.shape[axis]} along axis {axis}"
            + (f" ({extra} accepted empty)" if extra else "")
            + (f": {shown}" if labeled else "")
            + f" · {class_count(data)} classes"
        )
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
        return TrainRequest(
            method=self.method_combo.currentText(),
            params=self.params.values(),
            iterations=self.iterations.value(),
            minutes=minutes,
            batch_size=self.batch_size.value(),
            patch_size=self.patch_size.value(),
            seed=self.seed.value(),
            device=self.device_combo.currentText(),
            preview_seconds=self.preview_seconds.value(),
        )

    def start_training(self, resume: bool = False, iterations: int | None = None) -> bool:
        """Validate on the GUI thread, then train in a worker. Returns whether it started;
        every problem is shown as a notification and no thread is created."""
        try:
            job = self._make_job(resume, iterations)
        except SemisegError as exc:
            show_error(str(exc))
            self.status.setText(f"not started: {exc}")
            return False
        self.job = job
        self._job_labels = self.labels_combo.layer()
        self._update_preview_index()
        self._prepare_preview_layer(job.axis)
        problem = interpolation_problem(job.labeled, job.axis)
        if not resume and problem:
            show_info(f"{problem} (training goes on)")
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
        verb = "continuing" if resume else "starting"
        self.progress.setRange(0, 0)  # busy until the training process reports
        self.status.setText(
            f"{verb} {job.request.method} from iteration {start}: starting the training process…"
        )
        self.session.busy = "training"
        self.session.notify("busy")
        self.worker.start()
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
        run_dir = self.session.run_dir if resume and self.session.run_dir else None
        return TrainingJob(
            image=image.data[0] if image.multiscale else image.data,
            rgb=bool(image.rgb),
            labels=labels_data,
            axis=axis,
            labeled=labeled,
            request=request,
            run_dir=run_dir or self.session.new_run_dir(),
            control=TrainingControl(),
            bundle=bundle,
            preview_index=lambda: self.session.preview_index,
            interpolate=not resume and not interpolation_problem(labeled, axis),
            info={
                "image": image.name,
                "labels": labels.name,
                "source": image.metadata.get("source") or getattr(image.source, "path", None),
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
        self.progress.setFormat(f"%v / %m · ETA {format_seconds(p.eta)}")
        self.session.history.extend(update.history)
        self.loss_plot.refresh()
        logs = " · ".join(f"{k} {v:.3g}" for k, v in p.logs.items())
        state = "paused" if self.job and self.job.control.paused else "training"
        device = self.job.bundle.method.device.type if self.job and self.job.bundle else ""
        self.status.setText(
            f"{state} · iteration {p.iteration}/{p.total} · {logs}"
            + (f" · {device}" if device else "")
        )
        if update.preview is not None:
            self._show_preview(update.preview)

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
            self.viewer, f"{image.name} preview", data, "labels", image, opacity=0.6
        )
        translate = np.array(image.translate[-3:], dtype=float)
        translate[preview.axis] += preview.index * float(image.scale[-3 + preview.axis])
        layer.translate = tuple(translate)
        layer.metadata["preview_index"] = preview.index
        layer.metadata["preview_iteration"] = preview.iteration

    # -- interpolation ----------------------------------------------------------------------
    def interpolate(self) -> bool:
        """Fill between the labeled slices of the chosen labels layer into the
        ``interpolation`` layer, in a worker, without training. Returns whether it started;
        every problem is shown as a notification."""
        if self.interpolation_worker is not None:
            return False
        labels = self.labels_combo.layer()
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
        self.interpolation_worker = create_worker(
            interpolate_labels,
            data,
            axis,
            labeled,
            _start_thread=False,
            _connect={
                "returned": partial(self.show_interpolation, source=labels),
                "errored": self._on_error,
                "finished": self._on_interpolation_finished,
            },
        )
        self.interpolate_button.setEnabled(False)
        self.status.setText(f"interpolating between {len(labeled)} labeled slices…")
        self.interpolation_worker.start()
        return True

    def show_interpolation(
        self, result: InterpolationPreview, source: Labels | None = None
    ) -> Labels | None:
        """Add or update the ``interpolation`` layer, overlaying ``source`` (the labels it
        comes from); a layer of that name the plugin did not make, or the labels being
        trained from, is never overwritten."""
        if self._closed:
            return None
        source = source if source is not None else self.labels_combo.layer()
        if source is None:
            return None
        layers = self.viewer.layers
        theirs = INTERPOLATION_LAYER in layers and (
            not layers[INTERPOLATION_LAYER].metadata.get("semiseg_output")
            or INTERPOLATION_LAYER in (source.name, self.labels_combo.currentText())
        )
        if theirs:
            message = (
                f"the interpolation was not shown: layer {INTERPOLATION_LAYER!r} holds your "
                "labels; rename it to see the interpolation"
            )
            show_warning(message)
            self.status.setText(message)
            return None
        layer = add_or_update(
            self.viewer, INTERPOLATION_LAYER, result.labels, "labels", source, opacity=0.5
        )
        layer.metadata["interpolated_slices"] = list(result.labeled)
        self.status.setText(
            f"interpolated between {len(result.labeled)} labeled slices "
            f"({result.labeled[0]}…{result.labeled[-1]}) along axis {result.axis} into "
            f"layer {INTERPOLATION_LAYER!r}"
        )
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
        where = f" (checkpoint in {self.session.run_dir})" if self.session.run_dir else ""
        self.status.setText(
            f"{'stopped' if stopped else 'finished'} at iteration {bundle.iteration}{where}"
        )
        self.session.notify("model")

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, ChildError):
            print(exc.remote_traceback, file=sys.stderr)
        elif not isinstance(exc, SemisegError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        if isinstance(exc, TrainingProcessDied) and exc.bundle is not None:
            self.session.bundle = exc.bundle  # the last good checkpoint
            if self.job is not None:
                self.job.bundle = exc.bundle
            self.session.notify("model")
        message = error_message(exc)
        show_error(message)
        self.status.setText(f"error: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self.session.busy = ""
        self.session.notify("busy")

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
        ):
            w.setEnabled(not busy)
        self.pause_button.setEnabled(training)
        self.stop_button.setEnabled(training)
        self.save_button.setEnabled(not busy)
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
        except (SemisegError, OSError) as exc:
            show_error(
                error_message(exc)
                if isinstance(exc, SemisegError)
                else f"cannot save the model: {exc}"
            )
            return None
        show_info(f"model saved to {out}")
        return out

    def load_model_from(self, path: str | Path) -> ModelBundle | None:
        try:
            if self.session.busy:
                raise SemisegError(f"{self.session.busy} is running: wait or stop it first")
            bundle = load_model(path, device=select_device(self.device_combo.currentText()))
        except SemisegError as exc:
            show_error(str(exc))
            return None
        self.session.bundle = bundle
        self.session.run_dir = None
        self.session.axis = bundle.axis
        self.session.history.clear()
        self.loss_plot.refresh()
        self.session.notify("model")
        self.status.setText(
            f"loaded {bundle.method.name} model (iteration {bundle.iteration}) from {path}"
        )
        return bundle

    def _show_model(self, bundle: ModelBundle | None) -> None:
        """Reflect a loaded or trained model in the method, parameters and axis controls."""
        if bundle is None:
            return
        index = self.method_combo.findText(bundle.method.name)
        if index >= 0 and index != self.method_combo.currentIndex():
            self.method_combo.setCurrentIndex(index)
        self.params.set_values(config_to_dict(bundle.method.config))
        if self.axis_combo.currentIndex() != bundle.axis:
            self.axis_combo.setCurrentIndex(bundle.axis)
            self._axis_manual = True
        self.patch_size.setValue(bundle.patch_size)

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
        if self.session.continue_training == self.continue_training:
            self.session.continue_training = None
        if self.session.busy == "training":
            self.session.busy = ""
            self.session.notify("busy")
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
