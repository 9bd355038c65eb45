"""The plugin's dock widgets, as contributed in ``napari.yaml``.

- :class:`~napari_semiseg._training_dock.TrainingDock`: data, method, budget, train / pause /
  resume / stop, progress, loss curve, live preview, save / load model.
- :class:`~napari_semiseg._review_dock.ReviewDock`: predict the volume, next slice to review,
  accept a corrected slice, continue training, export.

Both docks of a viewer share one Qt-free :class:`~napari_semiseg._session.Session`
(:func:`~napari_semiseg._session.session_for`). The pieces live in their own modules:
``_param_form.py`` (forms generated from a method's Config), ``_loss_plot.py`` (the live loss
curve), ``_layers.py`` (layer pickers, layers updated in place, slice navigation).
"""

from napari_semiseg._review_dock import ReviewDock
from napari_semiseg._session import Session, session_for
from napari_semiseg._training_dock import TrainingDock

__all__ = ["ReviewDock", "Session", "TrainingDock", "session_for"]
