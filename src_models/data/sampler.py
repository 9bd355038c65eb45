"""Random training batches of labeled and unlabeled slices, on the training device.

Slices are brought to the training size by padding (with the volume's background value,
labels with 0) and random cropping; never resized, so the aspect ratio is kept. The weak
geometric augmentation is applied batched on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from src_models.augment import weak_geometric
from src_models.data.volumes import Volume
from src_models.errors import SemisegError


@dataclass
class Batch:
    """image: float (B, C, P, P); label: int64 (B, P, P) or None for unlabeled batches."""

    image: torch.Tensor
    label: torch.Tensor | None = None


class SliceSampler:
    """Draws batches of labeled / unlabeled slices of a set of volumes.

    Args:
        volumes: from :func:`make_volumes`.
        patch_size: side of the square training crop (pixels).
        batch_size: default batch size of :meth:`labeled` and :meth:`unlabeled`.
        device: where batches are put.
        seed: seeds the CPU generator used for crops and augmentation.
        holdout_fraction: fraction of the labeled slices kept out of training for model
            selection (at least one slice stays for training); 0 disables it.
        augment: apply the weak geometric augmentation to every batch.
    """

    def __init__(
        self,
        volumes: list[Volume],
        patch_size: int = 128,
        batch_size: int = 8,
        device: torch.device | str = "cpu",
        seed: int = 0,
        holdout_fraction: float = 0.0,
        augment: bool = True,
    ) -> None:
        if patch_size < 16 or patch_size % 16:
            raise SemisegError(f"patch size {patch_size} must be a multiple of 16 (>= 16)")
        self.volumes = volumes
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        labeled = [(v, s) for v, vol in enumerate(volumes) for s in vol.labeled]
        if not labeled:
            raise SemisegError("no labeled slice: label at least one slice before training")
        self.holdout: list[tuple[int, int]] = []
        if holdout_fraction > 0 and len(labeled) >= 2:
            n_hold = min(len(labeled) - 1, max(1, int(round(holdout_fraction * len(labeled)))))
            order = torch.randperm(len(labeled), generator=torch.Generator().manual_seed(seed))
            held = {int(i) for i in order[:n_hold]}
            self.holdout = [labeled[i] for i in sorted(held)]
            labeled = [p for i, p in enumerate(labeled) if i not in held]
        self.labeled_index = labeled
        self.unlabeled_index = [(v, s) for v, vol in enumerate(volumes) for s in vol.unlabeled]
        if not self.unlabeled_index:  # every slice labeled: unlabeled views reuse all slices
            self.unlabeled_index = [
                (v, s) for v, vol in enumerate(volumes) for s in range(vol.slices.shape[0])
            ]
        self.in_channels = volumes[0].slices.shape[1]
        #: value for pixels rotated in from outside a crop: the volumes' mean background
        self.fill = float(np.mean([v.background for v in volumes]))

    # -- state for resumable runs -------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    # -- batches -----------------------------------------------------------------------
    def _crop(self, pairs, n: int, with_labels: bool, random: bool = True):
        p = self.patch_size
        c = self.in_channels
        images = np.empty((n, c, p, p), dtype=np.float32)
        labels = np.zeros((n, p, p), dtype=np.int64) if with_labels else None
        if random:
            picks = torch.randint(0, len(pairs), (n,), generator=self.generator).tolist()
            offsets = torch.rand(n, 2, generator=self.generator).tolist()
        else:
            picks = list(range(n))
            offsets = [[0.5, 0.5]] * n
        for i, (pick, (oy, ox)) in enumerate(zip(picks, offsets, strict=True)):
            v, s = pairs[pick]
            vol = self.volumes[v]
            sl = vol.slices[s]
            h, w = sl.shape[-2:]
            # Window of size p placed over the (possibly smaller) slice.
            y0 = int(oy * (h - p + 1)) if h >= p else -int(oy * (p - h + 1))
            x0 = int(ox * (w - p + 1)) if w >= p else -int(ox * (p - w + 1))
            sy, sx = max(y0, 0), max(x0, 0)
            ey, ex = min(y0 + p, h), min(x0 + p, w)
            images[i] = vol.background
            images[i, :, sy - y0 : ey - y0, sx - x0 : ex - x0] = sl[:, sy:ey, sx:ex]
            if with_labels:
                labels[i, sy - y0 : ey - y0, sx - x0 : ex - x0] = vol.labels[s, sy:ey, sx:ex]
        image = torch.from_numpy(images).to(self.device)
        label = None if labels is None else torch.from_numpy(labels).to(self.device)
        return image, label

    def labeled(self, n: int | None = None, augment: bool | None = None) -> Batch:
        """A batch of ``n`` random labeled crops (weakly augmented unless disabled)."""
        image, label = self._crop(self.labeled_index, n or self.batch_size, True)
        if self.augment if augment is None else augment:
            image, label = weak_geometric(image, label, generator=self.generator, fill=self.fill)
        return Batch(image, label)

    def unlabeled(self, n: int | None = None, augment: bool | None = None) -> Batch:
        """A batch of ``n`` random unlabeled crops (weakly augmented unless disabled)."""
        image, _ = self._crop(self.unlabeled_index, n or self.batch_size, False)
        if self.augment if augment is None else augment:
            image, _ = weak_geometric(image, None, generator=self.generator, fill=self.fill)
        return Batch(image)

    def holdout_batch(self) -> Batch | None:
        """The held-out labeled slices, centre-cropped/padded, no augmentation (or None)."""
        if not self.holdout:
            return None
        image, label = self._crop(self.holdout, len(self.holdout), True, random=False)
        return Batch(image, label)

    def all_slices(self) -> list[tuple[int, int]]:
        return [(v, s) for v, vol in enumerate(self.volumes) for s in range(vol.slices.shape[0])]
