"""Scale-equivariant convolutions (SPEC §4) over a ScaleBasis.

Weights W[Cout, Cin, F] are shared by all scales; the filter at scale s is
κ_s = Σ_f W[…, f] · basis[f, s]. Two implementations give the same numbers:
- `dense`: the reference, as in the authors' code: one conv2d with the zero-padded K×K kernels.
- `fast`: per layer shape the fastest of three exact methods (scalelearn.nn.fast_conv), the default.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalelearn.nn import fast_conv
from scalelearn.nn.hermite import ScaleBasis


def multiscale_kernel(weight: Tensor, basis: ScaleBasis) -> Tensor:
    """weight [Cout, Cin, F] -> kernels [S, Cout, Cin, K, K]."""
    return torch.einsum("oif,fsuv->soiuv", weight, basis.dense())


def z2h_dense(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """Z2→H reference: x [B, Cin, H, W] -> [B, Cout, S, H, W], zero padding K//2, stride 1."""
    kernel = multiscale_kernel(weight, basis)  # [S, Cout, Cin, K, K]
    num_scales, out_channels = kernel.shape[:2]
    kernel = kernel.transpose(0, 1).reshape(out_channels * num_scales, *kernel.shape[2:])
    y = F.conv2d(x, kernel, padding=basis.kernel_size // 2)
    return y.view(x.shape[0], out_channels, num_scales, *y.shape[-2:])


def h2h_dense(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """H→H reference (scale_size 1): x [B, Cin, S, H, W] -> [B, Cout, S, H, W], y_s = x_s ⋆ κ_s.

    All scales in one grouped conv2d (groups = S); no mixing across scales.
    """
    kernel = multiscale_kernel(weight, basis)  # [S, Cout, Cin, K, K]
    num_scales, out_channels, in_channels = kernel.shape[:3]
    batch, height, width = x.shape[0], x.shape[-2], x.shape[-1]
    x = x.transpose(1, 2).reshape(batch, num_scales * in_channels, height, width)
    kernel = kernel.reshape(num_scales * out_channels, in_channels, *kernel.shape[-2:])
    y = F.conv2d(x, kernel, padding=basis.kernel_size // 2, groups=num_scales)
    return y.view(batch, num_scales, out_channels, *y.shape[-2:]).transpose(1, 2)


# name -> (Z2→H, H→H); models pick one with their `implementation` key.
IMPLEMENTATIONS = {
    "dense": (z2h_dense, h2h_dense),
    "fast": (fast_conv.z2h_fast, fast_conv.h2h_fast),
}


class _ScaleConv(nn.Module):
    _which = 0  # index into the (z2h, h2h) pair of IMPLEMENTATIONS

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_functions: int,
        bias: bool = False,
        implementation: str = "dense",
    ):
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {implementation!r}; allowed: {', '.join(IMPLEMENTATIONS)}"
            )
        self.implementation = implementation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, num_functions))
        # SESN's initialisation: fan-in = Cin·F.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, basis: ScaleBasis) -> Tensor:
        y = IMPLEMENTATIONS[self.implementation][self._which](x, self.weight, basis)
        if self.bias is not None:
            y = y + self.bias[:, None, None, None]
        return y


class ScaleConvZ2H(_ScaleConv):
    """Lifting layer: [B, Cin, H, W] -> [B, Cout, S, H, W]."""

    _which = 0


class ScaleConvH2H(_ScaleConv):
    """Scale-group layer, scale_size 1: [B, Cin, S, H, W] -> [B, Cout, S, H, W]."""

    _which = 1


def scale_max_projection(x: Tensor) -> Tensor:
    """Max over the scale axis: [B, C, S, H, W] -> [B, C, H, W].

    max(dim) rather than amax: its backward scatters the gradient to the arg-max scale through
    the saved indices, where amax's compares the whole input with the result again and splits
    ties (measured: about a third less time in the toy model's backward). Without autograd
    (evaluation) the same values come from an elementwise maximum over the S slices, which reads
    whole H×W planes instead of reducing across a strided axis (4× faster, measured on the toy
    model's [32, 16, 3, 168, 168] output).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return x.max(dim=2).values
    out = x[:, :, 0]
    for scale in range(1, x.shape[2]):
        out = torch.maximum(out, x[:, :, scale])
    return out
