"""Safe writes: atomic, umask-honouring, all-or-nothing for several outputs.

A file (or a folder such as a zarr store) is first *staged*: written under a hidden temporary
name beside its target, so a crash, a full disk or an error leaves no half-written output.
*Committing* renames it onto the target (``os.replace``, atomic on one file system). A
command that writes several outputs stages them all and commits them only once every one is
complete; on failure it *discards* the temporaries, and nothing that existed before the
command is touched.

``tempfile`` creates its files with mode 0600 (folders 0700); a staged output gets the mode
an ordinary ``open()`` would give it under the process umask (or keeps the mode of the file
it replaces), so colleagues sharing a server can read the results.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from src_models.errors import SemisegError


def current_umask() -> int:
    """The process umask (read from /proc on Linux, else set and restored)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_mode(tmp: Path, target: Path, is_dir: bool) -> None:
    """Give ``tmp`` the mode of the ``target`` it replaces, else what the umask allows."""
    if target.exists():
        mode = stat.S_IMODE(target.stat().st_mode)
    else:
        mode = (0o777 if is_dir else 0o666) & ~current_umask()
    os.chmod(tmp, mode)
    if is_dir:
        dir_mode = mode | ((mode & 0o444) >> 2)  # readable folders are also searchable
        file_mode = mode & 0o666
        for root, dirs, files in os.walk(tmp):
            for d in dirs:
                os.chmod(os.path.join(root, d), dir_mode)
            for f in files:
                os.chmod(os.path.join(root, f), file_mode)


@dataclass
class Staged:
    """A complete output under its temporary name, waiting to be renamed onto ``target``."""

    tmp: Path
    target: Path
    is_dir: bool = False


def stage_file(
    target: str | os.PathLike, write: Callable[[Path], None], suffix: str = ""
) -> Staged:
    """Call ``write(tmp)`` for a temporary file beside ``target`` (``suffix`` ends its name:
    some writers pick the format from it); on failure the temporary is removed."""
    target = Path(target)
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        _set_mode(tmp, target, is_dir=False)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Staged(tmp, target)


def stage_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> Staged:
    """Like :func:`stage_file` for an output that is a folder (``write`` fills ``tmp``)."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise SemisegError(f"{target} exists and is not a folder; remove it or pick another name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        write(tmp)
        _set_mode(tmp, target, is_dir=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Staged(tmp, target, is_dir=True)


def commit(staged: Iterable[Staged]) -> list[Path]:
    """Rename every staged output onto its target; returns the targets. A folder target is
    moved aside first and removed only once the new one is in place."""
    done = []
    for s in staged:
        old = None
        if s.is_dir and s.target.exists():
            old = s.target.with_name(f".{s.target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(s.target, old)
        try:
            os.replace(s.tmp, s.target)
        except BaseException:
            if old is not None:
                os.replace(old, s.target)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        done.append(s.target)
    return done


def discard(staged: Iterable[Staged]) -> None:
    """Remove staged temporaries (never a target)."""
    for s in staged:
        if s.is_dir:
            shutil.rmtree(s.tmp, ignore_errors=True)
        else:
            s.tmp.unlink(missing_ok=True)


def atomic_write(
    target: str | os.PathLike, write: Callable[[Path], None], suffix: str = ""
) -> Path:
    """Write one file atomically: :func:`stage_file` then :func:`commit`."""
    staged = stage_file(target, write, suffix)
    try:
        return commit([staged])[0]
    except BaseException:
        discard([staged])
        raise


def check_writable(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Prove, before long work starts, that files can be written in ``folder`` (or, when it
    does not exist yet, that it can be created), without leaving anything behind; a
    :class:`SemisegError` names the folder and the fix otherwise."""
    folder = Path(folder).expanduser().absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    problem = ""
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):  # also EROFS on read-only mounts
        problem = "permission denied" if existing == folder else f"{existing} is not writable"
    else:
        problem = _probe_write(existing)
    if problem:
        raise SemisegError(
            f"cannot write to the {what} {folder} ({problem}): choose a writable location"
        )
    return folder


def _probe_write(folder: Path) -> str:
    """Write and remove one byte in ``folder`` ("" when that works, else why not): root passes
    ``os.access`` everywhere, even where nothing can be written (``/proc``, a full disk).
    The folder's times are put back, so nothing the user has changes."""
    try:
        st = os.stat(folder)
        fd, name = tempfile.mkstemp(prefix=".semiseg-probe-", dir=folder)
        try:
            os.write(fd, b"\0")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
            with contextlib.suppress(OSError):
                os.utime(folder, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "training") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block, so
    two trainings never write one run folder at once: the second is refused by name. The
    lock is the kernel's ``flock`` on the folder itself (no lock file, nothing in the folder
    changes; a killed process leaves no stale lock). Folders this call created go when it
    ends, if empty. Where ``flock`` does not exist (Windows) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(folder)
        return
    folder = Path(folder)
    made = []
    for parent in [folder, *folder.parents]:
        if parent.exists():
            break
        made.append(parent)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise SemisegError(
            f"another {what} is writing {folder} right now: wait for it to end, or choose "
            "another --out"
        ) from None
    try:
        yield folder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        for created in made:  # innermost first
            try:
                created.rmdir()
            except OSError:
                break
