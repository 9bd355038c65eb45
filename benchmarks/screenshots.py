"""Retake the README screenshots of the review dock with a trained model (no training here).

Opens the plugin's sample data in a napari viewer, adds the training and review docks, loads a
saved run directory through the training dock's load-model path, predicts the volume, jumps to
the next slice to review (falling back to a middle unlabeled slice when the ranking lands on
an edge slice with little anatomy) and saves ``docs/images/review_layers.png`` and
``docs/images/confidence.png``.

Run headless::

    xvfb-run -a -s "-screen 0 1600x1100x24" python benchmarks/screenshots.py --model out/demo_run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SIZE = (1500, 1000)
FALLBACK_SLICE = 13  # unlabeled middle slice where the hippocampus is visible
MIN_FOREGROUND = 20  # pixels of predicted foreground below which a slice counts as an edge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="out/demo_run", help="saved run directory")
    parser.add_argument("--out", default=str(ROOT / "docs" / "images"), help="output folder")
    parser.add_argument("--slice", type=int, default=None, help="force this slice index")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import napari
    from napari.settings import get_settings
    from qtpy.QtWidgets import QApplication

    from napari_semiseg._layers import go_to_slice
    from napari_semiseg._widget import ReviewDock, TrainingDock

    get_settings().application.gui_notification_level = "none"
    app = QApplication.instance() or QApplication([])

    def pump(seconds: float = 0.3) -> None:
        end = time.time() + seconds
        while time.time() < end:
            app.processEvents()
            time.sleep(0.01)

    def no_toasts() -> None:
        """Close notification toasts (e.g. napari's PyQt5 deprecation warning)."""
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()
        pump(0.5)

    viewer = napari.Viewer(title="napari-semiseg")
    viewer.window.resize(*SIZE)
    viewer.open_sample("napari-semiseg", "hippocampus")
    train = TrainingDock(viewer)
    viewer.window.add_dock_widget(train, name="Training", area="right")
    train.labels_combo.set_layer("labels")
    train.device_combo.setCurrentText("cpu")
    pump(0.5)
    bundle = train.load_model_from(args.model)
    if bundle is None:
        raise SystemExit(f"could not load a model from {args.model}")
    print("loaded", bundle.method.name, "iteration", bundle.iteration)

    review = ReviewDock(viewer)
    viewer.window.add_dock_widget(review, name="Review and correct", area="right", tabify=True)
    pump(0.5)
    if not review.predict():
        raise SystemExit("prediction did not start")
    while review.worker is not None:
        pump(0.2)
    image = viewer.layers["hippocampus_003"]
    pred = np.asarray(viewer.layers["hippocampus_003 prediction"].data)
    fg = (pred > 0).sum(axis=(1, 2))
    print("predicted foreground per slice", fg.tolist())

    index = review.next_slice()
    print("next slice to review:", index, "|", review.review_info.text())
    if args.slice is not None or index is None or fg[index] < MIN_FOREGROUND:
        index = FALLBACK_SLICE if args.slice is None else args.slice
        go_to_slice(viewer, image, bundle.axis, index)
        review.accept_button.setText(f"Accept slice {index}")
        print("showing slice", index, "instead")

    for name in ("hippocampus_003 preview", "labels", "ground truth"):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    viewer.layers.selection.active = viewer.layers["hippocampus_003 prediction"]
    viewer.reset_view()
    pump(1)
    no_toasts()
    out = Path(args.out)
    viewer.screenshot(str(out / "review_layers.png"), canvas_only=False, flash=False)

    for layer in viewer.layers:
        layer.visible = layer.name in ("hippocampus_003", "hippocampus_003 confidence")
    viewer.layers.selection.active = viewer.layers["hippocampus_003 confidence"]
    pump(1)
    no_toasts()
    viewer.screenshot(str(out / "confidence.png"), canvas_only=False, flash=False)
    print("slice", index, "screenshots written to", out)
    train.shutdown()
    review.shutdown()
    viewer.close()


if __name__ == "__main__":
    main()
