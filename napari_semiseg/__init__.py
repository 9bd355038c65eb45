"""napari-semiseg: semi-supervised segmentation of 3D volumes from a few labeled slices.

The plugin widgets import napari/Qt lazily (see ``napari.yaml``); ``napari_semiseg.io`` and
``napari_semiseg.cli`` work without Qt.
"""

__version__ = "0.1.0"
