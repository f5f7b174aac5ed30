"""The Hermite-Gaussian basis of SESN at N internal scales (SPEC §2), differentiable in the scales.

Every basis function is separable: f(u, v) = ψ_a(u) · ψ_b(v), with u the offset along the first
spatial axis (rows) and v along the second (columns). So the whole basis is held as a small table of
1-D functions ("profiles") per scale, plus, for every 2-D function, the index of its row profile and
of its column profile. The dense [F, S, K, K] basis is one outer product away, and a separable
convolution can use the profiles directly.

1-D function: ψ_n(x; σ) = σ⁻¹ · exp(−x²/(2σ²)) · He_n(x/σ), He_n the probabilists' Hermite
polynomial, x on integer offsets −K//2 … K//2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scalelearn.settings import BASES as BASIS_TYPES  # ("hermite_a", "hermite_b")

# Piecewise-constant sizes are computed from scales rounded to this many decimals, so that float32
# noise in learned parameters (σ_max = 6.0000005) does not change K (SPEC §2: σ_max 6 gives K 49).
_SIZE_DECIMALS = 4


def kernel_size(scales: Tensor, k: float) -> int:
    """K = max(3, 2·⌈k·σ_max⌉ + 1), computed in float64 from the current scales."""
    sigma_max = float(scales.detach().double().max())
    return max(3, 2 * math.ceil(round(k * sigma_max, _SIZE_DECIMALS)) + 1)


def supports(scales: Tensor, size: int) -> list[int]:
    """Odd support of every scale: n_s = 2·⌊⌊K·σ_s/σ_max⌋/2⌋ + 1 (the largest scale gets K)."""
    s = scales.detach().double()
    ratio = s / s.max()
    return [2 * (math.floor(round(size * float(r), _SIZE_DECIMALS)) // 2) + 1 for r in ratio]


def hermite_1d(x: Tensor, sigma: Tensor, max_order: int) -> Tensor:
    """ψ_n(x; σ) for n = 0..max_order, broadcasting x against σ.

    x: [..., L], sigma: [..., 1] (broadcastable) -> [max_order + 1, ..., L]. The three-term
    recurrence He_{n+1}(t) = t·He_n(t) − n·He_{n−1}(t) runs over the polynomial degree only
    (at most a handful of steps); every scale, sub-sigma and offset is computed at once.
    """
    t = x / sigma
    envelope = torch.exp(-0.5 * t * t) / sigma
    polys = [torch.ones_like(t), t]
    for n in range(1, max_order):
        polys.append(t * polys[n] - n * polys[n - 1])
    return torch.stack(polys[: max_order + 1]) * envelope


def function_orders(
    basis: str, effective_size: int, max_order: int = 4
) -> list[tuple[int, int, int]]:
    """(i, j, m) for every 2-D function, in the authors' order: ψ_j(u)·ψ_i(v) at sub-sigma index m.

    hermite_a: all (i, j) in {0..eff−1}², function k = i·eff + j, m = 0; F = eff².
    hermite_b: the pairs with i + j ≤ max_order ((0,0..M), (1,0..M−1), …), repeated at sub-sigmas
    σ/mult^m for m = 0, 1, … and truncated to F = eff² (eff 7: 15+15+15+4; eff 5: 15+10).
    """
    if basis == "hermite_a":
        return [(i, j, 0) for i in range(effective_size) for j in range(effective_size)]
    if basis == "hermite_b":
        pairs = [(i, j) for i in range(max_order + 1) for j in range(max_order + 1 - i)]
        count = effective_size**2
        return [(*pairs[k % len(pairs)], k // len(pairs)) for k in range(count)]
    raise ValueError(f"unknown basis {basis!r}; allowed: {', '.join(BASIS_TYPES)}")


@dataclass
class ScaleBasis:
    """The basis evaluated at the current internal scales.

    profiles:  [S, P, K] masked, normalised 1-D functions (P = distinct (order, sub-sigma) pairs).
    row_index: [F] long, the profile along the first spatial axis of every 2-D function.
    col_index: [F] long, the profile along the second spatial axis.
    supports:  odd support n_s of every scale (values outside it are zero).
    """

    profiles: Tensor
    row_index: Tensor
    col_index: Tensor
    supports: list[int]

    @property
    def kernel_size(self) -> int:
        return self.profiles.shape[-1]

    @property
    def num_scales(self) -> int:
        return self.profiles.shape[0]

    @property
    def num_functions(self) -> int:
        return self.row_index.numel()

    def dense(self) -> Tensor:
        """The 2-D basis [F, S, K, K]: basis[f, s, u, v] = ψ_row(f)(u; σ_s) · ψ_col(f)(v; σ_s)."""
        rows = self.profiles[:, self.row_index]  # [S, F, K]
        cols = self.profiles[:, self.col_index]
        return (rows[..., :, None] * cols[..., None, :]).transpose(0, 1)


class HermiteBasis(nn.Module):
    """Builds the ScaleBasis of one basis type for given internal scales.

    It holds no learnable parameters: the scales come from the network's InternalScales module, so
    one basis computed per forward pass serves every layer of the network.
    """

    def __init__(
        self,
        basis: str = "hermite_a",
        effective_size: int = 5,
        kernel_size_k: float = 4.0,
        mult: float = 1.4,
        max_order: int = 4,
    ):
        super().__init__()
        orders = function_orders(basis, effective_size, max_order)
        # Distinct 1-D profiles (order, sub-sigma index) used by the 2-D functions.
        profile_keys = sorted({(j, m) for _, j, m in orders} | {(i, m) for i, _, m in orders})
        position = {key: p for p, key in enumerate(profile_keys)}
        self.basis_type = basis
        self.effective_size = effective_size
        self.kernel_size_k = kernel_size_k
        self.mult = mult
        self.max_order = max(n for n, _ in profile_keys)
        self.register_buffer("row_index", torch.tensor([position[(j, m)] for _, j, m in orders]))
        self.register_buffer("col_index", torch.tensor([position[(i, m)] for i, _, m in orders]))
        self.register_buffer("profile_order", torch.tensor([n for n, _ in profile_keys]))
        self.register_buffer("profile_subsigma", torch.tensor([m for _, m in profile_keys]))

    @property
    def num_functions(self) -> int:
        return self.row_index.numel()

    def extra_repr(self) -> str:
        text = f"{self.basis_type}, effective_size={self.effective_size}, F={self.num_functions}"
        text += f", kernel_size_k={self.kernel_size_k}"
        if self.basis_type == "hermite_b":
            text += f", mult={self.mult}, max_order={self.max_order}"
        return text

    def forward(self, scales: Tensor) -> ScaleBasis:
        """scales: [S] positive internal scales -> ScaleBasis with profiles [S, P, K].

        Every profile is divided by its L2 norm at the smallest scale (SPEC §2). The basis is
        complete from a smallest scale of scales.min_scale(k) up (support >= 3 px there); below
        it, a profile that is 0 at the smallest scale is returned as 0 at every scale, not NaN.
        """
        # The sizes come from the scales' values: read them from the device once (each read
        # waits for the GPU to finish all queued work, and leaves it idle until the next launch).
        host = scales.detach().to("cpu", torch.float64)
        size = kernel_size(host, self.kernel_size_k)
        support = supports(host, size)
        half = size // 2
        x = torch.arange(-half, half + 1, dtype=scales.dtype, device=scales.device)
        # Sub-sigmas σ_s / mult^m, computed in the dtype of the scales (float64 in tests).
        divisor = self.mult ** self.profile_subsigma.to(scales.dtype)
        sigma = scales[:, None, None] / divisor[None, :, None]
        table = hermite_1d(x, sigma, self.max_order)  # [orders, S, P, K]
        p = torch.arange(self.profile_order.numel(), device=scales.device)
        profiles = table[self.profile_order, :, p].transpose(0, 1)  # [S, P, K]
        # Made on the CPU and sent without waiting (a tensor made on the GPU from a list waits).
        half_support = torch.tensor([(n - 1) // 2 for n in support])
        offsets = torch.arange(-half, half + 1).abs()
        mask = (offsets[None, :] <= half_support[:, None]).to(scales.device, non_blocking=True)
        profiles = profiles * mask[:, None, :]
        # Normalise every function by its L2 norm at the smallest scale; the 2-D norm of a
        # separable function is the product of its profiles' norms.
        smallest = int(torch.argmin(host))
        squared = profiles[smallest].pow(2).sum(-1)  # [P]
        # A profile that is 0 on the smallest scale's support has no such norm: the odd orders
        # on a 1-px support (a smallest scale below scales.min_scale(k), which the networks
        # never reach), or a float32 underflow of a tiny sub-sigma. It is left out (0 at every
        # scale) rather than divided by 0 into NaN; the `where` keeps its gradient finite too.
        # Every other profile is divided by exactly the same norm as before.
        defined = squared > 0
        norms = torch.where(defined, squared, 1.0).sqrt()
        profiles = profiles / norms[None, :, None] * defined[None, :, None]
        return ScaleBasis(profiles, self.row_index, self.col_index, support)
