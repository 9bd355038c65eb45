"""The architecture the layout promises: Qt and napari only under ``napari_semiseg/_qt``,
the core (``src_models``) free of both."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import ROOT

GUI = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt", "vispy")


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_qt_and_napari_are_imported_only_under_qt():
    offenders = {}
    for package in ("src_models", "napari_semiseg"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_qt" in path.relative_to(ROOT).parts:
                continue
            bad = imported_roots(path) & set(GUI)
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, offenders
    # and the Qt modules really are there
    assert "qtpy" in imported_roots(ROOT / "napari_semiseg" / "_qt" / "training_dock.py")


def test_the_core_never_imports_the_plugin():
    for path in sorted((ROOT / "src_models").rglob("*.py")):
        assert "napari_semiseg" not in imported_roots(path), path


def test_the_two_docks_never_import_each_other():
    qt = ROOT / "napari_semiseg" / "_qt"
    for this, other in (("training_dock", "review_dock"), ("review_dock", "training_dock")):
        text = (qt / f"{this}.py").read_text()
        assert f"_qt.{other}" not in text and f"from .{other}" not in text, this
