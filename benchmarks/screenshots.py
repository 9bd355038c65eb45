"""Retake the README screenshots of the plugin's docks under Xvfb.

Both modes open napari's default window at ``SIZE``, load the plugin's sample data (what
*File > Open Sample > Hippocampus MRI* does: the bundled volume, its 3 annotated slices as the
``labels`` layer and the hidden ``ground truth``) and open the training and review docks
from the plugin's widget contributions (what *Plugins > Semi-supervised segmentation* does),
tabified so neither is squashed, the right dock area widened to the training dock's content.

``--training`` (``docs/images/training_dock.png``): shows slice ``FALLBACK_SLICE`` (unlabeled,
the hippocampus visible), sets the training dock to ``--method`` (dfcps), a budget of
``--minutes`` (0.8, i.e. 48 s of wall-clock time), patch 64, CPU and the dock's default
preview interval (15 s), clicks *Train* (the ``interpolation`` layer of the labeled slices
appears at once, before the first iteration), waits for the end of the run and saves the
window with the training tab in front: loss curve, progress, status, the live ``preview``
layer of the slice on screen (filled) and the ``interpolation`` layer moved on top, selected
and drawn as opaque outlines (contour 1) so both stay readable. The ground truth stays
hidden; the run's checkpoint folder is deleted afterwards.

Default (review, no training here): loads a saved run directory through the training dock's
load-model path, predicts the volume, jumps to the next slice to review (falling back to
``FALLBACK_SLICE`` when the ranking lands on an edge slice with little anatomy) and saves
``docs/images/review_layers.png`` and ``docs/images/confidence.png``.

Run headless::

    xvfb-run -a -s "-screen 0 1600x1100x24" python benchmarks/screenshots.py --training
    xvfb-run -a -s "-screen 0 1600x1100x24" python benchmarks/screenshots.py --model out/demo_run
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1500, 1000)
PLUGIN = "napari-semiseg"
FALLBACK_SLICE = 13  # unlabeled middle slice where the hippocampus is visible
MIN_FOREGROUND = 20  # pixels of predicted foreground below which a slice counts as an edge
IMAGE = "hippocampus_003"  # the sample volume's layer name


class Window:
    """A napari viewer with the sample data and both plugin docks (training in front)."""

    def __init__(self) -> None:
        import napari
        from napari.settings import get_settings
        from qtpy.QtWidgets import QApplication

        get_settings().application.gui_notification_level = "none"
        self.app = QApplication.instance() or QApplication([])
        self.viewer = viewer = napari.Viewer(title="napari-semiseg")
        viewer.window.resize(*SIZE)
        viewer.open_sample(PLUGIN, "hippocampus")
        self.train_dock, self.train = viewer.window.add_plugin_dock_widget(PLUGIN, "Training")
        self.review_dock, self.review = viewer.window.add_plugin_dock_widget(
            PLUGIN, "Review and correct", tabify=True
        )
        self.train.device_combo.setCurrentText("cpu")
        self.pump(0.5)
        self.fit_docks()

    def fit_docks(self) -> None:
        """Widen the right dock area to the training dock's content (no horizontal scroll)."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QScrollArea

        scroll = self.train.findChild(QScrollArea)
        content = scroll.widget().minimumSizeHint().width()
        bar = scroll.verticalScrollBar().sizeHint().width()
        frame = self.train_dock.width() - self.train.width()
        need = content + bar + frame + 8
        window = self.viewer.window._qt_window
        window.resizeDocks([self.train_dock], [need], Qt.Orientation.Horizontal)
        self.pump(0.5)

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

    def screenshot(self, path: Path) -> None:
        self.pump(1)
        self.no_toasts()
        self.viewer.screenshot(str(path), canvas_only=False, flash=False)
        print("wrote", path)

    def close(self) -> None:
        self.train.shutdown()
        self.review.shutdown()
        self.viewer.close()


def training_screenshot(win: Window, out: Path, method: str, minutes: float, index: int) -> None:
    from napari_semiseg._layers import go_to_slice

    viewer, train = win.viewer, win.train
    go_to_slice(viewer, viewer.layers[IMAGE], 0, index)  # the slice the preview predicts
    win.train_dock.raise_()
    train.method_combo.setCurrentText(method)
    train.budget_unit.setCurrentIndex(1)  # minutes
    train.minutes.setValue(minutes)
    train.patch_size.setValue(64)
    win.pump(0.5)
    every = train.preview_seconds.value()
    print(f"training {method} for {minutes} min, patch 64, preview every {every:g} s")
    started = time.monotonic()
    train.train_button.click()
    if train.worker is None:
        raise SystemExit(f"training did not start: {train.status.text()}")
    while "interpolation" not in viewer.layers and train.worker is not None:
        win.pump(0.05)
    print(f"interpolation layer after {time.monotonic() - started:.1f} s")
    while train.worker is not None:
        win.pump(0.2)
    print(f"run over after {time.monotonic() - started:.0f} s | {train.status.text()}")
    preview = viewer.layers[f"{IMAGE} preview"]
    print(
        "preview of slice",
        preview.metadata["preview_index"],
        "at iteration",
        preview.metadata["preview_iteration"],
    )
    # the interpolation as opaque outlines over the translucent filled preview; selected,
    # so the layer controls show how it is drawn
    layers = viewer.layers
    interpolation = layers["interpolation"]
    interpolation.contour, interpolation.opacity = 1, 1.0
    layers.move(layers.index(interpolation), len(layers))
    layers.selection.active = interpolation
    viewer.reset_view()
    win.screenshot(out / "training_dock.png")
    run_dir = train.session.run_dir
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)


def review_screenshots(win: Window, out: Path, model: str, forced: int | None) -> None:
    from napari_semiseg._layers import go_to_slice

    viewer, train, review = win.viewer, win.train, win.review
    train.labels_combo.set_layer("labels")
    bundle = train.load_model_from(model)
    if bundle is None:
        raise SystemExit(f"could not load a model from {model}")
    print("loaded", bundle.method.name, "iteration", bundle.iteration)
    win.review_dock.raise_()
    win.pump(0.5)
    if not review.predict():
        raise SystemExit("prediction did not start")
    while review.worker is not None:
        win.pump(0.2)
    image = viewer.layers[IMAGE]
    pred = np.asarray(viewer.layers[f"{IMAGE} prediction"].data)
    fg = (pred > 0).sum(axis=(1, 2))
    print("predicted foreground per slice", fg.tolist())

    index = review.next_slice()
    print("next slice to review:", index, "|", review.review_info.text())
    if forced is not None or index is None or fg[index] < MIN_FOREGROUND:
        index = FALLBACK_SLICE if forced is None else forced
        go_to_slice(viewer, image, bundle.axis, index)
        review.accept_button.setText(f"Accept slice {index}")
        print("showing slice", index, "instead")

    for name in (f"{IMAGE} preview", "labels", "ground truth"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers[f"{IMAGE} prediction"]
    viewer.reset_view()
    win.screenshot(out / "review_layers.png")

    for layer in viewer.layers:
        layer.visible = layer.name in (IMAGE, f"{IMAGE} confidence")
    viewer.layers.selection.active = viewer.layers[f"{IMAGE} confidence"]
    win.screenshot(out / "confidence.png")
    print("slice", index, "screenshots written to", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--training",
        action="store_true",
        help="train in the dock and save training_dock.png (instead of the review images)",
    )
    parser.add_argument("--method", default="dfcps", help="--training: the method")
    parser.add_argument(
        "--minutes", type=float, default=0.8, help="--training: wall-clock budget in minutes"
    )
    parser.add_argument("--model", default="out/demo_run", help="saved run directory (review)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder")
    parser.add_argument("--slice", type=int, default=None, help="force this slice index")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    win = Window()
    try:
        if args.training:
            index = FALLBACK_SLICE if args.slice is None else args.slice
            training_screenshot(win, out, args.method, args.minutes, index)
        else:
            review_screenshots(win, out, args.model, args.slice)
    finally:
        win.close()


if __name__ == "__main__":
    main()
