"""Random training batches of labeled and unlabeled slices, on the training device.

Slices are brought to the training size by padding (with the volume's background value,
labels with 0) and random cropping; never resized, so the aspect ratio is kept. The weak
geometric augmentation is applied batched on the device.

Two levers for short budgets, shared by every method (docs/benchmarks.md measures them):

- *foreground-aware crops*: a share ``foreground_crops`` of the labeled crops is placed so
  that a random foreground pixel of the slice lies inside it, so a 128-pixel crop of a
  232-pixel slice does not miss a small structure half of the time;
- *a zero-training prior*: with ``prior_fraction`` > 0, that share of every labeled batch
  comes from the unlabeled slices the prior reaches, with a zero-training result as target
  and per-pixel weights in ``Batch.mask``, times :attr:`SliceSampler.prior_scale` (which
  the trainer lowers as a semi-supervised method's own pseudo-labels take over). The prior
  is the random-walker *propagation* of the labeled slices (:mod:`src_models.propagation`;
  weight 0 where the walk is unsure) by default, or the shape-based *interpolation*
  (:mod:`src_models.interpolation`; 0 near the interpolated boundaries, falling with the
  distance to the labeled slices). The network then learns from the image where the
  propagation is sure and from the labeled slices everywhere: on the development volumes
  it beats both the network without a prior and the propagation alone
  (docs/benchmarks.md, "annotation effort").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from src_models.augment import weak_geometric
from src_models.data.context import check_context, context_channels, slice_with_context
from src_models.data.lazy import LazySlices, UnlabeledWindow
from src_models.data.planes import check_planes, cross_sections
from src_models.data.volumes import Volume
from src_models.errors import SemisegError
from src_models.interpolation import interpolate_slices, prior_weights
from src_models.propagation import Propagation, affordable, propagate

#: fewer labeled slices than this are all needed for training: none is held out and a method
#: that selects on held-out slices (SDCL) keeps its last state instead (with the 3-5 labeled
#: slices of the sparse-slice use, a hold-out of 0.2 would take one of the user's few slices)
MIN_HOLDOUT_LABELED = 10
#: weights travel through the label augmentation quantised to 1/WEIGHT_LEVELS
WEIGHT_LEVELS = 255
PRIORS = ("interpolation", "propagation")
#: the propagation's class probability below which a voxel is not a target (weight 0), and
#: the one from which it is a full target (weights rise linearly between)
PROPAGATION_UNSURE, PROPAGATION_SURE = 0.6, 0.9


def sure_weights(sure: np.ndarray) -> np.ndarray:
    """Per-voxel target weights (float32) from a class probability ``sure`` (the largest of
    the voxel's): 0 below :data:`PROPAGATION_UNSURE`, 1 from :data:`PROPAGATION_SURE`,
    linear between."""
    span = PROPAGATION_SURE - PROPAGATION_UNSURE
    return np.clip((sure - PROPAGATION_UNSURE) / span, 0.0, 1.0).astype(np.float32)


def propagation_targets(
    volume: Volume, labeled: list[int], num_classes: int, ends_labeled: bool = False
) -> tuple[np.ndarray, np.ndarray, Propagation]:
    """Targets (N, H, W) and per-pixel weights (N, H, W) of the random-walker propagation
    of ``volume``'s ``labeled`` slices, and the propagation itself: its class ids, weighted
    by how sure the walk is (:func:`sure_weights`), 0 on slices the propagation does not
    reach (:meth:`SliceSampler.set_prior_targets` takes the annotated voxels out).

    The unannotated voxels (:data:`IGNORE`) of a partly labeled slice, a region correction,
    get the walk's targets as an unlabeled slice does: the walk is seeded by the painted
    voxels themselves, so it is surest next to them. Without them the network saw only the
    painted region of such a slice (often a sliver of one class along a wrong boundary): the
    region corrections of the simulated user (``benchmarks/correction_loop.py``, 3 volumes
    each) gave 45 % and 1 % of the whole-slice gain on the hippocampus with the ends and
    strictly inside, 88 % and 83 % on the left atrium; with the walk's targets 81 %, 52 %,
    92 % and 91 %."""
    # the walk's own class ids: the targets as measured (the area profile of predictions,
    # :mod:`src_models.area_profile`, is not measured as a training target)
    result = propagate(
        volume.slices,
        volume.labels,
        labeled,
        num_classes,
        ends_labeled=ends_labeled,
        match_areas=False,
        ratio=volume.slice_ratio,
    )
    weights = sure_weights(result.probabilities.max(axis=0))
    weights[~result.covered] = 0.0
    return result.labels, weights, result


def background_beyond(targets: np.ndarray, weights: np.ndarray, labeled: list[int]) -> None:
    """Make the slices beyond the outer ``labeled`` ones background targets of full weight,
    in place (``targets``, ``weights``: (N, H, W)): when the user labeled the structure's
    first and last slices there is nothing of it beyond them."""
    lo, hi = min(labeled), max(labeled)
    for part in (slice(0, lo), slice(hi + 1, None)):
        targets[part] = 0
        weights[part] = 1.0


def fitted_patch_size(volumes: list[Volume]) -> int:
    """The smallest multiple of 16 that covers the largest slice side of ``volumes``."""
    side = max(max(v.slices.shape[-2:]) for v in volumes)
    return max(16, -(-side // 16) * 16)


@dataclass
class Batch:
    """image: float (B, C, P, P); label: int64 (B, P, P) or None for unlabeled batches;
    mask: float (B, P, P) per-pixel weights of ``label`` in [0, 1] (0 on unannotated voxels),
    or None (all 1)."""

    image: torch.Tensor
    label: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class SliceSampler:
    """Draws batches of labeled / unlabeled slices of a set of volumes.

    Args:
        volumes: from :func:`make_volumes`.
        patch_size: side of the square training crop (pixels).
        batch_size: default batch size of :meth:`labeled` and :meth:`unlabeled`.
        device: where batches are put.
        seed: seeds the CPU generator used for crops and augmentation.
        holdout_fraction: fraction of the labeled slices kept out of training for model
            selection (at least one slice stays for training); 0 disables it, and so do
            fewer than :data:`MIN_HOLDOUT_LABELED` labeled slices (all are trained on).
        augment: apply the weak geometric augmentation to every batch.
        foreground_crops: share of labeled crops placed over a random foreground pixel.
        prior_fraction: share of each labeled batch drawn from interpolated slices (0: off).
        prior_band: pixels of the ignored band around interpolated boundaries, per slice
            of distance to the nearest labeled slice.
        prior: where the prior's targets come from: ``"interpolation"`` (shape-based,
            weights from :func:`prior_weights`) or ``"propagation"`` (the random walker of
            :mod:`src_models.propagation`, weights from its confidence,
            :func:`propagation_targets`; the interpolation for a volume too large for it).
        ends_labeled: the outer labeled slices are the structure's first and last: the
            propagation stops at them (:func:`src_models.propagation.walk_extend`).
        background_beyond_ends: with ``ends_labeled``, the slices beyond the outer labeled
            ones are prior targets too: background, full weight (the user said nothing of
            the structure lies there).
        context: neighbouring slices on each side fed as channels
            (:mod:`src_models.data.context`); targets stay the middle slice's.
        keep_prior_probabilities: keep the propagation's class probabilities (float16) for
            the refresh of its targets mid-run (:mod:`src_models.training.prior_refresh`).
        planes: 3: the prior's crops come from the volumes cut along all three axes
            (:mod:`src_models.data.planes`; appended to :attr:`volumes` after the given
            ones, unlabeled, :attr:`cross_volumes` of them), 1: along the given axis only.
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
        foreground_crops: float = 0.0,
        prior_fraction: float = 0.0,
        prior_band: float = 1.0,
        prior: str = "propagation",
        ends_labeled: bool = False,
        context: int = 0,
        keep_prior_probabilities: bool = False,
        background_beyond_ends: bool = False,
        planes: int = 1,
    ) -> None:
        planes = check_planes(planes)
        if prior not in PRIORS:
            raise SemisegError(f"prior must be one of {', '.join(PRIORS)}, not {prior!r}")
        if not (0.0 <= foreground_crops <= 1.0 and 0.0 <= prior_fraction < 1.0):
            raise SemisegError(
                "foreground_crops must be in [0, 1] and prior_fraction in [0, 1), got "
                f"{foreground_crops} and {prior_fraction}"
            )
        if patch_size < 16 or patch_size % 16:
            raise SemisegError(f"patch size {patch_size} must be a multiple of 16 (>= 16)")
        #: the given volumes, then the cross-sections of those with a prior (``planes`` 3)
        self.volumes = list(volumes)
        #: a crop larger than every slice would only add padding: capped at the largest
        #: slice side rounded up to 16 (hippocampus slices of 51 x 35 pixels train at 64)
        self.patch_size = min(patch_size, fitted_patch_size(volumes))
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.augment = augment
        self.generator = torch.Generator().manual_seed(seed)
        labeled = [(v, s) for v, vol in enumerate(volumes) for s in vol.labeled]
        if not labeled:
            raise SemisegError("no labeled slice: label at least one slice before training")
        self.holdout: list[tuple[int, int]] = []
        if holdout_fraction > 0 and len(labeled) >= MIN_HOLDOUT_LABELED:
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
        #: volumes larger than memory: unlabeled crops come from a rotating, prefetched
        #: window of slabs (in memory: from every unlabeled slice)
        lazy = any(isinstance(v.slices, LazySlices) for v in volumes)
        self.window = UnlabeledWindow(volumes, self.unlabeled_index, seed) if lazy else None
        self.context = check_context(context)
        #: the network's inputs: each slice's channels, times its neighbours with context
        self.in_channels = context_channels(volumes[0].slices.shape[1], self.context)
        #: value for pixels rotated in from outside a crop: the volumes' mean background
        self.fill = float(np.mean([v.background for v in volumes]))
        self.foreground_crops = float(foreground_crops)
        self.prior_fraction = float(prior_fraction)
        #: multiplies the prior's weights (the trainer lowers it as pseudo-labels take over)
        self.prior_scale = 1.0
        self.num_classes = max(
            [2] + [int(v.labels.max()) + 1 for v in volumes if v.labels is not None]
        )
        #: some labels mark unannotated voxels (decided once, not per batch: on a GPU the
        #: per-batch test would wait for the device)
        self.has_ignore = any(int(v.labels.min()) < 0 for v in volumes if v.labels is not None)
        # The prior: per volume (labels, weights) from the labeled slices that are not held
        # out (held-out slices must not leak into it).
        held = set(self.holdout)
        self.prior_targets: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.prior_index: list[tuple[int, int]] = []
        #: per volume with the propagation as prior, its class probabilities (K, N, H, W)
        #: float16, for the refresh of the targets (:mod:`src_models.training.prior_refresh`)
        self.prior_probabilities: dict[int, np.ndarray] = {}
        #: ... and the slices (N,) bool the refreshed targets may cover: those the walk
        #: reaches, and with ``ends_labeled`` every slice (beyond the ends the user said
        #: there is nothing; elsewhere the fused output is background there by construction,
        #: not by evidence, and must not be taught)
        self.prior_reach: dict[int, np.ndarray] = {}
        self._foreground: dict[tuple[str, int, int], np.ndarray] = {}
        if prior_fraction > 0:
            for v, vol in enumerate(volumes):
                used = [s for s in vol.labeled if (v, s) not in held]
                if not isinstance(vol.labels, np.ndarray) or len(used) < 2:
                    continue  # unlabeled, or larger than memory (no interpolation prior)
                in_memory = isinstance(vol.slices, np.ndarray)
                walkable = affordable(vol.labels.shape, used, ends_labeled)
                if prior == "propagation" and in_memory and walkable:
                    targets, weights, walk = propagation_targets(
                        vol, used, self.num_classes, ends_labeled
                    )
                    if keep_prior_probabilities:
                        self.prior_probabilities[v] = walk.probabilities.astype(np.float16)
                        self.prior_reach[v] = walk.covered | ends_labeled
                else:
                    interp = interpolate_slices(vol.labels, used, self.num_classes)
                    targets = interp.labels
                    weights = prior_weights(interp, band_per_slice=prior_band)
                if ends_labeled and background_beyond_ends:
                    background_beyond(targets, weights, vol.labeled)
                self.set_prior_targets(v, targets, weights)
        #: how many of :attr:`volumes` are cross-sections (``planes`` 3), and for each of
        #: them (by index in :attr:`volumes`) the volume it was cut from and its axis
        self.cross_volumes = 0
        self.cross_sources: dict[int, tuple[int, int]] = {}
        if planes > 1:
            self._add_cross_sections(held)

    def _add_cross_sections(self, held: set[tuple[int, int]]) -> None:
        """Append the cross-sections of every volume with prior targets
        (:func:`~src_models.data.planes.cross_sections`): their slices become prior crops
        (and unlabeled crops of the semi-supervised methods)."""
        for v in sorted(self.prior_targets):
            volume = self.volumes[v]
            targets, weights = self.prior_targets[v]
            trained = [s for s in volume.labeled if (v, s) not in held]
            for cross in cross_sections(volume, targets, weights, trained):
                c = len(self.volumes)
                self.volumes.append(cross.volume)
                self.cross_volumes += 1
                self.cross_sources[c] = (v, cross.volume.axis)
                self.set_prior_targets(c, cross.targets, cross.weights)
                self.unlabeled_index += [(c, s) for s in range(cross.volume.slices.shape[0])]

    def set_prior_targets(self, v: int, targets: np.ndarray, weights: np.ndarray) -> None:
        """The prior's targets (N, H, W) and weights (N, H, W, set to 0 in place where the
        prior must not train: the annotated voxels of labeled slices, which train as
        labeled; held-out slices; slices beyond :attr:`prior_reach`) of volume ``v``: its
        crops come from the slices with a weight above 0 (unlabeled slices the prior
        reaches, and partly labeled ones)."""
        volume, held = self.volumes[v], set(self.holdout)
        for s in volume.labeled:
            if (v, s) in held:
                weights[s] = 0.0  # never trained on
            else:
                weights[s][np.asarray(volume.labels[s]) >= 0] = 0.0
        if v in self.prior_reach:
            weights[~self.prior_reach[v]] = 0.0
        slices = [int(s) for s in np.flatnonzero(weights.reshape(len(weights), -1).max(1))]
        self.prior_index = [pair for pair in self.prior_index if pair[0] != v]
        self.prior_targets.pop(v, None)
        self._foreground = {
            key: px for key, px in self._foreground.items() if key[:2] != ("prior", v)
        }
        if slices:
            self.prior_targets[v] = (targets, weights)
            self.prior_index += [(v, s) for s in slices]

    # -- state for resumable runs -------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state()}
        if self.window is not None:
            state["window"] = self.window.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        if self.window is not None and "window" in state:
            self.window.load_state_dict(state["window"])

    # -- batches -----------------------------------------------------------------------
    def _target(self, source: str, v: int, s: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(labels (H, W), weights (H, W) or None = all 1) of slice s of volume v."""
        if source == "prior":
            labels, weights = self.prior_targets[v]
            return labels[s], weights[s]
        return self.volumes[v].labels[s], None

    def _foreground_pixels(self, source: str, v: int, s: int) -> np.ndarray:
        key = (source, v, s)
        if key not in self._foreground:
            self._foreground[key] = np.argwhere(self._target(source, v, s)[0] > 0)
        return self._foreground[key]

    def _offset(self, size: int, p: int, u: float, centre: int | None, v: float) -> int:
        """Top-left corner of a window of size p over [0, size): uniform (u), or uniform
        among the windows that contain pixel ``centre`` (v)."""
        if size < p:
            return -int(u * (p - size + 1))
        lo, hi = 0, size - p
        if centre is not None:
            lo, hi = max(lo, centre - p + 1), min(hi, centre)
        return lo + int((u if centre is None else v) * (hi - lo + 1) * 0.999999)

    def _crop(self, pairs, n: int, with_labels: bool, random: bool = True, source="labels"):
        """Crops of ``n`` slices of ``pairs``; with labels, also their weights (or None)."""
        p = self.patch_size
        c = self.in_channels
        images = np.empty((n, c, p, p), dtype=np.float32)
        labels = np.zeros((n, p, p), dtype=np.int64) if with_labels else None
        weights = None
        if with_labels and source == "prior":
            weights = np.ones((n, p, p), dtype=np.float32)
        if random:
            picks = torch.randint(0, len(pairs), (n,), generator=self.generator).tolist()
            offsets = torch.rand(n, 2, generator=self.generator)
            extra = (
                torch.rand(n, 3, generator=self.generator)
                if with_labels and self.foreground_crops > 0
                else torch.ones(n, 3)  # no draw: the stream stays that of plain crops
            )
            offsets = torch.cat([offsets, extra], dim=1).tolist()
        else:
            picks = list(range(n))
            offsets = [[0.5, 0.5, 1.0, 0.5, 0.5]] * n
        for i, (pick, (oy, ox, u_fg, u_px, u_in)) in enumerate(zip(picks, offsets, strict=True)):
            v, s = pairs[pick]
            vol = self.volumes[v]
            sl = slice_with_context(vol.slices, s, self.context)
            h, w = sl.shape[-2:]
            cy = cx = None
            if with_labels and u_fg < self.foreground_crops:
                fg = self._foreground_pixels(source, v, s)
                if len(fg):
                    cy, cx = (int(a) for a in fg[min(int(u_px * len(fg)), len(fg) - 1)])
            # Window of size p placed over the (possibly smaller) slice.
            y0 = self._offset(h, p, oy, cy, u_in)
            x0 = self._offset(w, p, ox, cx, 1.0 - u_in if cy is not None else ox)
            sy, sx = max(y0, 0), max(x0, 0)
            ey, ex = min(y0 + p, h), min(x0 + p, w)
            images[i] = vol.background
            images[i, :, sy - y0 : ey - y0, sx - x0 : ex - x0] = sl[:, sy:ey, sx:ex]
            if with_labels:
                lab, wts = self._target(source, v, s)
                labels[i, sy - y0 : ey - y0, sx - x0 : ex - x0] = lab[sy:ey, sx:ex]
                if weights is not None and wts is not None:
                    weights[i, sy - y0 : ey - y0, sx - x0 : ex - x0] = wts[sy:ey, sx:ex]
        image = torch.from_numpy(images).to(self.device)
        label = None if labels is None else torch.from_numpy(labels).to(self.device)
        if weights is not None:
            return image, label, torch.from_numpy(weights).to(self.device)
        return image, label

    def n_prior(self, n: int) -> int:
        """How many of ``n`` labeled crops come from interpolated slices."""
        if not self.prior_index or self.prior_scale <= 0 or n < 2:
            return 0
        return min(n - 1, int(round(self.prior_fraction * n)))

    def labeled(self, n: int | None = None, augment: bool | None = None) -> Batch:
        """A batch of ``n`` random labeled crops (weakly augmented unless disabled); with the
        interpolation prior on, part of them are interpolated slices and ``mask`` holds the
        per-pixel weights (1 on annotated slices)."""
        n = n or self.batch_size
        n_prior = self.n_prior(n)
        image, label = self._crop(self.labeled_index, n - n_prior, True)
        mask = None
        if n_prior:
            p_image, p_label, p_weight = self._crop(self.prior_index, n_prior, True, source="prior")
            image, label = torch.cat([image, p_image]), torch.cat([label, p_label])
            mask = torch.cat(
                [
                    torch.ones_like(p_weight[:1]).expand(n - n_prior, -1, -1),
                    p_weight * self.prior_scale,
                ]
            )
        if self.has_ignore and (label < 0).any():  # unannotated (IGNORE): weight 0
            known = (label >= 0).float()
            mask = known if mask is None else mask * known
            label = label.clamp(min=0)
        if self.augment if augment is None else augment:
            if mask is None:
                image, label = weak_geometric(
                    image, label, generator=self.generator, fill=self.fill
                )
            else:
                # The weights ride along in the label ids (nearest-neighbour resampling keeps
                # values), quantised; pixels rotated in from outside the crop get weight 0.
                k = self.num_classes
                level = torch.round(mask.clamp(0, 1) * WEIGHT_LEVELS).long()
                image, coded = weak_geometric(
                    image, label + k * level, generator=self.generator, fill=self.fill
                )
                label = coded % k
                mask = (coded // k).float() / WEIGHT_LEVELS
        return Batch(image, label, mask)

    def unlabeled(self, n: int | None = None, augment: bool | None = None) -> Batch:
        """A batch of ``n`` random unlabeled crops (weakly augmented unless disabled)."""
        pairs = self.unlabeled_index if self.window is None else self.window.pairs()
        image, _ = self._crop(pairs, n or self.batch_size, False)
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
