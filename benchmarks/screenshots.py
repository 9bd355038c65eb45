"""Retake the README screenshots of the plugin: the first screen a user meets.

For each window size (``--sizes``, default 1280x800 and 1920x1080) this opens napari's
window at that size, loads the plugin's sample data (what *File > Open Sample > Hippocampus
MRI* does: the bundled volume, its 3 annotated slices as the ``labels`` layer and the hidden
``ground truth``) and opens the **Training** and **Review and correct** docks from the
plugin's widget contributions exactly as *Plugins > Semi-supervised segmentation* does (no
tabs, no resizing by this script: what the plugin itself does with the dock column is what
is shown). Then, as a user would:

1. shows unlabeled slice ``SLICE``, picks ``--method`` (dfcps), a budget of ``--minutes``,
   patch 64, CPU, a preview every ``PREVIEW_SECONDS``, clicks **Train** and saves
   ``first_screen_<W>x<H>_training.png`` once the run is past half its budget and a live
   preview of the slice on screen has arrived;
2. waits for the end, clicks **Predict volume** and **Next slice**, and saves
   ``first_screen_<W>x<H>_review.png``.

Each image must show the Run section (Train / Pause / Stop), the progress bar and the loss
curve without scrolling; the script prints the dock sizes and checks that those widgets are
entirely visible. Run folders go to a temporary folder, deleted afterwards.

Run headless::

    xvfb-run -a -s "-screen 0 1920x1200x24" python benchmarks/screenshots.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-semiseg"
#: napari's window on a 1280 x 800 screen (issue 22)
DEFAULT_WINDOW = "1089x639"
SLICE = 13  # unlabeled middle slice where the hippocampus is visible
IMAGE = "hippocampus_003"  # the sample volume's layer name
PREVIEW_SECONDS = 10.0


class Window:
    """A napari viewer at ``size`` with the sample data and both plugin docks."""

    def __init__(self, size: tuple[int, int] | None) -> None:
        import napari
        from napari.settings import get_settings
        from qtpy.QtWidgets import QApplication

        get_settings().application.gui_notification_level = "none"
        self.app = QApplication.instance() or QApplication([])
        self.viewer = viewer = napari.Viewer(title="napari-semiseg")
        if size is not None:  # else napari's own default for the screen
            viewer.window.resize(*size)
        viewer.open_sample(PLUGIN, "hippocampus")
        self.train_dock, self.train = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
        self.review_dock, self.review = viewer.window.add_plugin_dock_widget(
            PLUGIN, "Review and correct"
        )
        self.train.device_combo.setCurrentText("cpu")
        self.pump(1.0)

    def pump(self, seconds: float = 0.3) -> None:
        end = time.time() + seconds
        while time.time() < end:
            self.app.processEvents()
            time.sleep(0.01)

    def no_toasts(self) -> None:
        """Close notification toasts (e.g. napari's PyQt5 deprecation warning)."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in self.viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
        self.pump(0.5)

    def check_visible(self) -> dict[str, str]:
        """Size of each dock and whether the Run controls, progress and loss curve are
        entirely on screen (not scrolled away or cut by the dock)."""
        t = self.train
        sizes = {
            "window": _size(self.viewer.window._qt_window),
            "training dock": _size(self.train_dock),
            "review dock": _size(self.review_dock),
        }
        r = self.review
        for name, w in (
            ("Train", t.train_button),
            ("Stop", t.stop_button),
            ("progress", t.progress),
            ("loss curve", t.loss_plot),
            ("Predict volume", r.predict_button),
            ("Next slice", r.next_button),
            ("Accept slice", r.accept_button),
            ("only what I painted", r.region_check),
            ("Continue training", r.continue_button),
            ("Export", r.export_button),
            ("why this slice", r.review_info),
        ):
            seen = w.visibleRegion().boundingRect()
            whole = seen.width() == w.width() and seen.height() == w.height()
            sizes[name] = f"{_size(w)} {'visible' if whole else 'CUT OFF'}"
        return sizes

    def screenshot(self, path: Path) -> None:
        self.pump(1)
        self.no_toasts()
        for key, value in self.check_visible().items():
            print(f"  {key}: {value}")
        self.viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path)

    def close(self) -> None:
        self.train.shutdown()
        self.review.shutdown()
        self.viewer.close()


def _size(w) -> str:
    return f"{w.width()}x{w.height()}"


def first_screen(size: tuple[int, int] | None, out: Path, method: str, minutes: float) -> None:
    from napari_semiseg._qt.layers import go_to_slice

    win = Window(size)
    qt_window = win.viewer.window._qt_window
    tag = f"{qt_window.width()}x{qt_window.height()}" if size is None else f"{size[0]}x{size[1]}"
    print(f"window {qt_window.width()}x{qt_window.height()}")
    try:
        viewer, train, review = win.viewer, win.train, win.review
        go_to_slice(viewer, viewer.layers[IMAGE], 0, SLICE)
        train.method_combo.setCurrentText(method)
        train.budget_unit.setCurrentIndex(1)  # minutes
        train.minutes.setValue(minutes)
        train.patch_size.setValue(64)
        train.preview_seconds.setValue(PREVIEW_SECONDS)
        win.pump(0.5)
        print(f"{tag}: training {method} for {minutes} min, patch 64")
        started = time.monotonic()
        train.train_button.click()
        if train.worker is None:
            raise SystemExit(f"training did not start: {train.status.text()}")
        preview = f"{IMAGE} preview"
        while train.worker is not None and (
            time.monotonic() - started < minutes * 30
            or viewer.layers[preview].metadata.get("preview_iteration", 0) == 0
        ):
            win.pump(0.2)
        win.screenshot(out / f"first_screen_{tag}_training.png")
        while train.worker is not None:
            win.pump(0.2)
        print(f"run over after {time.monotonic() - started:.0f} s | {train.status.text()}")
        if not review.predict():
            raise SystemExit("prediction did not start")
        while review.worker is not None or review.session.busy:  # layers added in turns
            win.pump(0.2)
        index = review.next_slice()
        print("next slice:", index, "|", review.review_info.text())
        win.screenshot(out / f"first_screen_{tag}_review.png")
    finally:
        win.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="default,1920x1080",
        help="window sizes WxH,...; 'default': napari's default window on a 1280x800 screen, "
        "1089x639 (xvfb has no window manager to hold a window within the screen, so the "
        "size is set)",
    )
    parser.add_argument("--method", default="dfcps", help="the method trained in the dock")
    parser.add_argument("--minutes", type=float, default=0.8, help="wall-clock budget")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = tempfile.mkdtemp(prefix="semiseg-screenshots-")
    os.environ["NAPARI_SEMISEG_RUNS"] = runs  # never the user's runs folder
    try:
        for text in args.sizes.split(","):
            if text == "default":
                text = DEFAULT_WINDOW
            w, h = (int(v) for v in text.lower().split("x"))
            first_screen((w, h), out, args.method, args.minutes)
    finally:
        shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    main()
