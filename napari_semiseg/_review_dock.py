"""The review-and-correct dock: predict the volume, visit the slices where the model is least
sure, correct them with napari's paint tools, accept them into the training labels, continue
training, export.

Layers are named after the image (``"<image> prediction"``, ``"<image> confidence"``, ...)
and updated in place on every run. Which maps exist comes from the method (``map_names``):
``confidence`` always, ``discrepancy`` for methods with two networks/students/decoders/samples,
``pseudo`` as the ``pseudo-labels`` Labels layer, anything else (e.g. ``uncertainty``) as an
extra Image layer. Prediction and export run in napari workers, never on the GUI thread.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_semiseg._layers import (
    LayerCombo,
    add_or_update,
    check_pair,
    current_index,
    go_to_slice,
    image_data,
)
from napari_semiseg._session import display_maps, predict_layers, rank_slices, session_for
from napari_semiseg._training_dock import error_message
from src_models.errors import SemisegError
from src_models.inference import VolumePrediction

#: export formats: label shown -> file suffix
FORMATS = {"NIfTI (.nii.gz)": ".nii.gz", "zarr (.zarr)": ".zarr", "TIFF (.tif)": ".tif"}

#: how each kind of map is shown; anything not listed uses ``OTHER_MAP``
MAP_STYLE = {
    "confidence": {
        "colormap": "viridis",
        "opacity": 0.5,
        "contrast_limits": (0.0, 1.0),
        "visible": False,
    },
    "discrepancy": {"colormap": "magenta", "blending": "additive", "opacity": 0.6},
    "pseudo-labels": {"opacity": 0.5, "visible": False},
}
OTHER_MAP = {"colormap": "inferno", "blending": "additive", "opacity": 0.7, "visible": False}


def layer_name(image_name: str, kind: str) -> str:
    return f"{image_name} {kind}"


class ReviewDock(QWidget):
    """Dock widget; ``napari_viewer`` is injected by napari (npe2 widget contribution)."""

    def __init__(self, napari_viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.export_worker = None
        self._queue: list[int] = []
        self._visited: set[int] = set()
        self._closed = False
        self._build()
        self.session.connect(self._on_session)
        if self.session.image_name:
            self.image_combo.set_layer(self.session.image_name)
        if self.session.labels_name:
            self.labels_combo.set_layer(self.session.labels_name)
        self._refresh_model()

    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)
        box = QGroupBox("Model and data")
        form = QFormLayout(box)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        self.image_combo = LayerCombo(self.viewer, Image)
        self.labels_combo = LayerCombo(self.viewer, Labels)
        self.labels_combo.setToolTip("The training labels: accepted slices are copied here")
        form.addRow(self.model_info)
        form.addRow("Image", self.image_combo)
        form.addRow("Training labels", self.labels_combo)
        self.predict_button = QPushButton("Predict volume")
        self.predict_button.setToolTip(
            "Predict every slice; adds or updates the prediction, "
            "confidence, discrepancy and pseudo-label layers"
        )
        self.predict_button.clicked.connect(self.predict)
        form.addRow(self.predict_button)
        root.addWidget(box)

        box = QGroupBox("Review and correct")
        lay = QVBoxLayout(box)
        self.next_button = QPushButton("Next slice to review")
        self.next_button.setToolTip(
            "Go to the unlabeled slice where the networks disagree "
            "most (least confident for single-network methods)"
        )
        self.next_button.clicked.connect(self.next_slice)
        self.accept_button = QPushButton("Accept slice")
        self.accept_button.setToolTip(
            "Copy the (corrected) prediction of the slice shown into "
            "the training labels; it then counts as labeled"
        )
        self.accept_button.clicked.connect(lambda: self.accept_slice())
        hint = QLabel(
            "Correct the prediction layer with the paint / fill tools (undo works), "
            "then accept the slice."
        )
        hint.setWordWrap(True)
        self.review_info = QLabel()
        self.review_info.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.next_button)
        row.addWidget(self.accept_button)
        lay.addLayout(row)
        lay.addWidget(hint)
        lay.addWidget(self.review_info)
        row = QHBoxLayout()
        self.continue_iterations = QSpinBox()
        self.continue_iterations.setRange(1, 10_000_000)
        self.continue_iterations.setValue(200)
        self.continue_iterations.setSuffix(" it.")
        self.continue_button = QPushButton("Continue training")
        self.continue_button.setToolTip(
            "Fine-tune the current model with the enlarged labeled set (no restart from scratch)"
        )
        self.continue_button.clicked.connect(self.continue_training)
        row.addWidget(self.continue_button)
        row.addWidget(self.continue_iterations)
        lay.addLayout(row)
        root.addWidget(box)

        box = QGroupBox("Export")
        lay = QHBoxLayout(box)
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        self.maps_check = QCheckBox("maps too")
        self.maps_check.setToolTip(
            "Also write confidence, discrepancy, pseudo-labels, ... next to the masks"
        )
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_dialog)
        lay.addWidget(self.format_combo)
        lay.addWidget(self.maps_check)
        lay.addWidget(self.export_button)
        root.addWidget(box)
        self.status = QLabel()
        self.status.setWordWrap(True)
        root.addWidget(self.status)
        root.addStretch(1)

    # -- state ------------------------------------------------------------------------------
    def _on_session(self, what: str) -> None:
        if self._closed:
            return
        if what in ("model", "busy"):
            self._refresh_model()

    def _refresh_model(self) -> None:
        b = self.session.bundle
        if b is None:
            self.model_info.setText("No model yet: train one in the training dock or load one.")
        else:
            self.model_info.setText(
                f"Model: {b.method.name} · {b.num_classes} classes · axis {b.axis} · "
                f"iteration {b.iteration}"
            )
        idle = not self.session.busy
        for w in (self.predict_button, self.continue_button, self.accept_button):
            w.setEnabled(idle and b is not None)
        if self.session.busy:
            self.status.setText(f"{self.session.busy}…")

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
        except SemisegError as exc:
            show_error(str(exc))
            return False
        self.session.busy = "predicting"
        self.session.notify("busy")
        self.worker = create_worker(
            predict_layers,
            bundle,
            image_data(image),
            rgb=bool(image.rgb),
            _start_thread=False,
            _connect={
                "returned": lambda pred: self._show_prediction(image, pred),
                "errored": self._on_error,
                "finished": self._on_finished,
            },
        )
        self.worker.start()
        return True

    def _show_prediction(self, image: Image, pred: VolumePrediction) -> None:
        if self._closed or image.name not in self.viewer.layers:
            return
        name = image.name
        add_or_update(
            self.viewer, layer_name(name, "prediction"), pred.labels, "labels", image, opacity=0.5
        )
        maps = display_maps(pred)
        order = sorted(maps, key=lambda k: (k == "discrepancy", k != "pseudo-labels", k))
        for kind in order:
            array, layer_type = maps[kind]
            style = (
                dict(MAP_STYLE.get(kind, OTHER_MAP))
                if layer_type == "image" or kind in MAP_STYLE
                else {}
            )
            if layer_type == "image" and "contrast_limits" not in style:
                top = float(np.percentile(array, 99.9)) if array.size else 1.0
                style["contrast_limits"] = (0.0, max(top, 1e-3))
            add_or_update(self.viewer, layer_name(name, kind), array, layer_type, image, **style)
        pred_layer = self.viewer.layers[layer_name(name, "prediction")]
        self.viewer.layers.selection.active = pred_layer
        self._queue, self._visited = [], set()
        bundle = self.session.bundle
        self.status.setText(
            f"predicted {pred.labels.shape} with {bundle.method.name if bundle else 'model'}: "
            + ", ".join(["prediction", *order])
        )

    def _on_error(self, exc: BaseException) -> None:
        if not isinstance(exc, SemisegError):
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        message = error_message(exc)
        show_error(message)
        self.status.setText(f"error: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        if self.session.busy == "predicting":
            self.session.busy = ""
            self.session.notify("busy")

    # -- review -----------------------------------------------------------------------------
    def _axis(self) -> int:
        b = self.session.bundle
        return b.axis if b is not None else self.session.axis

    def review_ranking(self) -> tuple[list[int], str]:
        """Unlabeled slices by decreasing mean discrepancy (or 1 - confidence when the
        method has one network), and the name of the map used."""
        image = self._image()
        score_layer, source = self._layer("discrepancy"), "discrepancy"
        if score_layer is None:
            conf = self._layer("confidence")
            if conf is None:
                raise SemisegError("no prediction yet: press 'Predict volume' first")
            score, source = 1.0 - np.asarray(conf.data, dtype=np.float32), "1 - confidence"
        else:
            score = np.asarray(score_layer.data)
        labels = self.labels_combo.layer()
        axis = self._axis()
        labeled = []
        if labels is not None:
            check_pair(image, labels)
            labeled = self.session.labeled(np.asarray(labels.data), axis)
        return rank_slices(score, axis, labeled), source

    def next_slice(self) -> int | None:
        """Move the viewer to the next unlabeled slice to review; returns its index."""
        try:
            ranking, source = self.review_ranking()
        except SemisegError as exc:
            show_error(str(exc))
            return None
        todo = [s for s in ranking if s not in self._visited]
        if not todo:
            show_info("every unlabeled slice has been visited; predict again to start over")
            return None
        index = todo[0]
        self._visited.add(index)
        image = self._image()
        go_to_slice(self.viewer, image, self._axis(), index)
        pred = self._layer("prediction")
        if pred is not None:
            self.viewer.layers.selection.active = pred
        self.review_info.setText(
            f"slice {index} along axis {self._axis()}: highest {source} among the "
            f"{len(todo)} unvisited unlabeled slices"
        )
        self.accept_button.setText(f"Accept slice {index}")
        return index

    def accept_slice(self, index: int | None = None) -> int | None:
        """Copy the prediction layer's slice (shown one by default) into the training labels
        (undoable in the labels layer) and count it as labeled; returns the slice index."""
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
        grid = list(np.indices(values.shape).reshape(2, -1))
        grid.insert(axis, np.full(values.size, index))
        labels.data_setitem(tuple(grid), values.reshape(-1))
        self.session.axis = axis
        self.session.accepted.add(int(index))
        self._visited.add(int(index))
        self.session.notify("labels")
        n = len(self.session.labeled(np.asarray(labels.data), axis))
        self.review_info.setText(
            f"slice {index} accepted into {labels.name!r}: {n} labeled "
            "slices; continue training to use them"
        )
        self.accept_button.setText("Accept slice")
        return int(index)

    def continue_training(self) -> bool:
        hook = self.session.continue_training
        if hook is None:
            try:
                self.viewer.window.add_plugin_dock_widget("napari-semiseg", "Training")
            except Exception:  # noqa: BLE001  (no window, plugin not registered, ...)
                pass
            hook = self.session.continue_training
        if hook is None:
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
        return hook(self.continue_iterations.value())

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
        base = Path(folder) / f"{_safe(image.name)}_prediction{suffix}"
        items = [(base, np.asarray(pred.data), True)]
        if maps:
            prefix = f"{image.name} "
            for layer in self.viewer.layers:
                kind = layer.name[len(prefix) :]
                if (
                    layer.name.startswith(prefix)
                    and layer.metadata.get("semiseg_output")
                    and kind not in ("prediction", "preview")
                ):
                    items.append((kind, np.asarray(layer.data), isinstance(layer, Labels)))
        self.export_worker = create_worker(
            _write_all,
            base,
            items,
            meta,
            _start_thread=False,
            _connect={
                "returned": self._on_exported,
                "errored": self._on_error,
                "finished": lambda: setattr(self, "export_worker", None),
            },
        )
        self.status.setText(f"exporting to {base}…")
        self.export_worker.start()
        return True

    def _on_exported(self, paths: list[Path]) -> None:
        self.status.setText("exported " + ", ".join(str(p) for p in paths))
        show_info(f"exported {len(paths)} file(s) to {paths[0].parent}")

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
        self.image_combo.disconnect_viewer()
        self.labels_combo.disconnect_viewer()

    def closeEvent(self, event) -> None:  # noqa: N802  (Qt override)
        self.shutdown()
        super().closeEvent(event)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("_") or "image"


def _write_all(base: Path, items: list[tuple[Any, np.ndarray, bool]], meta) -> list[Path]:
    """Worker side: the mask at ``base``, maps next to it (``io.map_path``), atomically."""
    from napari_semiseg.io import map_path, write_volume

    out = []
    for target, array, is_labels in items:
        path = target if isinstance(target, Path) else map_path(base, target)
        out.append(write_volume(path, array, meta, labels=is_labels))
    return out
