"""The training dock's Runs tab: the folder the run folders go to (remembered), how many runs
are kept, the runs of that folder newest first (method, time, iterations; the current model's
marked), and making an earlier run's model the current one again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QWidget,
)

from napari_semiseg._qt.training_settings import FormTab
from napari_semiseg._qt.widgets import wrapping_label
from napari_semiseg._runs import RunInfo, save_settings
from napari_semiseg._session import Session
from src_models.training.checkpoint import ModelBundle


class RunsTab(FormTab):
    """The runs of ``session``; ``use_run(path)`` makes a run folder's model the current one
    (the training dock's ``load_model_from``, which says what went wrong)."""

    def __init__(
        self,
        session: Session,
        use_run: Callable[[Path], ModelBundle | None],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.session = session
        self._use_run = use_run
        rform = self.form
        self.runs_label = wrapping_label()
        self.runs_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.runs_button = QPushButton("Change folder…")
        self.runs_button.setToolTip("Pick the folder the run folders go to (remembered)")
        self.runs_button.clicked.connect(self._runs_dialog)
        rform.addRow(self.runs_label)
        self.keep_runs = QSpinBox()
        self.keep_runs.setRange(1, 1000)
        self.keep_runs.setValue(self.session.keep_runs)
        self.keep_runs.setFixedWidth(80)
        self.keep_runs.setToolTip(
            "Run folders kept: when a run starts the oldest beyond this many are deleted "
            "(never the current model's, nor one you saved a model into)"
        )
        self.keep_runs.valueChanged.connect(self._on_keep_runs)
        rform.addRow("Runs kept", self.keep_runs)
        self.runs_list = QListWidget()
        self.runs_list.setMinimumHeight(60)
        self.runs_list.setToolTip("Earlier runs of this folder: double-click to use one")
        self.runs_list.itemDoubleClicked.connect(lambda _item: self.use_selected_run())
        rform.addRow(self.runs_list)
        self.use_run_button = QPushButton("Use this model")
        self.use_run_button.setToolTip(
            "Make the selected run's model the current one (predict, continue training, save)"
        )
        self.use_run_button.clicked.connect(lambda: self.use_selected_run())
        row = QHBoxLayout()
        for b in (self.use_run_button, self.runs_button):
            b.setMinimumWidth(40)
            b.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
            row.addWidget(b)
        rform.addRow(row)

    def refresh(self) -> None:
        """Show the runs folder and its runs (newest first; the current model's marked)."""
        folder = self.session.runs_folder()
        self.runs_label.setText(
            f"Runs are saved in {folder}. The last {self.session.keep_runs} are kept; "
            "<b>Save model…</b> keeps one for good."
        )
        self.runs_list.clear()
        current = self.session.run_dir.resolve() if self.session.run_dir else None
        for run in self.session.runs():
            text = run.label()
            is_current = current is not None and run.path.resolve() == current
            if is_current:  # said first, so a narrow dock never cuts it off
                text = f"▶ (current) {text}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, str(run.path))
            item.setToolTip(str(run.path))
            if run.iteration is None:
                item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEnabled)
            self.runs_list.addItem(item)
            if is_current:
                self.runs_list.setCurrentItem(item)

    def use_selected_run(self, run: RunInfo | Path | str | None = None) -> ModelBundle | None:
        """Make a run's model the current one (the selected row by default)."""
        if run is None:
            item = self.runs_list.currentItem()
            if item is None:
                show_info("pick a run in the list first")
                return None
            run = item.data(Qt.ItemDataRole.UserRole)
        path = run.path if isinstance(run, RunInfo) else Path(run)
        return self._use_run(path)

    def set_runs_folder(self, folder: str | Path, remember: bool = True) -> None:
        self.session.run_root = Path(folder)
        if remember:
            try:
                save_settings({"run_root": str(folder)})
            except OSError as exc:
                show_warning(f"the runs folder is used but not remembered: {exc}")
        self.refresh()

    def _on_keep_runs(self, value: int) -> None:
        self.session.keep_runs = int(value)
        self.refresh()

    def _runs_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(
            self, "Folder for the run folders", str(self.session.runs_folder())
        )
        if folder:
            self.set_runs_folder(folder)
