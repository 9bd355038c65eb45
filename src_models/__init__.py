"""Qt-free core of napari-semiseg: data, augmentation, networks, methods, training, inference.

Imports torch, numpy, scipy and scikit-image; never napari or Qt.
"""

from src_models.errors import SemisegError

__version__ = "0.1.0"
__all__ = ["SemisegError", "__version__"]
