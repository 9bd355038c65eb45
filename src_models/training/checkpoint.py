"""Model bundles and their checkpoints.

A checkpoint is a folder (the run directory) with two files written atomically:

- ``model.json``: everything needed to predict later, human-readable: method name and
  hyperparameters, class count, input channels, normalisation scheme, slicing axis, training
  patch size, iteration reached, package versions, format version.
- ``model.pt``: tensors only (network weights, optimiser states, RNG states), saved with
  ``torch.save`` and loaded with ``torch.load(weights_only=True)``: no arbitrary pickle.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src_models import __version__
from src_models.data.context import MAX_CONTEXT, context_channels, slice_channels
from src_models.errors import SemisegError
from src_models.files import commit, discard, stage_file
from src_models.methods.base import Method, config_to_dict, get_method, make_config

FORMAT = "napari-semiseg-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
META_FILE = "model.json"
#: what model.json must hold to rebuild and use a model
REQUIRED_KEYS = (
    "method",
    "config",
    "num_classes",
    "in_channels",
    "normalization",
    "axis",
    "patch_size",
    "iteration",
)


@dataclass
class ModelBundle:
    """A method instance plus what inference needs to reproduce the training transform."""

    method: Method
    axis: int = 0
    patch_size: int = 128
    percentiles: tuple[float, float] = (0.5, 99.5)
    iteration: int = 0
    class_names: list[str] = field(default_factory=list)
    trainer_state: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return self.method.num_classes

    @property
    def ends_labeled(self) -> bool:
        """Whether the run was told its outer labeled slices are the structure's ends: its
        fused predictions and suggestions stop there as its training did."""
        return bool(self.info.get("ends_labeled", False))

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on each side the network takes as channels
        (:mod:`src_models.data.context`; 0 for models saved before there was a choice)."""
        return int(self.info.get("context_slices", 0))

    @property
    def planes(self) -> int:
        """The axes the network trained on and predicts along: 3 (all,
        :mod:`src_models.data.planes`) or 1 (its ``axis``; models saved before there was a
        choice)."""
        return 3 if self.info.get("planes") == 3 else 1

    @property
    def image_channels(self) -> int:
        """Channels of the images the model predicts (its input channels without context)."""
        return slice_channels(self.method.in_channels, self.context_slices)

    def metadata(self) -> dict[str, Any]:
        m = self.method
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "method": m.name,
            "config": config_to_dict(m.config),
            "num_classes": m.num_classes,
            "class_names": self.class_names or [str(i) for i in range(m.num_classes)],
            "in_channels": m.in_channels,
            "normalization": {
                "scheme": "percentile-clip-zscore-per-volume",
                "percentiles": list(self.percentiles),
            },
            "axis": self.axis,
            "patch_size": self.patch_size,
            "iteration": self.iteration,
            "info": self.info,
            "versions": {
                "napari_semiseg": __version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
        }


def create_model(
    method: str,
    params: dict[str, Any] | None,
    in_channels: int,
    num_classes: int,
    device: torch.device | str = "cpu",
    seed: int = 0,
    **bundle_fields: Any,
) -> ModelBundle:
    """A freshly initialised method (weights seeded by ``seed``) wrapped in a bundle."""
    cls = get_method(method)
    config = make_config(cls.Config, params)
    torch.manual_seed(seed)
    return ModelBundle(cls(config, in_channels, num_classes, device), **bundle_fields)


def _save_tensors(payload: dict, path: str | os.PathLike) -> None:
    """``torch.save``, whose failed writes (a full disk, a file size limit) come as a
    ``RuntimeError`` from its zip writer ("inline_container.cc"): raised as the ``OSError``
    they are, so the caller's "could not save the checkpoint" message names them."""
    try:
        torch.save(payload, path)
    except RuntimeError as exc:
        try:
            full = shutil.disk_usage(Path(path).parent).free < 1 << 20
        except OSError:
            full = False
        reason = "No space left on device" if full else f"the write failed: {str(exc)[:120]}"
        raise OSError(errno.ENOSPC if full else errno.EIO, reason) from None


def save_model(bundle: ModelBundle, run_dir: str | os.PathLike) -> Path:
    """Write ``model.pt`` and ``model.json`` into ``run_dir``; returns the dir.

    Both files are staged first and renamed only when both are complete, so a full disk or a
    crash leaves the previous checkpoint whole; the ``OSError`` is raised after cleaning up.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "format_version": FORMAT_VERSION,
        "method": bundle.method.name,
        "state": bundle.method.state_dict(),
        "trainer": bundle.trainer_state,
    }
    text = json.dumps(bundle.metadata(), indent=2)
    staged = []
    try:
        staged.append(stage_file(run_dir / WEIGHTS_FILE, lambda tmp: _save_tensors(payload, tmp)))
        staged.append(stage_file(run_dir / META_FILE, lambda tmp: Path(tmp).write_text(text)))
        commit(staged)
    finally:
        discard(staged)  # what was committed is gone from its temporary name
    return run_dir


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``model.json`` of a run directory (or of the folder holding ``model.pt``)."""
    run_dir = Path(path)
    if run_dir.is_file():
        run_dir = run_dir.parent
    meta_path = run_dir / META_FILE
    if not meta_path.exists():
        raise SemisegError(
            f"no model found at {path}: expected a run directory holding {META_FILE} and "
            f"{WEIGHTS_FILE} (written by 'semiseg train --out')"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise SemisegError(f"cannot read {meta_path}: {exc}; the model folder is damaged") from None
    if not isinstance(meta, dict):
        raise SemisegError(
            f"{meta_path} holds a JSON {type(meta).__name__}, not a model description: the "
            "model folder is damaged or was edited; copy it again or retrain"
        )
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise SemisegError(
            f"{meta_path} is not a napari-semiseg model of format version {FORMAT_VERSION} "
            f"(found {meta.get('format')!r} v{meta.get('format_version')}): "
            "retrain with this version"
        )
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise SemisegError(
            f"{meta_path} lacks {', '.join(missing)}: the model folder is damaged or was "
            "edited; copy it again or retrain"
        )
    bad = _invalid_fields(meta)
    if bad:
        raise SemisegError(
            f"{meta_path} holds invalid values ({'; '.join(bad)}): the model folder is damaged "
            "or was edited; copy it again or retrain"
        )
    return meta


def _whole(value: Any, low: int, high: int | None = None) -> bool:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    return ok and (high is None or value <= high)


def _invalid_fields(meta: dict) -> list[str]:
    """What is wrong with each field of ``model.json`` (empty: nothing), by type and range."""
    bad = []
    if not isinstance(meta["method"], str):
        bad.append("method is not a name")
    if not isinstance(meta["config"], dict):
        bad.append("config is not a mapping")
    if not _whole(meta["in_channels"], 1):
        bad.append(f"in_channels {meta['in_channels']!r} (a whole number >= 1)")
    if not _whole(meta["num_classes"], 2, 1024):
        bad.append(f"num_classes {meta['num_classes']!r} (a whole number from 2)")
    if meta["axis"] not in (0, 1, 2) or isinstance(meta["axis"], bool):
        bad.append(f"axis {meta['axis']!r} (0, 1 or 2)")
    if not (_whole(meta["patch_size"], 16) and meta["patch_size"] % 16 == 0):
        bad.append(f"patch_size {meta['patch_size']!r} (a multiple of 16)")
    if not _whole(meta["iteration"], 0):
        bad.append(f"iteration {meta['iteration']!r} (a whole number >= 0)")
    norm = meta["normalization"]
    pct = norm.get("percentiles") if isinstance(norm, dict) else None
    if not (
        isinstance(pct, list)
        and len(pct) == 2
        and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in pct)
        and 0 <= pct[0] < pct[1] <= 100
    ):
        bad.append(f"normalization percentiles {pct!r} (two numbers, 0 <= low < high <= 100)")
    if not isinstance(meta.get("info", {}), dict):
        bad.append("info is not a mapping")
    else:
        context = meta.get("info", {}).get("context_slices", 0)
        spans = context_channels(1, context) if _whole(context, 0, MAX_CONTEXT) else 0
        if not spans or (_whole(meta["in_channels"], 1) and meta["in_channels"] % spans):
            bad.append(
                f"info.context_slices {context!r} (a whole number from 0 to {MAX_CONTEXT} "
                "that divides the input channels into 2 c + 1 slices)"
            )
    if not isinstance(meta.get("class_names", []), list):
        bad.append("class_names is not a list")
    return bad


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", expect_method: str | None = None
) -> ModelBundle:
    """Rebuild a bundle from a run directory, loading tensors only (``weights_only=True``)."""
    meta = read_metadata(path)
    if expect_method is not None and meta["method"] != expect_method:
        raise SemisegError(
            f"the model at {path} was trained with method {meta['method']!r}, not "
            f"{expect_method!r}: choose that method or another model"
        )
    run_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        payload = torch.load(run_dir / WEIGHTS_FILE, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise SemisegError(
            f"{run_dir / WEIGHTS_FILE} is missing: the model folder is incomplete"
        ) from None
    except Exception as exc:  # truncated file, unpickling refused, ...
        raise SemisegError(
            f"cannot load weights from {run_dir / WEIGHTS_FILE} ({type(exc).__name__}): "
            "the file is damaged or not a napari-semiseg model; retrain or copy it again"
        ) from None
    if not isinstance(payload, dict) or not isinstance(payload.get("state"), dict):
        raise SemisegError(
            f"{run_dir / WEIGHTS_FILE} holds no napari-semiseg weights (no 'state'): the "
            "file is damaged or from another program; retrain or copy it again"
        )
    if payload.get("method") != meta["method"]:
        raise SemisegError(f"{run_dir}: model.pt and model.json disagree on the method; retrain")
    try:
        cls = get_method(meta["method"])
        config = make_config(cls.Config, meta["config"])
        method = cls(config, int(meta["in_channels"]), int(meta["num_classes"]), device)
        fields = {
            "axis": int(meta["axis"]),
            "patch_size": int(meta["patch_size"]),
            "percentiles": tuple(float(p) for p in meta["normalization"]["percentiles"]),
            "iteration": int(meta["iteration"]),
            "class_names": list(meta.get("class_names", [])),
            "info": dict(meta.get("info", {})),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise SemisegError(
            f"{run_dir / META_FILE} holds an invalid value ({type(exc).__name__}: {exc}): the "
            "model folder is damaged or was edited; copy it again or retrain"
        ) from None
    try:
        method.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise SemisegError(
            f"the weights in {run_dir} do not fit method {meta['method']!r} with its saved "
            f"parameters ({str(exc).splitlines()[0]}): the model is from another version"
        ) from None
    return ModelBundle(method, trainer_state=payload.get("trainer", {}), **fields)
