"""Every test in this folder is a test of the napari plugin: it gets the ``gui`` marker, so
``pytest -m "not gui"`` (or ``--ignore=tests/plugin``) runs the core and CLI tests alone."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects on the markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # a conftest's collection hook sees the items of every folder: mark only this one's
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.gui)
