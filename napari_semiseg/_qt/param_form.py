"""A form generated from a method's ``Config`` dataclass (never written by hand).

One row per :class:`~src_models.methods.base.ParamInfo`: a combo box for fields with
``choices``, a check box for booleans, a spin box for integers and a line edit for floats
(kept as text so ``1e-4`` stays readable), strings and tuples (``16, 32, 64``). Rows are
labelled in words (``lr`` -> "Learning rate"; the identifier and the field's help are the
tooltip); a value 0 that means "the method's default" (``lr 0: 3e-3 adamw, 0.01 sgd``) shows
as an empty field saying so instead of a bare 0. A changed value is shown in bold, and
edits survive switching to another method and back. :meth:`ParamForm.values` returns what
:func:`~src_models.methods.base.make_config` accepts, so validation and error messages come
from the core.

Why not magicgui (a napari dependency) building the widgets from the typed configs: its
widgets cannot show "0 = the method's default: ..." as an empty field with that meaning,
parse tuple fields such as ``channels`` from text, or keep one method's edits while another
is shown; each would take a wrapper as large as this module.
"""

from __future__ import annotations

import re
from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from src_models.methods.base import ParamInfo, config_params, param_words

INT_LIMIT = 2**31 - 1

#: "0: 3e-3 adamw, 0.01 sgd" / "0 = the variant's default: ..." in a field's help
_ZERO_MEANS = re.compile(r"\b0(?:\.0)?\s*(?::|=)\s*([^;]+)")


def label_for(name: str) -> str:
    """A parameter's row label in words: ``weight_decay`` -> "Weight decay" (the core's
    :func:`~src_models.methods.base.param_words`)."""
    text = param_words(name)
    return text[:1].upper() + text[1:]


def zero_meaning(info: ParamInfo) -> str:
    """What 0 means for a numeric field whose default is 0, from its help ("" if nothing)."""
    if info.type not in (int, float) or info.choices is not None or info.default != 0:
        return ""
    match = _ZERO_MEANS.search(info.help or "")
    if not match:
        return ""
    text = match.group(1).strip()
    # drop an unmatched closing bracket of "(0: ...)"
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1].rstrip()
    return text


def _text(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ", ".join(str(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _is_zero(value: Any) -> bool:
    try:
        return float(value) == 0
    except (TypeError, ValueError):
        return False


class ParamForm(QWidget):
    """Editable hyperparameters of one method; rebuilt by :meth:`set_config_class`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._infos: dict[str, ParamInfo] = {}
        self._editors: dict[str, QWidget] = {}
        self._labels: dict[str, QLabel] = {}
        self._config_cls: type | None = None
        #: edited values per config class, restored when the user comes back to a method
        self._edits: dict[type, dict[str, Any]] = {}
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        self._form_host = QWidget()
        self._form = QFormLayout(self._form_host)
        self._form.setContentsMargins(0, 0, 0, 0)
        self._form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        outer.addWidget(self._form_host)
        self.reset_button = QPushButton("Reset to defaults")
        self.reset_button.clicked.connect(self.reset)
        outer.addWidget(self.reset_button)

    # -- building ---------------------------------------------------------------------------
    def set_config_class(self, config_cls: type) -> None:
        if self._config_cls is not None and self._config_cls is not config_cls:
            self._edits[self._config_cls] = self.changed_values()
        while self._form.rowCount():
            self._form.removeRow(0)
        self._config_cls = config_cls
        self._infos = {p.name: p for p in config_params(config_cls)}
        self._editors, self._labels = {}, {}
        for info in self._infos.values():
            editor = self._make_editor(info)
            tip = f"{info.name}: {info.help}"
            editor.setToolTip(tip)
            editor.setObjectName(f"param_{info.name}")
            label = QLabel(label_for(info.name))
            label.setToolTip(tip)
            label.setWordWrap(True)
            self._editors[info.name] = editor
            self._labels[info.name] = label
            self._form.addRow(label, editor)
        if self._edits.get(config_cls):
            self.set_values(self._edits[config_cls])
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
            w.setMinimumWidth(60)
            w.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            meaning = zero_meaning(info)
            if meaning:  # 0 shows as what it means
                w.setMinimum(0)
                w.setSpecialValueText(f"auto: {meaning}")
            w.setValue(int(info.default))
            w.valueChanged.connect(self._mark_changed)
        else:
            meaning = zero_meaning(info)
            w = QLineEdit("" if meaning else _text(info.default))
            if meaning:  # empty = 0 = what it means
                w.setPlaceholderText(f"auto: {meaning}")
            w.setMinimumWidth(60)
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
        if not w.text().strip() and zero_meaning(self._infos[name]):
            return "0"
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
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                try:
                    return float(value) == float(default)
                except ValueError:
                    return False
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
            elif zero_meaning(self._infos[name]) and _is_zero(value):
                w.setText("")
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
