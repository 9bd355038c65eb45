"""The training dock's settings tabs: Data (image, labels, slice axis, Propagate), Method (the
method, when it pays off, its parameter form) and Budget (iterations or minutes, batch, patch,
device, seed, preview), each a form in its own scroll area (:class:`FormTab`, also the base
of the Runs tab), and the small widget helpers the dock shares with them.

The tabs own their widgets and the reactions that concern only them (the method's
description and form, the budget unit, the device note); the dock keeps attributes of the
same names (``dock.method_combo is dock.method_tab.method_combo``) and connects what
concerns the session (the layers and axis picked)."""

from __future__ import annotations

from napari.layers import Image, Labels
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractSpinBox,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QWidget,
)
from superqt import QCollapsible

from napari_semiseg._jobs import TrainRequest
from napari_semiseg._labels import AXIS_NAMES
from napari_semiseg._qt.layers import LayerCombo
from napari_semiseg._qt.param_form import ParamForm
from napari_semiseg._qt.widgets import wrapping_label
from src_models.device import DEVICE_CHOICES, select_device
from src_models.errors import SemisegError
from src_models.method_choice import AUTO, AUTO_HELP
from src_models.methods.base import get_method, method_names


def spin(box: QAbstractSpinBox, low: float, high: float, value: float) -> QAbstractSpinBox:
    """A spin box whose width does not follow its largest value (2**31 is wide)."""
    box.setRange(low, high)
    box.setValue(value)
    box.setMinimumWidth(60)
    box.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return box


def plural(n: int, noun: str) -> str:
    """``1 labeled slice``, ``3 labeled slices``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


class FormTab(QScrollArea):
    """A settings tab: a form (:attr:`form`) in its own scroll area (rows wrap when
    narrow)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        content = QWidget()
        self.setWidget(content)
        form = QFormLayout(content)
        form.setContentsMargins(4, 4, 4, 4)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form = form


class DataTab(FormTab):
    """The image and labels layers, the slice axis, what the labels hold (``data_info``) and
    the Propagate button; the dock reacts to the choices (they are the session's)."""

    def __init__(self, viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = self.form
        self.image_combo = LayerCombo(viewer, Image)
        self.labels_combo = LayerCombo(viewer, Labels)
        self.axis_combo = QComboBox()
        for a, name in enumerate(AXIS_NAMES):
            self.axis_combo.addItem(f"{a} ({name})")
        self.axis_combo.setToolTip(
            "The axis the labeled slices are cut along (detected from "
            "where the labels are; change it if needed)"
        )
        self.data_info = wrapping_label()
        self.ends_labeled = QCheckBox("Labeled slices include the first and last")
        self.ends_labeled.setToolTip(
            "Tick when the outer labeled slices are the first and last slices where the "
            "structure appears (as for Slicer's 'fill between slices'): the propagation, "
            "training and prediction then stop there, and the slices beyond them train as "
            "background. Untick when the structure goes on beyond them: the propagation "
            "reaches further, 0.7 of the labeled slices' mean spacing."
        )
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Slice axis", self.axis_combo)
        form.addRow(self.ends_labeled)
        form.addRow(self.data_info)
        self.interpolate_button = QPushButton("Propagate (no training)")
        form.addRow(self.interpolate_button)


class MethodTab(FormTab):
    """The method, its description (when it pays off) and its parameter form, from the
    registry in :mod:`src_models.methods.base`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        form = self.form
        self.method_combo = QComboBox()
        self.method_combo.addItems([AUTO, *method_names()])
        self.method_combo.setToolTip(
            "The training method: auto (the default: the method measured best at the "
            "budget), supervised (with the propagation prior) or one of the four "
            "semi-supervised methods; when each pays off is said below it"
        )
        self.method_description = wrapping_label()
        self.params = ParamForm()
        self.advanced = QCollapsible("Advanced parameters")
        self.advanced.addWidget(self.params)
        form.addRow("Method", self.method_combo)
        form.addRow(self.method_description)
        form.addRow(self.advanced)
        self.method_combo.currentIndexChanged.connect(self._on_method)
        self._on_method(self.method_combo.currentIndex())

    def _on_method(self, _index: int) -> None:
        name = self.method_combo.currentText()
        if not name:
            return
        self.advanced.setVisible(name != AUTO)
        if name == AUTO:  # no parameters of its own: pick a method to set them
            self.method_description.setText(
                f"{AUTO_HELP[0].upper()}{AUTO_HELP[1:]}. Pick a method to set its parameters."
            )
            return
        cls = get_method(name)
        note = f"\n⏱ {cls.budget_note}" if cls.budget_note else ""
        self.method_description.setText(cls.description + note)
        self.params.set_config_class(cls.Config)


class BudgetTab(FormTab):
    """Iterations or minutes, batch and patch size, device (with the one ``auto`` picks),
    seed and how often the live preview is predicted."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        bform = self.form
        self.iterations = spin(QSpinBox(), 1, 10_000_000, 1000)
        self.minutes = spin(QDoubleSpinBox(), 0.1, 100_000, 5.0)
        self.budget_unit = QComboBox()
        self.budget_unit.addItems(["iterations", "minutes"])
        self.budget_unit.currentIndexChanged.connect(self._on_budget_unit)
        self.iterations.setToolTip("Training steps of the run (one batch each)")
        self.minutes.setToolTip(
            "Wall-clock minutes of training (pauses excluded); the model at the end is kept"
        )
        self.budget_unit.setToolTip(
            "Budget in iterations (reproducible) or in minutes (what you can wait; the "
            "default method is measured at 2 and 5 minutes in docs/benchmarks.md)"
        )
        row = QHBoxLayout()
        row.addWidget(self.iterations, 1)
        row.addWidget(self.minutes, 1)
        row.addWidget(self.budget_unit)
        bform.addRow("Budget", row)
        self.batch_size = spin(QSpinBox(), 1, 1024, 8)
        self.batch_size.setToolTip("Labeled (and unlabeled) crops per training step")
        self.patch_size = spin(QSpinBox(), 16, 2048, 128)
        self.patch_size.setSingleStep(16)
        self.patch_size.setToolTip("Side of the square training crop, a multiple of 16")
        bform.addRow("Batch size", self.batch_size)
        bform.addRow("Patch size", self.patch_size)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICE_CHOICES))
        self.device_label = QLabel()
        self.device_combo.currentTextChanged.connect(self._on_device)
        self.device_combo.setToolTip(
            "Where the networks run: auto picks a CUDA or Apple (MPS) GPU when there is one, "
            "else the CPU"
        )
        row = QHBoxLayout()
        row.addWidget(self.device_combo)
        row.addWidget(self.device_label, 1)
        bform.addRow("Device", row)
        self.seed = spin(QSpinBox(), 0, 2**31 - 1, 0)
        self.seed.setToolTip("Seed of the initial weights and of every random draw")
        bform.addRow("Seed", self.seed)
        self.preview_seconds = spin(QDoubleSpinBox(), 0.0, 3600.0, TrainRequest.preview_seconds)
        self.preview_seconds.setDecimals(1)
        self.preview_seconds.setSingleStep(5.0)
        self.preview_seconds.setSuffix(" s")
        self.preview_seconds.setSpecialValueText("off")
        self.preview_seconds.setToolTip(
            "Predict the slice shown in the viewer into the preview layer every N seconds "
            "of training (the first after N seconds, the last at the end; 0: off)"
        )
        bform.addRow("Preview every", self.preview_seconds)
        self._on_budget_unit(0)
        self._on_device(self.device_combo.currentText())

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
