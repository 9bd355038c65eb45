"""What the values of a label volume mean: class ids, unannotated voxels, or neither.

Training needs class ids 0..K-1 (0 = background). The masks users bring often differ:

- *non-contiguous ids* (0, 2, 5): trained as classes 0, 1, 2; predictions are written back
  with the original values (the checkpoint keeps them as ``label_values``);
- *a binary mask stored as 0/255*: 255 is the foreground class (the same remapping);
- *unannotated voxels* marked with one value (nnU-Net's "ignore label"): with ``ignore``,
  those voxels are not trained on, a slice holding nothing else is unlabeled, and a slice
  with some annotated voxels is labeled where it is annotated. In the encoded training labels
  they are :data:`IGNORE` (-1);
- *instance masks* (one id per object, e.g. cells): hundreds of ids are not hundreds of
  classes. More than :data:`MAX_CLASSES` classes are refused with the fix; ``binary`` trains
  every nonzero id as one foreground class;
- a 255 beside a few small ids is most likely an "unannotated" marker: refused, naming
  ``--ignore-label 255``, rather than silently trained as a class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from src_models.errors import SemisegError

#: encoded value of unannotated voxels in training labels
IGNORE = -1
#: more distinct ids than this (background included) look like an instance mask
MAX_CLASSES = 32


@dataclass(frozen=True)
class LabelValues:
    """How a user's label values map to class ids.

    Attributes:
        values: the original value of each class id (``values[0]`` is background, 0).
        ignore: the value that marks unannotated voxels, or None.
        binary: every nonzero (not ignored) value is class 1.
    """

    values: tuple[int, ...]
    ignore: int | None = None
    binary: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.values)

    @property
    def remapped(self) -> bool:
        """True when class ids differ from the values (predictions must be decoded)."""
        return self.binary or self.values != tuple(range(len(self.values)))

    def encode(self, labels: np.ndarray) -> np.ndarray:
        """Class ids (int64) of ``labels``; unannotated voxels become :data:`IGNORE`."""
        labels = np.asarray(labels)
        if self.binary:
            ids = (labels != 0).astype(np.int64)
        elif self.remapped:
            lut = np.asarray(self.values)
            ids = np.searchsorted(lut, labels).astype(np.int64)
        else:
            ids = labels.astype(np.int64)
        if self.ignore is not None:
            ids[labels == self.ignore] = IGNORE
        return ids

    @classmethod
    def from_info(cls, info: dict, num_classes: int) -> LabelValues:
        """The values a checkpoint's ``info`` records (identity ids 0..K-1 when absent)."""
        return cls(
            tuple(info.get("label_values", range(num_classes))),
            info.get("ignore_label"),
            bool(info.get("binary", False)),
        )

    def info(self) -> dict:
        """What :meth:`from_info` reads back (stored in ``model.json``'s ``info``)."""
        return {
            "label_values": list(self.values),
            "ignore_label": self.ignore,
            "binary": self.binary,
        }

    def decode(self, class_ids: np.ndarray) -> np.ndarray:
        """The user's values for predicted class ids (the inverse of :meth:`encode`)."""
        if not self.remapped:
            return class_ids
        out = np.asarray(self.values)[np.asarray(class_ids)]
        top = int(out.max(initial=0))
        for dtype in (np.uint8, np.uint16, np.uint32):  # the user's values, never wrapped
            if top <= np.iinfo(dtype).max:
                return out.astype(dtype)
        return out.astype(np.int64)


def present_values(labels: Sequence[np.ndarray], ignore: int | None) -> np.ndarray:
    """The values found in ``labels`` (0 always included), ``ignore`` left out."""
    found = np.unique(np.concatenate([np.unique(np.asarray(lbl)) for lbl in labels]))
    found = found[found != ignore] if ignore is not None else found
    return np.union1d(found, [0]).astype(np.int64)


def check_unannotated_marker(present: np.ndarray, ignore: int | None, what="labels") -> None:
    """Refuse a 255 beside a few small ids (sorted ``present`` values) when no ignore label
    is given: most likely an "unannotated" marker, which would be read as a class."""
    if ignore is None and 255 in present and 2 < len(present) and present[-2] < 64:
        others = ", ".join(str(v) for v in present[1:-1])
        raise SemisegError(
            f"the {what} hold 255 beside the small ids {others}: if 255 marks unannotated "
            "voxels pass --ignore-label 255; if it is a class, give it a small id"
        )


def interpret_labels(
    labels: Sequence[np.ndarray],
    num_classes: int | None = None,
    ignore: int | None = None,
    binary: bool = False,
) -> LabelValues:
    """Decide how the values of ``labels`` (non-negative integer arrays) map to classes.

    ``num_classes`` (background included) fixes ids 0..K-1 as they are (a class may be absent
    from the labels, e.g. not painted yet); without it the present values are the classes.
    """
    if num_classes is not None and num_classes < 2:
        raise SemisegError(
            f"{num_classes} class(es) requested: at least 2 are needed (background and one "
            "structure)"
        )
    if ignore is not None and ignore < 0:
        raise SemisegError(f"the ignore label must be a value >= 0, got {ignore}")
    if ignore == 0:
        raise SemisegError("the ignore label cannot be 0: 0 is background")
    present = present_values(labels, ignore)
    if binary:
        if num_classes not in (None, 2):
            raise SemisegError("--binary trains 2 classes: drop --classes")
        return LabelValues((0, 1), ignore, binary=True)
    if num_classes is not None:
        top = int(present.max())
        if top >= num_classes:
            raise SemisegError(
                f"labels contain class {top} but {num_classes} classes were requested "
                f"(0..{num_classes - 1}): raise the class count or fix the labels"
            )
        return LabelValues(tuple(range(num_classes)), ignore)
    if len(present) > MAX_CLASSES:
        shown = ", ".join(str(v) for v in present[1:6])
        raise SemisegError(
            f"the labels hold {len(present) - 1} different nonzero values ({shown}, ...): this "
            "looks like an instance mask (one id per object), not class ids; pass --binary "
            "to train every nonzero value as one class, or --classes N if they are N classes"
        )
    check_unannotated_marker(present, ignore)
    return LabelValues(tuple(int(v) for v in present) if len(present) > 1 else (0, 1), ignore)
