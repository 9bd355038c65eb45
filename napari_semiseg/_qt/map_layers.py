"""How the review dock shows a prediction's maps as napari layers: which maps become layers,
their colour maps and opacity, their layer names and what each means (the meaning comes from
the method: ``Method.map_meaning``, the core's knowledge)."""

from __future__ import annotations

from src_models.errors import SemisegError
from src_models.methods.base import Method, get_method

#: how each kind of map is shown; anything not listed uses ``OTHER_MAP``
MAP_STYLE = {
    "confidence": {
        "colormap": "viridis",
        "opacity": 0.5,
        "contrast_limits": (0.0, 1.0),
        "visible": False,
    },
    "discrepancy": {"colormap": "magenta", "blending": "additive", "opacity": 0.6},
    "pseudo-labels": {"opacity": 0.5, "visible": False},
}
OTHER_MAP = {"colormap": "inferno", "blending": "additive", "opacity": 0.7, "visible": False}

#: map key (``Method.map_names``, ``pseudo-labels``) -> layer name after the image's; what
#: each map means comes from its method (``Method.map_meaning``, the core's knowledge)
MAP_TITLES = {
    "prediction": "prediction",
    "discrepancy_soft": "discrepancy (soft)",
    "confidence_1": "confidence net 1",
    "confidence_2": "confidence net 2",
    "confidence_a": "confidence student A",
    "confidence_b": "confidence student B",
}
PREDICTION_MEANING = "the predicted classes (bright colours); correct it here"


#: maps shown as layers, the only ones the plugin predicts (so a prediction adds a few
#: layers that each mean something); the per-network ones come from `semiseg predict --maps`
LAYER_MAPS = ("confidence", "discrepancy", "uncertainty", "pseudo-labels")
#: layer maps whose contrast limits come from their values (0 to the 99.9th percentile)
UNFIXED_LIMITS = tuple(
    k for k in LAYER_MAPS if "contrast_limits" not in MAP_STYLE.get(k, OTHER_MAP)
)


def map_title(key: str) -> str:
    """The layer name (after the image's) of a map."""
    return MAP_TITLES.get(key, key.replace("_", " "))


def map_meaning(kind: str, method: str | None, k: int) -> str:
    """What the layer of map ``kind`` (a map name, ``prediction`` or ``pseudo-labels``) of a
    model of ``method`` with ``k`` classes means and its range."""
    if kind == "prediction":
        return PREDICTION_MEANING
    try:
        cls = get_method(method) if method else Method
    except SemisegError:  # a method this version does not know
        cls = Method
    meaning = cls.map_meaning("pseudo" if kind == "pseudo-labels" else kind)
    return meaning.replace("1/K", f"{1 / k:.2g}")


def layer_name(image_name: str, kind: str) -> str:
    return f"{image_name} {kind}"
