"""The ``semiseg`` command line: train, predict, suggest, evaluate, methods.

Runs headless (no Qt import). Every user-fixable problem ends with a one-line
``semiseg: error: ...`` on stderr and exit code 2, no traceback (``--debug`` shows one).

One module per command (``train.py``, ``predict.py``, ``suggest.py``, ``evaluate.py``,
``methods.py``), the arguments in ``parser.py``, what the commands share (exit codes, slice
lists, path and number checks, the progress printer) in ``_common.py``; :func:`main` here.
Heavy imports (torch, the readers) happen inside the commands, so ``semiseg --help`` is fast.
"""

from __future__ import annotations

import sys

from napari_semiseg.cli._common import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USER_ERROR
from napari_semiseg.cli.parser import _launched_rank, build_parser
from src_models.errors import SemisegError

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "EXIT_USER_ERROR", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from napari_semiseg.io import LAZY_VOXELS_PROBLEM

        if LAZY_VOXELS_PROBLEM:
            raise SemisegError(LAZY_VOXELS_PROBLEM)
        return args.func(args)
    except SemisegError as exc:
        if args.debug:
            raise
        if _launched_rank() == 0:  # under torchrun: said once, by rank 0
            print(f"semiseg: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("semiseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `semiseg methods | head`: the reader has what it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except MemoryError:
        print("semiseg: error: out of memory: lower --batch-size or --patch", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as exc:  # never a traceback in the user's face
        if args.debug:
            raise
        print(
            f"semiseg: internal error: {type(exc).__name__}: {exc} "
            "(rerun with --debug for details and report it)",
            file=sys.stderr,
        )
        return 1
