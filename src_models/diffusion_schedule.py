"""DDPM forward process: the sigmoid β schedule, q(x_t | x_0) and the x0 / ε conversions.

Follows ``denoising_diffusion_pytorch`` (lucidrains), ``denoising_diffusion_pytorch.py``:
``sigmoid_beta_schedule`` (Jabri et al. 2022, arXiv 2212.11972, Fig. 8), and the
``GaussianDiffusion`` methods ``q_sample``, ``predict_start_from_noise`` and
``predict_noise_from_start``. Symbols: β_t, α_t = 1 − β_t, ᾱ_t = Π_{s≤t} α_s, t = 0..T−1.

Closed form of the schedule (no clipping): with σ the logistic function,
``f(s) = (σ(end/τ) − σ((s·(end − start) + start)/τ)) / (σ(end/τ) − σ(start/τ))`` and
``ᾱ_t = f((t + 1)/T) / f(0)``. Only the last step is clipped (β ≤ 0.999, because
f(1) = 0), so ``ᾱ_{T−1} = 0.001·ᾱ_{T−2}`` instead of 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sigmoid_beta_schedule(
    timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> torch.Tensor:
    """β_t (float64, shape (T,)) of the sigmoid schedule, clipped to [0, 0.999]."""
    s = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64) / timesteps
    v_start = torch.tensor(start / tau, dtype=torch.float64).sigmoid()
    v_end = torch.tensor(end / tau, dtype=torch.float64).sigmoid()
    alpha_bar = (v_end - ((s * (end - start) + start) / tau).sigmoid()) / (v_end - v_start)
    alpha_bar = alpha_bar / alpha_bar[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(0.0, 0.999)


def sigmoid_alpha_bar_closed_form(
    t: int, timesteps: int, start: float = -3.0, end: float = 3.0, tau: float = 1.0
) -> float:
    """ᾱ_t from the closed form above (valid for t < T − 1, where no β is clipped)."""

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    def f(s: float) -> float:
        return (sig(end / tau) - sig((s * (end - start) + start) / tau)) / (
            sig(end / tau) - sig(start / tau)
        )

    return f((t + 1) / timesteps) / f(0.0)


def _extract(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to (B, 1, ..., 1) for broadcasting over a (B, ...) tensor."""
    return values[t].reshape(t.shape[0], *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """Tables of the forward process; buffers are not persistent (rebuilt from ``T``).

    Args:
        timesteps: T, the number of diffusion steps.
    """

    def __init__(self, timesteps: int = 1000) -> None:
        super().__init__()
        if timesteps < 2:
            raise ValueError("the diffusion needs at least 2 timesteps")
        self.timesteps = int(timesteps)
        betas = sigmoid_beta_schedule(self.timesteps)
        alpha_bar = torch.cumprod(1 - betas, dim=0)

        def buf(name: str, value: torch.Tensor) -> None:
            self.register_buffer(name, value.float(), persistent=False)

        buf("betas", betas)
        buf("alpha_bar", alpha_bar)
        buf("sqrt_alpha_bar", alpha_bar.sqrt())
        buf("sqrt_one_minus_alpha_bar", (1 - alpha_bar).sqrt())
        buf("sqrt_recip_alpha_bar", (1 / alpha_bar).sqrt())
        buf("sqrt_recipm1_alpha_bar", (1 / alpha_bar - 1).sqrt())

    def sample_t(
        self, n: int, device: torch.device | str, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """n uniform timesteps in [0, T) (int64), drawn on the CPU when a generator is given."""
        if generator is not None:
            return torch.randint(0, self.timesteps, (n,), generator=generator).to(device)
        return torch.randint(0, self.timesteps, (n,), device=device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x_0 + √(1 − ᾱ_t)·ε."""
        return (
            _extract(self.sqrt_alpha_bar, t, x0.ndim) * x0
            + _extract(self.sqrt_one_minus_alpha_bar, t, x0.ndim) * noise
        )

    def predict_start_from_noise(
        self, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """x_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1)·ε (inverse of :meth:`q_sample` given ε)."""
        return (
            _extract(self.sqrt_recip_alpha_bar, t, x_t.ndim) * x_t
            - _extract(self.sqrt_recipm1_alpha_bar, t, x_t.ndim) * noise
        )

    def predict_noise_from_start(
        self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor
    ) -> torch.Tensor:
        """ε = (x_t/√ᾱ_t − x_0) / √(1/ᾱ_t − 1)."""
        return (_extract(self.sqrt_recip_alpha_bar, t, x_t.ndim) * x_t - x0) / _extract(
            self.sqrt_recipm1_alpha_bar, t, x_t.ndim
        )
