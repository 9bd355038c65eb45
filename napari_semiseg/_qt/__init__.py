"""Everything that imports Qt or napari: the plugin's dock widgets, as contributed in
``napari.yaml``. The rest of ``napari_semiseg`` (session, IO, CLI, training process) and all of
``src_models`` never import Qt (``tests/plugin/test_plugin_process.py`` checks the training
process).

- :class:`~napari_semiseg._qt.training_dock.TrainingDock`: data, method, budget, train / pause /
  resume / stop, progress, loss curve, live preview, save / load model.
- :class:`~napari_semiseg._qt.review_dock.ReviewDock`: predict the volume, next slice to review,
  accept a corrected slice, continue training, export.

Both docks of a viewer share one Qt-free :class:`~napari_semiseg._session.Session`
(:func:`~napari_semiseg._session.session_for`). The pieces live in their own modules:
``training_settings.py`` (the training dock's Data, Method and Budget tabs), ``runs_tab.py``
(its Runs tab), ``map_layers.py`` (the names, colours and meanings of the review dock's map
layers), ``param_form.py`` (forms generated from a method's Config), ``loss_plot.py`` (the
live loss curve), ``layers.py`` (layer pickers, layers updated in place, slice navigation),
``widgets.py`` (small widgets and messages both docks use).
"""

from napari_semiseg._qt.review_dock import ReviewDock
from napari_semiseg._qt.training_dock import TrainingDock
from napari_semiseg._session import Session, session_for

__all__ = ["ReviewDock", "Session", "TrainingDock", "session_for"]
