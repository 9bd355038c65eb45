"""What the ``semiseg`` commands share: exit codes, the parsing of slice lists and ``--set``,
the checks of paths and numbers every command makes before any work, and the progress
printer. Nothing here imports torch."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from src_models.errors import SemisegError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
#: stopped by SIGTERM (128 + 15), with a checkpoint
EXIT_TERMINATED = 143


def _parse_slices(
    text: str | None, n_images: int, flag: str = "--labeled-slices"
) -> list[list[int] | None] | None:
    """ "3,17,30" (every image) or "3,17;5,9" (one group per image, ';'-separated)."""
    if text is None:
        return None
    groups = [g for g in text.split(";")]
    try:
        parsed = [[int(s) for s in g.split(",") if s.strip()] for g in groups]
    except ValueError:
        raise SemisegError(
            f"{flag} {text!r} is not a list of slice numbers: use e.g. 3,17,30"
            + (" (or 3,17;5,9 with one group per image)" if n_images > 1 else "")
        ) from None
    if len(parsed) == 1:
        return parsed * n_images
    if len(parsed) != n_images:
        raise SemisegError(
            f"{flag} has {len(parsed)} groups for {n_images} images: give one group "
            "per image separated by ';' or a single group for all"
        )
    return parsed


def _parse_set(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SemisegError(f"--set {item!r}: use key=value (see 'semiseg methods')")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


class _ProgressPrinter:
    """A one-line progress bar on a terminal, plain lines every ``every`` iterations else."""

    def __init__(self, every: int = 50, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = every
        self.last = 0.0

    def __call__(self, p) -> None:
        logs = " ".join(f"{k}={v:.4g}" for k, v in p.logs.items())
        eta = "?" if math.isnan(p.eta) else f"{p.eta:.0f}s"
        if self.tty:
            now = time.monotonic()
            if now - self.last < 0.2 and not p.done:
                return
            self.last = now
            width = 24
            fill = int(width * p.iteration / max(p.total, 1))
            bar = "#" * fill + "-" * (width - fill)
            line = f"\r[{bar}] {p.iteration}/{p.total} eta {eta} lr {p.lr:.2e} {logs}"
            self.stream.write(line[:200].ljust(80))
            if p.done:
                self.stream.write("\n")
        elif p.done or p.iteration % self.every == 0 or p.iteration == 1:
            self.stream.write(
                f"iter {p.iteration}/{p.total} elapsed {p.elapsed:.0f}s eta {eta} "
                f"lr {p.lr:.2e} {logs}\n"
            )
        self.stream.flush()


def _check_at_least(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise SemisegError(f"{name} must be at least {low}, got {value}")


def _resolved(path: str | Path) -> Path:
    return Path(str(path).rstrip("/\\")).expanduser().resolve()


def _refuse_labels_as_image(image: str | Path, labels: str | Path) -> None:
    """``--labels`` naming the image file itself: its intensities are not class ids."""
    if _resolved(image) == _resolved(labels):
        raise SemisegError(
            f"--labels {labels} is the image itself: give the mask painted on it (class ids, "
            "0 = background), a separate file"
        )


def _refuse_overlap(flag: str, output: str | Path, inputs: list[str | Path]) -> None:
    """An output that is, contains or lies inside an input would overwrite or delete it."""
    out = _resolved(output)
    for given in inputs:
        inp = _resolved(given)
        how = (
            "is"
            if out == inp
            else "is inside"
            if inp in out.parents
            else "contains"
            if out in inp.parents
            else ""
        )
        if how:
            raise SemisegError(
                f"{flag} {output} {how} the input {given}: it would be overwritten; choose "
                "another output path (inputs are never written)"
            )
