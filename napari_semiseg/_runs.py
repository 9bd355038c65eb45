"""The plugin's settings and run folders, free of Qt and napari.

Run folders (``run-<date-time>-…``) go under
:meth:`~napari_semiseg._session.Session.runs_folder`: the user's choice (remembered in the
plugin's settings file), ``$NAPARI_SEMISEG_RUNS``, or the per-user data folder from
platformdirs. :func:`prune_runs` keeps the newest ``keep_runs`` and never deletes the current
run, the current model's, one holding :data:`KEEP_FILE` or anything not named like a run;
:func:`list_runs` gives the history the training dock offers. A run folder holds the
checkpoint, the labels the run trained on (:data:`LABELS_FILE`), their slices
(:data:`SLICES_FILE`) and the training process's log (:data:`PROCESS_LOG`).

Settings and run folders are read and written on the GUI thread; the worker thread and the
training process use the run folder's file names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from src_models.files import atomic_write
from src_models.training.checkpoint import META_FILE

#: files of a run folder: the labels a run trained on, their slices, the process's log
LABELS_FILE = "labels.npy"
SLICES_FILE = "labeled_slices.json"
PROCESS_LOG = "process.log"

#: run folders are named ``run-<YYYYmmdd-HHMMSS-micro>-<random>`` under the runs folder
RUN_PREFIX = "run-"
#: a run folder holding this file is never pruned (the user saved the model there)
KEEP_FILE = "keep"
#: run folders kept by default (the oldest beyond are deleted when a new run starts)
DEFAULT_KEEP_RUNS = 5
#: environment variable overriding the runs folder (e.g. for a shared machine or tests)
RUNS_ENV = "NAPARI_SEMISEG_RUNS"
APP_NAME = "napari-semiseg"
SETTINGS_FILE = "settings.json"


def default_run_root() -> Path:
    """Where run folders go unless the user chose another folder: ``$NAPARI_SEMISEG_RUNS``,
    else the per-user data folder (platformdirs, e.g. ``~/.local/share/napari-semiseg/runs``
    on Linux)."""
    env = os.environ.get(RUNS_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return platformdirs.user_data_path(APP_NAME, appauthor=False) / "runs"


def settings_path() -> Path:
    import platformdirs

    return platformdirs.user_config_path(APP_NAME, appauthor=False) / SETTINGS_FILE


def load_settings(path: Path | None = None) -> dict[str, Any]:
    """The plugin's saved settings (runs folder, runs kept); {} when none or unreadable."""
    path = settings_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(values: dict[str, Any], path: Path | None = None) -> None:
    path = settings_path() if path is None else Path(path)
    data = load_settings(path)
    data.update(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


_RUN_NAME = re.compile(r"^run-(\d{8}-\d{6})-")


@dataclass
class RunInfo:
    """One run folder: its model's method and iteration (None: no checkpoint yet)."""

    path: Path
    started: datetime | None
    method: str = ""
    iteration: int | None = None
    kept: bool = False
    #: the run folder of the model this run continued (None: trained from scratch)
    parent: str | None = None

    def label(self) -> str:
        when = self.started.strftime("%d %b %H:%M:%S") if self.started else self.path.name
        if self.iteration is None:
            return f"{when} · no model (stopped before its first checkpoint)"
        continued = ""
        if self.parent:
            parent = run_info(Path(self.parent))
            since = (
                parent.started.strftime("%H:%M:%S") if parent.started else Path(self.parent).name
            )
            continued = f" · continued from {since}"
        return f"{self.method} · {when} · {self.iteration} iterations{continued}" + (
            " · kept" if self.kept else ""
        )


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and _RUN_NAME.match(path.name) is not None


def run_info(path: Path) -> RunInfo:
    match = _RUN_NAME.match(path.name)
    started = None
    if match:
        try:
            started = datetime.strptime(match.group(1), "%Y%m%d-%H%M%S")
        except ValueError:
            started = None
    info = RunInfo(Path(path), started, kept=(Path(path) / KEEP_FILE).exists())
    try:
        meta = json.loads((Path(path) / META_FILE).read_text())
        info.method, info.iteration = str(meta["method"]), int(meta["iteration"])
        parent = meta.get("info", {}).get("parent_run")
        info.parent = str(parent) if parent else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return info


def list_runs(root: Path | None) -> list[RunInfo]:
    """The run folders under ``root``, newest first."""
    if root is None or not Path(root).is_dir():
        return []
    runs = [run_info(p) for p in Path(root).iterdir() if is_run_dir(p)]
    return sorted(runs, key=lambda r: r.path.name, reverse=True)


def prune_runs(root: Path | None, keep: int, protect: set[Path] | None = None) -> list[Path]:
    """Delete the oldest run folders under ``root`` beyond the newest ``keep`` ones; never a
    folder in ``protect`` (the current run, the current model's) nor one holding
    :data:`KEEP_FILE`. Only folders named like a run are touched. Returns the deleted ones."""
    protected = {Path(p).resolve() for p in (protect or set()) if p is not None}
    removed = []
    for run in list_runs(root)[max(int(keep), 0) :]:
        if run.kept or run.path.resolve() in protected:
            continue
        shutil.rmtree(run.path, ignore_errors=True)
        if not run.path.exists():
            removed.append(run.path)
    return removed
