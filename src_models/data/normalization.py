"""Per-volume robust intensity normalisation: percentile clip, then z-score.

The *scheme* (percentiles) is stored in every checkpoint; each volume, at training and at
inference, is normalised with statistics computed on itself with that scheme, so a volume
predicted after training goes through exactly the transform it went through during training.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from src_models.errors import SemisegError


@dataclass(frozen=True)
class Normalization:
    """Statistics of one volume: clip to [low, high], then (x - mean) / std (per channel)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalise ``image`` of shape (C, ...) to float32."""
        out = np.empty(image.shape, dtype=np.float32)
        for c in range(image.shape[0]):
            clipped = np.clip(image[c].astype(np.float32), self.low[c], self.high[c])
            out[c] = (clipped - self.mean[c]) / self.std[c]
        return out

    def invert(self, normalised: np.ndarray) -> np.ndarray:
        """Map normalised intensities back to (clipped) original intensities."""
        out = np.empty(normalised.shape, dtype=np.float32)
        for c in range(normalised.shape[0]):
            out[c] = normalised[c] * self.std[c] + self.mean[c]
        return out

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Normalization:
        return cls(**{k: tuple(float(x) for x in d[k]) for k in ("low", "high", "mean", "std")})


#: volumes with more voxels (per channel) get statistics from a sample of planes
EXACT_VOXELS = 64 * 2**20
#: voxels per channel in that sample
SAMPLE_VOXELS = 16 * 2**20


def sample_normalization(
    image, percentiles: tuple[float, float] = (0.5, 99.5), max_voxels: int = SAMPLE_VOXELS
) -> Normalization:
    """Statistics of a (C, Z, Y, X) array-like from evenly spaced Z planes (at most
    ``max_voxels`` per channel): what a volume larger than memory is normalised with; the
    planes depend only on the shape, so training and prediction compute the same numbers."""
    c, z, *plane = image.shape
    k = int(min(z, max(1, max_voxels // max(1, int(np.prod(plane))))))
    planes = np.unique(np.linspace(0, z - 1, k).round().astype(int))
    sample = np.stack([np.asarray(image[:, int(i)]) for i in planes], axis=1)
    return fit_normalization(sample, percentiles)


def fit_normalization(
    image: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> Normalization:
    """Compute clip bounds and z-score statistics of ``image`` (C, ...) per channel; a
    (C, Z, Y, X) volume of more than :data:`EXACT_VOXELS` voxels per channel uses
    :func:`sample_normalization`.

    A channel whose percentiles coincide (a sparse image, mostly one value) keeps its full
    range. A constant channel of a multi-channel image (e.g. the empty blue channel of a
    two-colour RGB image) normalises to 0 and carries no information; raises SemisegError
    for NaN/inf intensities, values beyond float32 or an image whose channels are all
    constant.
    """
    if len(image.shape) == 4 and int(np.prod(image.shape[1:])) > EXACT_VOXELS:
        return sample_normalization(image, percentiles)
    lows, highs, means, stds = [], [], [], []
    constant = []
    for c in range(image.shape[0]):
        raw = np.asarray(image[c])
        if raw.dtype.kind == "f" and not np.all(np.isfinite(raw)):
            raise SemisegError(
                "the image contains NaN or infinite intensities: fill or mask them "
                "(e.g. numpy.nan_to_num) before segmenting"
            )
        with np.errstate(over="ignore"):
            channel = np.asarray(raw, dtype=np.float32)  # (no copy of a float32 image)
        # only floats wider than float32 can overflow it (integers up to 2^64 fit)
        if raw.dtype.kind == "f" and raw.dtype.itemsize > 4 and not np.all(np.isfinite(channel)):
            big = float(np.max(np.abs(raw.astype(np.float64))))
            raise SemisegError(
                f"the image holds intensities up to {big:.3g}, beyond what float32 holds "
                "(3.4e38): rescale the image (e.g. divide it by a power of ten) first"
            )
        lo, hi = np.percentile(channel, percentiles)
        if hi <= lo:
            # A sparse image (e.g. fluorescence: > 99.5 % of the voxels are 0) has equal
            # percentiles: clipping would erase the signal. Keep its full range instead.
            lo, hi = float(channel.min()), float(channel.max())
        clipped = np.clip(channel, lo, hi)
        mean, std = float(clipped.mean()), float(clipped.std())
        if hi <= lo or std < 1e-8:  # constant: every voxel normalises to 0
            constant.append(c)
            lo = hi = mean = float(channel.flat[0]) if channel.size else 0.0
            std = 1.0
        lows.append(float(lo))
        highs.append(float(hi))
        means.append(mean)
        stds.append(std)
    if len(constant) == image.shape[0]:
        which = "the image is" if len(constant) == 1 else "every channel of the image is"
        raise SemisegError(
            f"{which} constant (or empty): there is nothing to segment; check that the "
            "right file or layer was chosen"
        )
    return Normalization(tuple(lows), tuple(highs), tuple(means), tuple(stds))
