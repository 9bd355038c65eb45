"""Volumes, their normalisation, labeled-slice bookkeeping and batch sampling."""

from src_models.data.normalization import Normalization, fit_normalization
from src_models.data.sampler import Batch, SliceSampler
from src_models.data.volumes import Volume, make_volumes

__all__ = ["Batch", "Normalization", "SliceSampler", "Volume", "fit_normalization", "make_volumes"]
