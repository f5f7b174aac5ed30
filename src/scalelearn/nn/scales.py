"""Parameterisations of the internal scales σ_0 < … < σ_{N−1} (SPEC §3).

One InternalScales module per network: every scale-equivariant layer of the network uses the
scales it returns. All modes start at σ_i = σ_b · r^i with r = ISR^{1/(N−1)}.

| mode                  | θ            | init     | σ_i                               |
|-----------------------|--------------|----------|-----------------------------------|
| fixed                 | none         | –        | σ_b · r^i                         |
| direct                | N values     | σ_b·r^i  | θ_i   (σ_b unused and frozen)      |
| ratio                 | N−1 values   | r − 1    | σ_b · ∏_{j<i} (1 + θ_j)           |
| ratio_squared         | N−1 values   | √(r − 1) | σ_b · ∏_{j<i} (1 + θ_j²)          |
| single_ratio          | scalar       | r − 1    | σ_b · (1 + leaky_relu(θ))^i       |
| single_ratio_squared  | scalar       | √(r − 1) | σ_b · (1 + θ²)^i  (ISR = (1+θ²)^{N−1}) |
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# SCALE_MODES: the modes of the table above, from the schema. MIN_SCALE, min_scale(k): the smallest
# scale allowed (σ_b and the projection's bound), in settings (torch-free) so that the config
# validation checks sigma_basis against the same value.
from scalelearn.settings import MIN_SCALE, SCALE_MODES, min_scale

__all__ = ["MIN_SCALE", "SCALE_MODES", "InternalScales", "initial_scales", "min_scale"]


def initial_scales(sigma_basis: float, isr: float, num_scales: int) -> list[float]:
    """σ_b · r^i, r = ISR^{1/(N−1)}, in float64."""
    ratio = isr ** (1.0 / (num_scales - 1)) if num_scales > 1 else 1.0
    return [sigma_basis * ratio**i for i in range(num_scales)]


class InternalScales(nn.Module):
    """Returns the current internal scales [N] of one network.

    `sigma_basis` is a parameter in every mode; it is trained only when `learn_sigma_basis` is set
    (never in `direct` mode, where it is unused). θ (`theta`) exists for the learnable modes.
    `min_scale`: the smallest scale allowed, for σ_b at construction and for the projection
    `constrain_` (MIN_SCALE, or `min_scale(kernel_size_k)` of the network's basis).
    """

    def __init__(
        self,
        mode: str = "fixed",
        num_scales: int = 3,
        sigma_basis: float = 2.0,
        isr: float = 3.0,
        learn_sigma_basis: bool = False,
        min_scale: float = MIN_SCALE,
    ):
        super().__init__()
        if mode not in SCALE_MODES:
            raise ValueError(f"unknown scale_mode {mode!r}; allowed: {', '.join(SCALE_MODES)}")
        if sigma_basis < min_scale or isr < 1 or num_scales < 1:
            raise ValueError(
                f"need sigma_basis >= {min_scale:.4g} (the smallest scale at which the basis is "
                f"defined), isr >= 1, num_scales >= 1; got {sigma_basis}, {isr}, {num_scales}"
            )
        self.mode = mode
        self.min_scale = float(min_scale)
        self.num_scales = num_scales
        ratio = isr ** (1.0 / (num_scales - 1)) if num_scales > 1 else 1.0
        learn_sigma_basis = learn_sigma_basis and mode != "direct"
        self.sigma_basis = nn.Parameter(torch.tensor(float(sigma_basis)), learn_sigma_basis)
        steps = num_scales - 1
        if mode == "fixed":
            self.theta = None
            self.register_buffer("powers", torch.tensor([ratio**i for i in range(num_scales)]))
        elif mode == "direct":
            theta = initial_scales(sigma_basis, isr, num_scales)
        elif mode == "ratio":
            theta = [ratio - 1.0] * steps
        elif mode == "ratio_squared":
            theta = [math.sqrt(ratio - 1.0)] * steps
        elif mode == "single_ratio":
            theta = ratio - 1.0
        else:  # single_ratio_squared
            theta = math.sqrt(ratio - 1.0)
        if mode != "fixed":
            self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float32))
        self.register_buffer("exponents", torch.arange(num_scales, dtype=torch.float32))

    def forward(self) -> Tensor:
        """-> scales [N]."""
        sigma_b, theta = self.sigma_basis, self.theta
        if self.mode == "fixed":
            return sigma_b * self.powers
        if self.mode == "direct":
            return theta
        if self.mode in ("ratio", "ratio_squared"):
            factors = 1 + (theta if self.mode == "ratio" else theta * theta)
            cumulative = torch.cumprod(torch.cat([factors.new_ones(1), factors]), 0)
            return sigma_b * cumulative
        if self.mode == "single_ratio":
            return sigma_b * (1 + F.leaky_relu(theta)) ** self.exponents
        return sigma_b * (1 + theta * theta) ** self.exponents

    def extra_repr(self) -> str:
        with torch.no_grad():
            scales = self.forward()
        values = ", ".join(f"{float(v):.4g}" for v in scales)
        learned = "sigma_basis learned" if self.sigma_basis.requires_grad else "sigma_basis frozen"
        return f"{self.mode}, num_scales={self.num_scales}, scales=[{values}], {learned}"

    def isr(self) -> float:
        scales = self.forward().detach()
        return float(scales.max() / scales.min())

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the parameters back to positive, ordered scales after an optimiser step.

        Only `direct` and `ratio` can leave that set (the squared modes and `fixed` cannot);
        σ_b is kept at `min_scale` or above in every mode, and so are the `direct` scales: in every
        mode but `single_ratio` (whose leaky factor may shrink the scales) σ_b, or the first
        `direct` scale, is then the smallest scale, and the basis stays defined (see MIN_SCALE).
        """
        # A fixed σ_b is >= min_scale from the start (__init__), and left unwritten: a write
        # would make the cached basis (SharedBasis) stale and recomputed after every step.
        if self.sigma_basis.requires_grad:
            self.sigma_basis.clamp_(min=self.min_scale)
        if self.mode == "direct":
            self.theta.copy_(torch.sort(self.theta.clamp(min=self.min_scale)).values)
        elif self.mode == "ratio":
            self.theta.clamp_(min=0.0)
