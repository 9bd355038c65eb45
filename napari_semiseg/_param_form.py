"""A form generated from a method's ``Config`` dataclass (never written by hand).

One row per :class:`~src_models.methods.base.ParamInfo`: a combo box for fields with
``choices``, a check box for booleans, a spin box for integers and a line edit for floats
(kept as text so ``1e-4`` stays readable), strings and tuples (``16, 32, 64``). The field's
help is the tooltip; a changed value is shown in bold. :meth:`ParamForm.values` returns what
:func:`~src_models.methods.base.make_config` accepts, so validation and error messages come
from the core.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from src_models.methods.base import ParamInfo, config_params

INT_LIMIT = 2**31 - 1


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


class ParamForm(QWidget):
    """Editable hyperparameters of one method; rebuilt by :meth:`set_config_class`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._infos: dict[str, ParamInfo] = {}
        self._editors: dict[str, QWidget] = {}
        self._labels: dict[str, QLabel] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._form_host = QWidget()
        self._form = QFormLayout(self._form_host)
        self._form.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self._form_host)
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.clicked.connect(self.reset)
        outer.addWidget(self.reset_button)

    # -- building ---------------------------------------------------------------------------
    def set_config_class(self, config_cls: type) -> None:
        while self._form.rowCount():
            self._form.removeRow(0)
        self._infos = {p.name: p for p in config_params(config_cls)}
        self._editors, self._labels = {}, {}
        for info in self._infos.values():
            editor = self._make_editor(info)
            editor.setToolTip(info.help)
            editor.setObjectName(f"param_{info.name}")
            label = QLabel(info.name)
            label.setToolTip(info.help)
            self._editors[info.name] = editor
            self._labels[info.name] = label
            self._form.addRow(label, editor)
        self._mark_changed()

    def _make_editor(self, info: ParamInfo) -> QWidget:
        if info.choices is not None:
            w = QComboBox()
            for c in info.choices:
                w.addItem(_text(c))
            w.setCurrentIndex(list(info.choices).index(info.default))
            w.currentIndexChanged.connect(self._mark_changed)
        elif info.type is bool:
            w = QCheckBox()
            w.setChecked(bool(info.default))
            w.toggled.connect(self._mark_changed)
        elif info.type is int:
            w = QSpinBox()
            w.setRange(-INT_LIMIT, INT_LIMIT)
            w.setValue(int(info.default))
            w.valueChanged.connect(self._mark_changed)
        else:
            w = QLineEdit(_text(info.default))
            w.textChanged.connect(self._mark_changed)
        return w

    # -- values -----------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return list(self._infos)

    def editor(self, name: str) -> QWidget:
        return self._editors[name]

    def _value(self, name: str) -> Any:
        w = self._editors[name]
        if isinstance(w, QComboBox):
            return self._infos[name].choices[w.currentIndex()]
        if isinstance(w, QCheckBox):
            return w.isChecked()
        if isinstance(w, QSpinBox):
            return w.value()
        return w.text()

    def values(self) -> dict[str, Any]:
        """name -> value (text for floats, strings and tuples), for ``make_config``."""
        return {name: self._value(name) for name in self._infos}

    def changed_values(self) -> dict[str, Any]:
        """Only the entries that differ from the defaults."""
        return {n: v for n, v in self.values().items() if not self._is_default(n, v)}

    def _is_default(self, name: str, value: Any) -> bool:
        default = self._infos[name].default
        if isinstance(value, str) and not isinstance(default, str):
            return value.replace(" ", "") == _text(default).replace(" ", "")
        return value == default

    def set_values(self, values: dict[str, Any]) -> None:
        """Show ``values`` (e.g. a loaded model's config); unknown names are ignored."""
        for name, value in values.items():
            w = self._editors.get(name)
            if w is None:
                continue
            if isinstance(w, QComboBox):
                choices = list(self._infos[name].choices)
                value = tuple(value) if isinstance(value, list) else value
                if value in choices:
                    w.setCurrentIndex(choices.index(value))
            elif isinstance(w, QCheckBox):
                w.setChecked(bool(value))
            elif isinstance(w, QSpinBox):
                w.setValue(int(value))
            else:
                w.setText(_text(value))
        self._mark_changed()

    def reset(self) -> None:
        self.set_values({n: i.default for n, i in self._infos.items()})

    def _mark_changed(self, *_: Any) -> None:
        for name, label in self._labels.items():
            font = label.font()
            font.setBold(not self._is_default(name, self._value(name)))
            label.setFont(font)
