"""Layer helpers shared by the docks: layer pickers that follow the viewer, layers added or
updated in place with the image's geometry, and slice navigation in data coordinates.

Slices are counted in the image's data coordinates (what the core works on); the viewer
works in world coordinates (scale/translate from the NIfTI affine), so conversions go through
``Layer.world_to_data`` / ``Layer.data_to_world``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox

from src_models.errors import SemisegError


class LayerCombo(QComboBox):
    """A combo box listing the viewer's layers of one type, kept in sync with the viewer."""

    layerChanged = Signal(object)  # noqa: N815  (Qt naming)

    def __init__(self, viewer, layer_type: type[Layer], parent=None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.layer_type = layer_type
        self._connected: list[Layer] = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLength)
        self.setMinimumContentsLength(12)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self.currentIndexChanged.connect(lambda _i: self.layerChanged.emit(self.layer()))
        self._refresh()

    def disconnect_viewer(self) -> None:
        self.viewer.layers.events.inserted.disconnect(self._refresh)
        self.viewer.layers.events.removed.disconnect(self._refresh)
        for layer in self._connected:
            layer.events.name.disconnect(self._refresh)
        self._connected = []

    def _layers(self) -> list[Layer]:
        return [ly for ly in self.viewer.layers if isinstance(ly, self.layer_type)]

    def _refresh(self, *_: Any) -> None:
        current = self.currentText()
        layers = self._layers()
        for layer in self._connected:
            layer.events.name.disconnect(self._refresh)
        self._connected = layers
        for layer in layers:
            layer.events.name.connect(self._refresh)
        names = [layer.name for layer in layers]
        self.blockSignals(True)
        self.clear()
        self.addItems(names)
        if current in names:
            self.setCurrentIndex(names.index(current))
        elif layers:
            self.setCurrentIndex(self._default_index(layers))
        self.blockSignals(False)
        if self.currentText() != current:
            self.layerChanged.emit(self.layer())

    @staticmethod
    def _default_index(layers: list[Layer]) -> int:
        """Prefer visible layers that are not our own outputs (prediction, preview, maps)."""
        for wanted in (lambda ly: ly.visible, lambda ly: True):
            for i, layer in enumerate(layers):
                if not layer.metadata.get("semiseg_output") and wanted(layer):
                    return i
        return 0

    def layer(self) -> Layer | None:
        """The chosen layer. Layers are matched by name (unique in a viewer): napari hands
        plugins proxies of the viewer, so the same layer can come as different objects."""
        name = self.currentText()
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        return layer if isinstance(layer, self.layer_type) else None

    def set_layer(self, layer: Layer | str | None) -> None:
        if layer is None:
            return
        index = self.findText(layer if isinstance(layer, str) else layer.name)
        if index >= 0:
            self.setCurrentIndex(index)


# -- geometry -----------------------------------------------------------------------------
def image_data(layer: Image) -> Any:
    """Full-resolution data of an image layer (level 0 when multiscale)."""
    return layer.data[0] if layer.multiscale else layer.data


def data_note(layer: Image, doing: str = "training") -> str:
    """What is read of an image layer, for the status line ("" for an in-memory volume): the
    full-resolution level of a multiscale layer, and whether a lazy (dask, zarr, memory-mapped)
    volume is read slab by slab instead of loaded whole."""
    from napari_semiseg._layer_data import lazy_image

    data = image_data(layer)
    notes = []
    if layer.multiscale:
        notes.append(
            f"multiscale layer {layer.name!r}: {doing} uses its full-resolution level "
            f"(level 0 of {len(layer.data)}, shape {tuple(data.shape)})"
        )
    if lazy_image(data, bool(layer.rgb)) is not None:
        notes.append(
            f"{type(data).__name__} data read slab by slab (never loaded whole)"
            + ("; outputs go to zarr stores in the run folder" if doing == "prediction" else "")
        )
    return "; ".join(notes)


def spatial_shape(layer: Image) -> tuple[int, ...]:
    """The (Z, Y, X) shape of an image layer (RGB channels last / channels first removed)."""
    shape = tuple(image_data(layer).shape)
    return shape[:-1] if layer.rgb else shape[-3:]


def geometry(layer: Layer) -> dict[str, Any]:
    """scale/translate of the last three (spatial) axes and the source metadata, for the
    layers derived from ``layer`` (so they overlay it voxel for voxel)."""
    meta = {k: v for k, v in layer.metadata.items() if k in ("affine", "image_meta", "source")}
    return {
        "scale": tuple(np.asarray(layer.scale)[-3:]),
        "translate": tuple(np.asarray(layer.translate)[-3:]),
        "metadata": meta,
    }


def add_or_update(
    viewer, name: str, data: np.ndarray, kind: str, source: Layer, **kwargs: Any
) -> Layer:
    """Replace the data of layer ``name`` (same type) or add it; never piles up copies.

    ``kwargs`` (colormap, opacity, ...) apply only when the layer is created, so the user's
    display changes survive a re-run; contrast limits are refreshed every time."""
    geo = geometry(source)
    cls = Labels if kind == "labels" else Image
    if name in viewer.layers and isinstance(viewer.layers[name], cls):
        layer = viewer.layers[name]
        layer.scale, layer.translate = geo["scale"], geo["translate"]
        layer.data = data
        if "contrast_limits" in kwargs and kind == "image":
            layer.contrast_limits = kwargs["contrast_limits"]
        return layer
    if name in viewer.layers:
        viewer.layers.remove(name)
    geo["metadata"]["semiseg_output"] = True
    add = viewer.add_labels if kind == "labels" else viewer.add_image
    return add(data, name=name, **geo, **kwargs)


def current_index(viewer, layer: Layer, axis: int) -> int:
    """The slice index along data ``axis`` of ``layer`` that the viewer shows."""
    data_point = layer.world_to_data(viewer.dims.point)
    value = float(np.asarray(data_point)[layer.ndim - 3 + axis])
    n = spatial_shape(layer)[axis] if isinstance(layer, Image) else layer.data.shape[-3 + axis]
    return int(min(max(round(value), 0), n - 1))


def go_to_slice(viewer, layer: Layer, axis: int, index: int) -> None:
    """Show slice ``index`` along data ``axis`` of ``layer``, with ``axis`` as the slider."""
    lead = layer.ndim - 3
    point = np.array(layer.world_to_data(viewer.dims.point), dtype=float)
    point[lead + axis] = index
    world = np.asarray(layer.data_to_world(point), dtype=float)
    world_axis = viewer.dims.ndim - 3 + axis
    if viewer.dims.ndisplay == 2 and world_axis in viewer.dims.displayed:
        rest = [a for a in viewer.dims.order if a != world_axis]
        viewer.dims.order = (*rest[:-2], world_axis, *rest[-2:])
    viewer.dims.set_point(world_axis, world[lead + axis])


def check_pair(image: Image | None, labels: Labels | None) -> tuple[int, ...]:
    """The spatial shape shared by the image and labels layers, or a SemisegError."""
    if image is None:
        raise SemisegError("no image layer: open a volume (File > Open) and pick it as Image")
    if labels is None:
        raise SemisegError(
            "no labels layer: add one (the 'new labels layer' button), paint a few slices and "
            "pick it as Labels"
        )
    shape = spatial_shape(image)
    if len(shape) != 3:
        raise SemisegError(
            f"image layer {image.name!r} has shape {image_data(image).shape}: a 3D volume "
            "(Z, Y, X) is needed"
        )
    if tuple(labels.data.shape) != shape:
        raise SemisegError(
            f"labels layer {labels.name!r} has shape {tuple(labels.data.shape)} but image "
            f"{image.name!r} has {shape}: pick the labels painted on this image"
        )
    return shape


# -- dock layout ----------------------------------------------------------------------------
#: least share of a shared dock column the review dock gets (it scrolls below its content)
REVIEW_MIN_SHARE = 0.3


def dock_of(widget) -> Any:
    """The QDockWidget holding ``widget`` (None when not docked)."""
    from qtpy.QtWidgets import QDockWidget

    w = widget.parentWidget() if widget is not None else None
    while w is not None and not isinstance(w, QDockWidget):
        w = w.parentWidget()
    return w


def balance_docks(training, review) -> bool:
    """Split a dock column shared by the training and review docks so that both work at
    once: napari gives the first dock of a column its minimum height (the training dock's
    Run section, ~430 px) and the rest to the next; the review dock gets what its content
    asks (at least ``REVIEW_MIN_SHARE`` of the column, it scrolls), the training dock the
    rest, so its loss curve grows. Returns whether it resized."""
    from qtpy.QtCore import Qt

    docks = [dock_of(training), dock_of(review)]
    if any(d is None or d.isFloating() or not d.isVisible() for d in docks):
        return False
    window = docks[0].parentWidget()
    if (
        window is None
        or not hasattr(window, "resizeDocks")
        or docks[1].parentWidget() is not window
    ):
        return False
    if window.dockWidgetArea(docks[0]) != window.dockWidgetArea(docks[1]):
        return False
    if docks[1] in window.tabifiedDockWidgets(docks[0]):
        return False
    if abs(docks[0].x() - docks[1].x()) > 4:  # side by side, not one column
        return False
    total = docks[0].height() + docks[1].height()
    frame = docks[1].height() - review.height()
    want = review.content_height() + frame
    train_min = training.minimumSizeHint().height() + docks[0].height() - training.height()
    # the dock keeps the minimum its content had when it was laid out (Qt caches it in the
    # dock's own layout): the content's present minimum, set explicitly, frees what the
    # folded settings no longer need
    docks[0].setMinimumHeight(train_min)
    review_h = max(min(want, total - train_min), int(REVIEW_MIN_SHARE * total))
    window.resizeDocks(docks, [total - review_h, review_h], Qt.Orientation.Vertical)
    return True
