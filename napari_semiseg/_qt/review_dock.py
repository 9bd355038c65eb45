"""The review-and-correct dock: predict the volume, visit the slices where the model is least
sure, correct them with napari's paint tools, accept them into the training labels, continue
training, export.

Layers are named after the image (``"<image> prediction"``, ``"<image> confidence"``, ...)
and updated in place on every run. Which maps exist comes from the method (``map_names``):
``confidence`` always, ``discrepancy`` for methods with two networks/students/decoders/samples,
``pseudo`` as the ``pseudo-labels`` Labels layer, anything else (e.g. ``uncertainty``) as an
extra Image layer; per-network maps (``confidence_1``, ``discrepancy_soft``, ...) are not
added as layers but written by "Export… with the maps". Every layer gets readable names
(:data:`~napari_semiseg._qt.map_layers.MAP_TITLES`), ``metadata["description"]`` (what it
means and its range, from the method: ``Method.map_meaning``) and
``metadata["semiseg_model"]`` (method, iteration, run): when the session's model changes the
layers of an older state get ``metadata["stale"] = True`` and the dock says which iteration
they show; an export says which model and iteration it wrote. Buttons are enabled only when
they can work. Prediction and export run in napari workers, never on the GUI thread.

Why one module of ~900 lines: it is one loop (predict, review, accept, continue, export)
over the same few buttons, texts, layers and session state, and every handler updates them
(``_update_buttons``, ``_check_stale``, the status and review lines). What does not touch the
dock lives elsewhere: the prediction in a worker (:mod:`napari_semiseg._predict`), the slice
scores (:mod:`napari_semiseg._ranking`), the export writing (:mod:`napari_semiseg._export`),
how maps look as layers (:mod:`napari_semiseg._qt.map_layers`).
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from superqt import QCollapsible

from napari_semiseg._export import FORMATS, export_array, safe_name, write_all
from napari_semiseg._jobs import describe_training
from napari_semiseg._layer_data import lazy_image
from napari_semiseg._predict import (
    DisplayPrediction,
    predict_for_display,
    prediction_store,
    release_free_memory,
)
from napari_semiseg._qt.layers import (
    LayerCombo,
    add_or_update,
    check_pair,
    current_index,
    data_note,
    go_to_slice,
    image_data,
)
from napari_semiseg._qt.map_layers import (
    LAYER_MAPS,
    MAP_STYLE,
    OTHER_MAP,
    UNFIXED_LIMITS,
    layer_name,
    map_meaning,
    map_title,
)
from napari_semiseg._qt.widgets import (
    DOCK_WIDTH,
    balance_later,
    error_message,
    prediction_colormap,
    short,
    wrapping_label,
)
from napari_semiseg._ranking import slice_score, structure_slices
from napari_semiseg._session import Change, SessionEvent, session_for
from src_models.data.lazy import is_lazy
from src_models.errors import SemisegError
from src_models.inference import VolumePrediction
from src_models.slice_smoothing import smoothing_for_spacing
from src_models.suggest import DEFAULT_STRATEGY, STRATEGIES, STRIDED_UNTIL, suggest

#: unlabeled slices whose mean scores differ by no more than this all tie
FLAT_SCORE = 1e-6
#: the value region corrections give the unannotated voxels of a slice in the training labels
#: (the training process reads it as nnU-Net's ignore label)
REGION_IGNORE = 255


def _button(text: str) -> QPushButton:
    button = QPushButton(text)
    button.setMinimumWidth(40)
    button.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return button


class ReviewDock(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari (npe2 widget contribution)."""

    dock_role = "review"

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.export_worker = None
        self._queue: list[int] = []
        self._predicted: np.ndarray | None = None
        self._visited: set[int] = set()
        self._closed = False
        self._busy_shown = False
        self._stale_note = ""
        #: a prediction's layers are being added (one per turn of the event loop)
        self._showing = False
        #: each button's own tooltip (a disabled one adds why)
        self._tooltips: dict = {}
        #: the prediction layers were hidden when the running training started
        self._hidden_for_training = False
        self._ranking_flat = False
        self._ranking_value = 0.0
        self._build()
        self.session.connect(self._on_session)
        if self.session.image_name:
            self.image_combo.set_layer(self.session.image_name)
        if self.session.labels_name:
            self.labels_combo.set_layer(self.session.labels_name)
        self._refresh_model()

    def _build(self) -> None:
        """Everything in one scroll area, so the dock shrinks when the training dock needs
        the room; buttons share rows and wrap nothing wider than the dock."""
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        scroll.setWidget(content)
        outer.addWidget(scroll)
        self._content = content
        root = QVBoxLayout(content)
        root.setContentsMargins(4, 4, 4, 4)
        root.setSpacing(4)

        self.model_info = wrapping_label()
        root.addWidget(self.model_info)
        grid = QGridLayout()
        grid.setHorizontalSpacing(4)
        self.predict_button = _button("Predict volume")
        self.predict_button.setToolTip(
            "Predict every slice with the current model; adds or updates the prediction "
            "layer and the maps of the method (confidence, disagreement, ...)"
        )
        self.predict_button.clicked.connect(self.predict)
        self.next_button = _button("Next slice")
        self.next_button.setToolTip(
            "Go to the next slice to correct, chosen as the box beside it says (as "
            "'semiseg suggest --strategy')"
        )
        self.next_button.clicked.connect(self.next_slice)
        self.strategy_combo = QComboBox()
        self.strategy_combo.addItems(list(STRATEGIES))
        self.strategy_combo.setCurrentText(DEFAULT_STRATEGY)
        self.strategy_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.strategy_combo.setMinimumContentsLength(5)
        self.strategy_combo.setToolTip(
            "How Next slice chooses. strided: the predicted structure's uncovered ends, then "
            "the middle of the largest gap between labeled slices; uncertainty: where the "
            "networks disagree most (least confident for single-network methods); "
            "uncertainty-distance: that times the distance to the nearest labeled slice; "
            "strided-then-uncertainty-distance (default): strided while fewer than "
            f"{STRIDED_UNTIL} slices are labeled, then uncertainty-distance. "
            "Measured with a simulated user in benchmarks/correction_loop.py (README)"
        )
        self.strategy_combo.currentTextChanged.connect(self._on_strategy)
        self.accept_button = _button("Accept slice")
        self.accept_button.setToolTip(
            "Copy the (corrected) prediction of the slice shown into "
            "the training labels; it then counts as labeled. Correct the prediction layer "
            "with napari's paint / fill tools first (undo works)"
        )
        self.accept_button.clicked.connect(lambda: self.accept_slice())
        # a compact grid: two controls per row, so the whole loop fits napari's default
        # window (1089 x 639 on a 1280 x 800 screen) below the training dock
        grid.addWidget(self.predict_button, 0, 0)
        next_row = QHBoxLayout()
        next_row.setSpacing(4)
        next_row.addWidget(self.next_button, 1)
        next_row.addWidget(self.strategy_combo, 1)
        grid.addLayout(next_row, 0, 1)
        grid.addWidget(self.accept_button, 1, 0)
        self.continue_button = _button("Continue training")
        self.continue_button.setToolTip(
            "Fine-tune the current model with the enlarged labeled set (no restart from "
            "scratch); progress shows in the training dock"
        )
        self.continue_button.clicked.connect(self.continue_training)
        self.continue_iterations = QSpinBox()
        self.continue_iterations.setRange(1, 10_000_000)
        self.continue_iterations.setValue(200)
        self.continue_iterations.setSuffix(" it.")
        self.continue_iterations.setMinimumWidth(60)
        self.continue_iterations.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.continue_iterations.setToolTip(
            "Iterations of the continued run (a new run that records the current one as its "
            "parent: the current model stays in the Runs tab)"
        )
        grid.addWidget(self.continue_button, 2, 0)
        grid.addWidget(self.continue_iterations, 2, 1)
        self.region_check = QCheckBox("only what I painted")
        self.region_check.setToolTip(
            "Region correction: Accept slice takes only the voxels you repainted on the "
            "prediction (where it differs from the model's); the rest of the slice stays "
            f"unannotated (value {REGION_IGNORE} in the labels, not taken as yours: the "
            "propagation of your labels guesses it where sure, as on unlabeled slices), so a "
            "partly corrected slice never teaches background where you did not look"
        )
        grid.addWidget(self.region_check, 1, 1)
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        self.format_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.format_combo.setMinimumContentsLength(6)
        self.format_combo.setToolTip(
            "File format of the export: NIfTI (.nii.gz) keeps the image's affine for 3D "
            "Slicer / ITK-SNAP; zarr streams volumes larger than memory; TIFF for Fiji"
        )
        self.export_button = _button("Export…")
        self.export_button.setToolTip(
            "Write the (corrected) prediction layer, and the maps if asked, into a folder"
        )
        self.export_button.clicked.connect(self._export_dialog)
        self.maps_check = QCheckBox("maps")
        self.maps_check.setToolTip(
            "Also write confidence, disagreement, pseudo-labels, ... next to the masks"
        )
        grid.addWidget(self.export_button, 3, 0)
        export_options = QHBoxLayout()
        export_options.setSpacing(4)
        export_options.addWidget(self.format_combo, 1)
        export_options.addWidget(self.maps_check)
        grid.addLayout(export_options, 3, 1)
        grid.setColumnStretch(0, 1)
        grid.setColumnStretch(1, 1)
        root.addLayout(grid)
        self.review_info = wrapping_label()
        root.addWidget(self.review_info)
        self.status = wrapping_label()
        root.addWidget(self.status)
        self.legend = wrapping_label()
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        root.addWidget(self.legend)

        layers = QCollapsible("Layers used")
        host = QWidget()
        form = QFormLayout(host)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.labels_combo.setToolTip("The training labels: accepted slices are copied here")
        form.addRow("Image", self.image_combo)
        form.addRow("Training labels", self.labels_combo)
        layers.addWidget(host)
        root.addWidget(layers)
        root.addStretch(1)
        self.viewer.layers.events.inserted.connect(self._update_buttons)
        self.viewer.layers.events.removed.connect(self._update_buttons)

    def content_height(self) -> int:
        """Height the content asks for (the dock scrolls below it)."""
        return self._content.sizeHint().height()

    def sizeHint(self) -> QSize:  # noqa: N802  (Qt override)
        return QSize(DOCK_WIDTH, self.content_height())

    def event(self, event) -> bool:
        if event.type() == QEvent.Type.Show and not getattr(self, "_closed", True):
            balance_later(self)
        return super().event(event)

    # -- state ------------------------------------------------------------------------------
    def _on_session(self, event: SessionEvent) -> None:
        if self._closed:
            return
        if event in (Change.MODEL, Change.BUSY, Change.PROGRESS):
            self._refresh_model()

    def _refresh_model(self) -> None:
        b = self.session.bundle
        if b is None:
            self.model_info.setText(
                "<b>No model yet</b>: train one in the training dock or load one."
            )
        else:
            self.model_info.setText(
                f"<b>Model</b>: {b.method.name} · iteration {b.iteration} · "
                f"{b.num_classes} classes · axis {b.axis}"
            )
        busy = self.session.busy
        if busy == "training":
            self.status.setText("training… (progress in the training dock)")
        elif busy:
            self.status.setText(f"{busy}…")
        elif self._busy_shown:
            self.status.setText(self.session.status)
        self._busy_shown = bool(busy)
        self._update_buttons()
        self._check_stale()

    def _update_buttons(self, *_: Any) -> None:
        """Enable only what can work now: predicting and continuing need a model, the
        review and export need a prediction layer, nothing while something runs."""
        if self._closed:
            return
        idle = not self.session.busy
        model = self.session.bundle is not None
        try:
            predicted = self._layer("prediction") is not None
            scored = predicted or self._layer("discrepancy") is not None
        except SemisegError:
            predicted = scored = False
        self.predict_button.setEnabled(idle and model)
        self.continue_button.setEnabled(idle and model)
        self.next_button.setEnabled(idle and scored)
        self.accept_button.setEnabled(idle and predicted)
        self.export_button.setEnabled(predicted and self.export_worker is None)
        # a disabled button says why in its tooltip, after what it does
        busy = f"{self.session.busy} is running: wait for it to end"
        why = {
            self.predict_button: "" if model else "train or load a model first",
            self.continue_button: "" if model else "train or load a model first",
            self.next_button: "" if scored else "Predict volume first: it ranks the slices",
            self.accept_button: "" if predicted else "Predict volume first, then correct it",
            self.export_button: ""
            if predicted
            else "Predict volume first: nothing to export"
            if self.export_worker is None
            else "an export is running",
        }
        for button, reason in why.items():
            if not reason and not idle and button is not self.export_button:
                reason = busy
            what = self._tooltips.setdefault(button, button.toolTip())
            button.setToolTip(f"{what}<br><i>Disabled: {reason}.</i>" if reason else what)
            button.setStatusTip(reason)

    def _output_layers(self) -> list:
        try:
            prefix = f"{self._image().name} "
        except SemisegError:
            return []
        return [
            ly
            for ly in self.viewer.layers
            if ly.name.startswith(prefix)
            and ly.metadata.get("semiseg_model") is not None
            and ly.metadata.get("semiseg_output")
        ]

    def stale_layers(self) -> list:
        """Prediction and map layers made by another model (or iteration) than the current."""
        stamp = self.session.model_stamp()
        return [ly for ly in self._output_layers() if ly.metadata["semiseg_model"] != stamp]

    def _check_stale(self) -> None:
        """Mark the layers of an older model state stale (metadata ``stale``) and say so."""
        stale = self.stale_layers()
        outputs = self._output_layers()
        for layer in outputs:
            layer.metadata["stale"] = layer in stale
        if self.session.busy == "training" and outputs:
            # the layers show the model before this training: hidden (they would cover the
            # live preview) and said so, not left on screen as if they were this run's
            made = outputs[0].metadata["semiseg_model"]
            if not self._hidden_for_training:
                self._hidden_for_training = True
                for layer in outputs:
                    layer.visible = False
            self._stale_note = (
                f"the prediction layers (hidden) show {made['method']} at iteration "
                f"{made['iteration']}, from before this training: Predict volume when it ends"
            )
            self.review_info.setText(self._stale_note)
            return
        self._hidden_for_training = False
        if not stale or self.session.busy:
            if not stale:
                self._stale_note = ""
            return
        made = stale[0].metadata["semiseg_model"]
        b = self.session.bundle
        now = "no model" if b is None else f"{b.method.name} at iteration {b.iteration}"
        self._stale_note = (
            f"⚠ the prediction layers are out of date: they show {made['method']} at "
            f"iteration {made['iteration']}, the model is now {now}. Predict volume again."
        )
        self.review_info.setText(self._stale_note)

    def _image(self) -> Image:
        image = self.image_combo.layer()
        if image is None:
            raise SemisegError("no image layer: open a volume and pick it as Image")
        return image

    def _layer(self, kind: str):
        name = layer_name(self._image().name, kind)
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # -- predict ----------------------------------------------------------------------------
    def predict(self) -> bool:
        """Predict the whole volume in a worker; returns whether it started."""
        try:
            if self.session.busy:
                raise SemisegError(f"{self.session.busy} is running: wait for it to end")
            bundle = self.session.bundle
            if bundle is None:
                raise SemisegError("no model: train one in the training dock or load one")
            image = self._image()
            data = image_data(image)  # level 0 of a multiscale layer
            store = None
            # the sparse labels fuse the prediction with their propagation (in memory)
            sparse, labeled = None, []
            labels = self.labels_combo.layer()
            if labels is not None and bundle.axis == self._axis():
                sparse = np.asarray(labels.data)
                labeled = self.session.labeled(sparse, bundle.axis)
            if lazy_image(data, bool(image.rgb)) is not None:
                # a volume larger than memory: stream into zarr stores in the run folder
                run_dir = self.session.run_dir or self.session.new_run_dir()
                store = prediction_store(run_dir, image.name)
        except SemisegError as exc:
            show_error(str(exc))
            return False
        note = data_note(image, "prediction")
        self._prediction_note = note
        if note:
            show_info(note)
            self.status.setText(f"predicting… ({note})")
        stamp = self.session.model_stamp()
        self.session.busy = "predicting"
        self.session.notify(Change.BUSY)
        # only the maps shown as layers (the CLI's --maps writes the per-network ones), and
        # their display arrays and contrast limits made in the worker
        self.worker = create_worker(
            predict_for_display,
            bundle,
            data,
            shown=LAYER_MAPS,
            limits_for=UNFIXED_LIMITS,
            rgb=bool(image.rgb),
            store=store,
            labels=sparse,
            labeled=labeled,
            smoothing=smoothing_for_spacing(image.scale[-3:], bundle.axis),
            spacing=tuple(image.scale[-3:]),
            _start_thread=False,
            _connect={
                "returned": lambda pred: self._show_prediction(image, pred, stamp),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self.worker.start()
        return True

    def _show_prediction(
        self, image: Image, shown: DisplayPrediction, stamp: dict | None = None
    ) -> None:
        if self._closed or image.name not in self.viewer.layers:
            return
        pred = shown.prediction
        if pred.note:  # e.g. a model that has not learned: the propagation is shown
            show_warning(pred.note)
        stamp = dict(stamp) if stamp else self.session.model_stamp()
        k = self.session.bundle.num_classes if self.session.bundle is not None else 2
        maps = {k: v for k, v in shown.maps.items() if k in LAYER_MAPS}
        order = sorted(maps, key=lambda k: (k != "pseudo-labels", k == "discrepancy", k))
        made: list = []

        def add_map(kind: str) -> None:
            array, layer_type = maps[kind]
            style = (
                dict(MAP_STYLE.get(kind, OTHER_MAP))
                if layer_type == "image" or kind in MAP_STYLE
                else {}
            )
            if layer_type == "image" and "contrast_limits" not in style:
                style["contrast_limits"] = shown.limits.get(kind, (0.0, 1.0))
            if layer_type == "labels":
                style["colormap"] = prediction_colormap()
            made.append(self._add_output(image, kind, array, layer_type, stamp, k, **style))

        # napari builds a layer's visuals on the GUI thread (~0.13 s for a 64 x 512 x 512
        # map): one layer per turn of the event loop, so the viewer never freezes for all
        steps = [lambda kind=kind: add_map(kind) for kind in order]
        steps.append(lambda: self._finish_showing(image, pred, stamp, k, made))
        self._showing = True

        def run_next() -> None:
            if self._closed or image.name not in self.viewer.layers:
                self._showing = False
                self._end_predicting()
                return
            try:
                steps.pop(0)()
            except Exception as exc:  # noqa: BLE001  (never a dock stuck "predicting")
                steps.clear()
                self._showing = False
                self._end_predicting()
                self._on_error(exc)
                return
            if steps:
                QTimer.singleShot(0, run_next)

        run_next()

    def _finish_showing(self, image: Image, pred: VolumePrediction, stamp, k, made) -> None:
        """The last step of showing a prediction: the mask on top, old maps gone, texts."""
        name = image.name
        # maps of an earlier model that this one does not make (DFCPS's discrepancy after a
        # supervised prediction, diffusion's uncertainty after SDCL's) would steer the review
        # and the legend: they go
        keep = {ly.name for ly in made} | {layer_name(name, map_title("prediction"))}
        for layer in self._output_layers():
            kind = layer.metadata.get("semiseg_map")
            if kind in LAYER_MAPS and layer.name not in keep:
                self.viewer.layers.remove(layer)
        # what the model predicted, to tell the user's repainting from it (region corrections)
        self._predicted = None if is_lazy(pred.labels) else np.array(pred.labels)
        # the prediction last (on top), shown and selected: it is what the user corrects
        pred_layer = self._add_output(
            image,
            "prediction",
            pred.labels,
            "labels",
            stamp,
            k,
            opacity=0.6,
            colormap=prediction_colormap(),
        )
        layers = self.viewer.layers
        layers.move(layers.index(pred_layer), len(layers))
        pred_layer.visible = True
        for other in (f"{name} preview", "no-training result"):
            if other in layers and layers[other].metadata.get("semiseg_output"):
                layers[other].visible = False  # they would hide the prediction
        disc = self._layer("discrepancy")
        for layer in made:
            if layer.name != getattr(disc, "name", None) and hasattr(layer, "colorbar"):
                layer.colorbar.visible = False
        if disc is not None and disc.visible:
            disc.colorbar.visible = True  # napari's colour bar: 0 to the top value
        self.viewer.layers.selection.active = pred_layer
        self._queue, self._visited = [], set()
        self._stale_note = ""
        self.legend.setText(self._legend_text(k))
        note = getattr(self, "_prediction_note", "")
        self.status.setText(
            f"predicted with {stamp['method']} at iteration {stamp['iteration']}: "
            f"{len(made) + 1} layers (below)" + (f" · {note}" if note else "")
        )
        self.review_info.setText(
            f"Next slice goes to the next slice to correct ({self.strategy_combo.currentText()})."
        )
        self._showing = False
        self._end_predicting()

    def _add_output(self, image, kind, array, layer_type, stamp, k, **style):
        title = map_title(kind)
        layer = add_or_update(
            self.viewer, layer_name(image.name, title), array, layer_type, image, **style
        )
        layer.metadata["semiseg_map"] = kind
        layer.metadata["semiseg_model"] = dict(stamp)
        layer.metadata["stale"] = False
        info = map_meaning(kind, stamp.get("method"), k)
        layer.metadata["description"] = (
            f"{title}: {info} ({stamp['method']}, iteration {stamp['iteration']})"
        )
        return layer

    def _made_maps(self) -> tuple[str, ...]:
        """The maps the current model makes."""
        b = self.session.bundle
        return tuple(b.method.map_names) if b is not None else ()

    def _legend_text(self, k: int) -> str:
        """One line per layer of the last prediction: its name, whether shown, its meaning."""
        rows = []
        for layer in reversed(self._output_layers()):
            kind = layer.metadata.get("semiseg_map", "")
            made_by = (layer.metadata.get("semiseg_model") or {}).get("method")
            info = map_meaning(kind, made_by, k)
            shown = "" if layer.visible else " <i>(hidden)</i>"
            rows.append(f"<b>{map_title(kind)}</b>{shown}: {info}")
        others = [m for m in self._made_maps() if m not in LAYER_MAPS and m != "pseudo"]
        if others:
            names = ", ".join(map_title(m) for m in others)
            rows.append(f"<i>semiseg predict --maps also writes {names}.</i>")
        return "<br>".join(rows)

    def _on_error(self, exc: BaseException) -> None:
        if not isinstance(exc, SemisegError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        message = error_message(exc)
        show_error(short(message))
        self.status.setText(f"error: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        self._end_predicting()

    def _end_predicting(self) -> None:
        """Idle again once the worker is done and its layers are all shown."""
        if self.worker is None and not self._showing and self.session.busy == "predicting":
            self._busy_shown = False  # keep the prediction's own status line
            self.session.busy = ""
            self.session.notify(Change.BUSY)
            release_free_memory()
        self._update_buttons()

    # -- review -----------------------------------------------------------------------------
    def _axis(self) -> int:
        b = self.session.bundle
        return b.axis if b is not None else self.session.axis

    def _on_strategy(self, _text: str) -> None:
        """Another way to choose: the next slices are ranked afresh."""
        self._visited = set()

    def _check_same_model(self, layer, source: str) -> None:
        """Refuse a map or prediction made by another model than the current one."""
        made_by, now = layer.metadata.get("semiseg_model") or {}, self.session.model_stamp()
        if (
            now is not None
            and made_by
            and (made_by.get("method"), made_by.get("iteration"))
            != (now["method"], now["iteration"])
        ):
            raise SemisegError(
                f"the {source} shows {made_by.get('method')} at iteration "
                f"{made_by.get('iteration')}, the model is now {now['method']} at iteration "
                f"{now['iteration']}: press 'Predict volume' first"
            )

    def _uncertainty(self, axis: int) -> tuple[np.ndarray, str]:
        """Mean discrepancy per slice (1 - mean confidence for one-network methods) and the
        name of the map used."""
        score_layer, source = self._layer("discrepancy"), "discrepancy"
        if score_layer is None:
            conf = self._layer("confidence")
            if conf is None:
                raise SemisegError("no prediction yet: press 'Predict volume' first")
            score_layer, source = conf, "1 - confidence"
        self._check_same_model(score_layer, f"{source} map")
        # a lazy map (a prediction streamed to zarr) is averaged slab by slab
        means = slice_score(score_layer.data, axis)
        return (1.0 - means if source != "discrepancy" else means), source

    def review_ranking(self, n: int | None = None) -> tuple[list[int], str]:
        """The next ``n`` slices to annotate (default: every one), best first, by the
        strategy of the box beside *Next slice* (the same ranking as ``semiseg suggest
        --strategy``), and what it went by: the map used, or the predicted structure's
        extent for ``strided``."""
        picks, source = self._suggestions(n)
        return [p.index for p in picks], source

    def _suggestions(self, n: int | None) -> tuple[list, str]:
        """:meth:`review_ranking` with each slice's reason (src_models.suggest.Suggestion)."""
        image = self._image()
        labels = self.labels_combo.layer()
        axis = self._axis()
        strategy = self.strategy_combo.currentText()
        labeled = []
        if labels is not None:
            check_pair(image, labels)
            labeled = self.session.labeled(np.asarray(labels.data), axis)
        n_slices = int(image_data(image).shape[-3 + axis])
        pred = self._layer("prediction")
        structure = None
        if pred is not None:
            self._check_same_model(pred, "prediction")
            structure = structure_slices(pred.data, axis)
        uncertainty, source = None, "the predicted structure"
        self._ranking_flat = False
        if strategy != "strided":
            uncertainty, source = self._uncertainty(axis)
            done = set(labeled)
            rest = [float(uncertainty[i]) for i in range(n_slices) if i not in done]
            # the unlabeled slices all score the same: the ranking says nothing
            self._ranking_flat = (max(rest) - min(rest) <= FLAT_SCORE) if rest else False
            self._ranking_value = rest[0] if rest else 0.0
        elif pred is None:
            raise SemisegError("no prediction yet: press 'Predict volume' first")
        picks = suggest(
            labeled,
            n_slices,
            uncertainty,
            structure,
            n=n_slices if n is None else n,
            strategy=strategy,
            ends_labeled=self.session.ends_labeled,
        )
        return picks, source

    def next_slice(self) -> int | None:
        """Move the viewer to the next unlabeled slice to review; returns its index."""
        try:
            # one more than the slices visited: the first unvisited one is among them (the GUI
            # thread ranks no more of a long volume than it needs)
            picks, source = self._suggestions(len(self._visited) + 1)
        except SemisegError as exc:
            show_error(str(exc))
            return None
        todo = [p for p in picks if p.index not in self._visited]
        if not todo:
            show_info("every unlabeled slice has been visited; predict again to start over")
            return None
        index, why, by = todo[0].index, todo[0].why, todo[0].by
        self._visited.add(index)
        image = self._image()
        go_to_slice(self.viewer, image, self._axis(), index)
        pred = self._layer("prediction")
        if pred is not None:
            self.viewer.layers.selection.active = pred
        if self._ranking_flat and by != "strided":  # a strided pick needs no score
            b = self.session.bundle
            trained = (
                describe_training(self.session.train_seconds, b.iteration)
                if b is not None
                else "its training"
            )
            self.review_info.setText(
                f"slice {index}: every unlabeled slice has the same {source} "
                f"({self._ranking_value:.2g}), so there is nothing to rank. The model has not "
                f"learned enough yet after {trained} (it predicts the same everywhere): "
                "train longer or continue training, then predict again."
            )
        else:
            strategy = self.strategy_combo.currentText()
            self.review_info.setText(
                f"{why} (axis {self._axis()}, {strategy}; {len(self._visited)} visited so far)"
                if by == "strided"
                else f"{why} ({source}, axis {self._axis()}): the highest score among the "
                "unvisited unlabeled slices"
            )
        self.accept_button.setText(f"Accept slice {index}")
        return index

    def _painted_region(self, values: np.ndarray, where: tuple, labels) -> tuple[np.ndarray, int]:
        """The corrected slice ``values`` with every voxel the user did not repaint (equal to
        the model's prediction) set to :data:`REGION_IGNORE`; and how many were painted."""
        if self._predicted is None:
            raise SemisegError(
                "region corrections need the prediction in memory: untick 'only what I "
                "painted' to accept whole slices"
            )
        if np.iinfo(labels.data.dtype).max < REGION_IGNORE:
            raise SemisegError(f"labels layer {labels.name!r} cannot hold {REGION_IGNORE}")
        model = np.asarray(self._predicted[where]).astype(values.dtype)
        if (model == REGION_IGNORE).any() or (values == REGION_IGNORE).any():
            raise SemisegError(
                f"the labels use {REGION_IGNORE} as a class, which region corrections use for "
                "unannotated voxels: accept whole slices instead"
            )
        changed = values != model
        if not changed.any():
            raise SemisegError(
                "nothing repainted on this slice: correct the prediction layer where it is "
                "wrong first (or untick 'only what I painted' to accept the whole slice)"
            )
        return np.where(changed, values, REGION_IGNORE).astype(values.dtype), int(changed.sum())

    def accept_slice(self, index: int | None = None, region: bool | None = None) -> int | None:
        """Copy the prediction layer's slice (shown one by default) into the training labels
        (undoable in the labels layer) and count it as labeled; returns the slice index.
        With ``region`` (default: the 'only what I painted' box) only the repainted voxels
        are copied and the rest of the slice is marked unannotated."""
        try:
            image = self._image()
            labels = self.labels_combo.layer()
            check_pair(image, labels)
            pred = self._layer("prediction")
            if pred is None:
                raise SemisegError("no prediction layer: press 'Predict volume' first")
            axis = self._axis()
            if index is None:
                index = current_index(self.viewer, image, axis)
            if labels.data.dtype.kind in "iu" and pred.data.max() > np.iinfo(labels.data.dtype).max:
                raise SemisegError(f"labels layer {labels.name!r} cannot hold the classes")
        except SemisegError as exc:
            show_error(str(exc))
            return None
        where = [slice(None)] * 3
        where[axis] = index
        values = np.asarray(pred.data[tuple(where)]).astype(labels.data.dtype)
        region = self.region_check.isChecked() if region is None else region
        painted = values.size
        if region:
            try:
                values, painted = self._painted_region(values, tuple(where), labels)
            except SemisegError as exc:
                show_error(str(exc))
                return None
            self.session.ignore_label = REGION_IGNORE
        grid = list(np.indices(values.shape).reshape(2, -1))
        grid.insert(axis, np.full(values.size, index))
        labels.data_setitem(tuple(grid), values.reshape(-1))
        self.session.axis = axis
        self.session.accepted.add(int(index))
        self._visited.add(int(index))
        self.session.notify(Change.LABELS)
        n = len(self.session.labeled(np.asarray(labels.data), axis))
        what = (
            f"{painted} painted voxels of slice {index} ({100 * painted / values.size:.1f} %; "
            "the rest unannotated)"
            if region
            else f"slice {index}"
        )
        self.review_info.setText(
            f"{what} accepted into {labels.name!r}: {n} labeled "
            "slices; continue training to use them"
        )
        self.accept_button.setText("Accept slice")
        return int(index)

    def continue_training(self) -> bool:
        """Ask the training dock (a :class:`ContinueTraining` session event) to continue the
        current model; returns whether a training now runs."""
        if not self.session.training_dock_open:
            try:
                self.viewer.window.add_plugin_dock_widget("napari-semiseg", "Training")
            except Exception:  # noqa: BLE001  (no window, plugin not registered, ...)
                pass
        if not self.session.training_dock_open:
            show_error("open the training dock (Plugins > napari-semiseg > Training) first")
            return False
        if (
            self.labels_combo.layer() is not None
            and self.session.labels_name != self.labels_combo.layer().name
        ):
            show_error(
                f"the training dock trains on {self.session.labels_name!r}: pick the "
                "same labels layer in both docks"
            )
            return False
        return self.session.request_continue(self.continue_iterations.value())

    # -- export -----------------------------------------------------------------------------
    def export_to(self, folder: str | Path, suffix: str = ".nii.gz", maps: bool = False) -> bool:
        """Write the (corrected) prediction, and the maps if asked, into ``folder`` in a
        worker; files are named after the image. Returns whether the export started."""
        from napari_semiseg._writer import layer_image_meta

        try:
            image = self._image()
            pred = self._layer("prediction")
            if pred is None:
                raise SemisegError("nothing to export: press 'Predict volume' first")
        except SemisegError as exc:
            show_error(str(exc))
            return False
        meta = layer_image_meta(image.metadata, image.scale[-3:], image.translate[-3:])
        base = Path(folder) / f"{safe_name(image.name)}_prediction{suffix}"
        # lazy layer data (a streamed prediction) stays lazy: write_all streams it
        items = [(base, export_array(pred.data), True)]
        if maps:
            for layer in self._output_layers():
                kind = layer.metadata.get("semiseg_map", "")
                if kind and kind != "prediction":
                    items.append((kind, export_array(layer.data), isinstance(layer, Labels)))
        made = pred.metadata.get("semiseg_model") or {}
        self._export_source = (
            f"{made['method']} at iteration {made['iteration']}" if made else "unknown model"
        )
        if pred.metadata.get("stale"):
            b = self.session.bundle
            show_warning(
                f"exporting the prediction of {self._export_source}; the model is now at "
                f"iteration {b.iteration if b else '?'}: predict again to export it"
            )
        self.export_worker = create_worker(
            write_all,
            base,
            items,
            meta,
            _start_thread=False,
            _connect={
                "returned": self._on_exported,
                "errored": self._on_error,
                "finished": self._on_export_finished,
            },
        )
        self.status.setText(f"exporting to {base}…")
        self.export_worker.start()
        self._update_buttons()
        return True

    def _on_export_finished(self) -> None:
        self.export_worker = None
        self._update_buttons()

    def _on_exported(self, paths: list[Path]) -> None:
        source = getattr(self, "_export_source", "")
        self.status.setText(
            f"exported the prediction of {source}: " + ", ".join(str(p) for p in paths)
        )
        show_info(f"exported {len(paths)} file(s) ({source}) to {paths[0].parent}")

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export into a folder")
        if folder:
            self.export_to(
                folder, FORMATS[self.format_combo.currentText()], self.maps_check.isChecked()
            )

    # -- shutdown ---------------------------------------------------------------------------
    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.session.disconnect(self._on_session)
        self.viewer.layers.events.inserted.disconnect(self._update_buttons)
        self.viewer.layers.events.removed.disconnect(self._update_buttons)
        self.image_combo.disconnect_viewer()
        self.labels_combo.disconnect_viewer()

    def closeEvent(self, event) -> None:  # noqa: N802  (Qt override)
        self.shutdown()
        super().closeEvent(event)
