"""Device selection and mixed precision, so the rest of the code never assumes CUDA."""

from __future__ import annotations

import contextlib

import torch

from src_models.errors import SemisegError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(name: str = "auto") -> torch.device:
    """Return the device to train on: ``auto`` tries CUDA, then MPS, then the CPU."""
    name = (name or "auto").lower()
    if name not in DEVICE_CHOICES:
        raise SemisegError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SemisegError("device 'cuda' requested but no CUDA GPU is visible: use --device cpu")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise SemisegError("device 'mps' requested but MPS is not available: use --device cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """Mixed precision on CUDA with bf16 (no loss scaling needed); a no-op elsewhere.

    On the CPU it stays off: bf16 was measured faster on an AMX-capable CPU
    (docs/benchmarks.md) but changes every method's numerics and is slow on CPUs
    without bf16 units.
    """
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
