"""Scale-equivariant convolutions (SPEC §4) over a ScaleBasis.

Weights W[Cout, Cin, F] are shared by all scales; the filter at scale s is
κ_s = Σ_f W[…, f] · basis[f, s]. Two implementations give the same numbers:
- `dense`: the reference, as in the authors' code: one conv2d with the zero-padded K×K kernels.
- `fast`: per layer shape the fastest of four exact methods (scalelearn.nn.fast_conv), the default.

The layers are self-contained modules (`forward(x)`): each holds the network's SharedBasis and asks
it for the basis, which is computed once per forward pass for all of them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalelearn.nn import cpu_kernels, fast_conv
from scalelearn.nn.hermite import ScaleBasis
from scalelearn.nn.shared_basis import SharedBasis


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
    """Weights W [Cout, Cin, F] over the functions of a SharedBasis, shared by all scales."""

    _which = 0  # index into the (z2h, h2h) pair of IMPLEMENTATIONS

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        basis: SharedBasis,
        bias: bool = False,
        implementation: str = "fast",
    ):
        super().__init__()
        if not isinstance(basis, SharedBasis):
            raise TypeError(
                f"basis must be a scalelearn.nn.SharedBasis, got {type(basis).__name__}; build "
                f"one per network, SharedBasis(InternalScales(...), HermiteBasis(...)), and pass "
                f"it to every layer"
            )
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"unknown implementation {implementation!r}; allowed: {', '.join(IMPLEMENTATIONS)}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.implementation = implementation
        self.basis = basis
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, basis.num_functions))
        # SESN's initialisation: fan-in = Cin·F.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor, add_bias: bool = True, relu_pool: bool = False) -> Tensor:
        """x -> the layer's output [B, Cout, S, H, W]; where `relu_pool` (CPU, fast
        implementation, with a bias), max_pool3d(relu(output), (1, 2, 2)) [B, Cout, S, H/2,
        W/2] (odd sides floored), SESN's block, in one pass each way
        (`fast_conv.fast_bias_relu_pool`; after `fft`, one autograd function with the layer)."""
        self._check_input(x)
        if not relu_pool:
            return self.convolve(x, self.basis(), add_bias)
        if x.device.type != "cpu" or self.implementation != "fast" or self.bias is None:
            raise ValueError(
                "relu_pool=True needs a CPU input, implementation 'fast' and bias=True; "
                "elsewhere apply F.relu and F.max_pool3d to the layer's output"
            )
        return fast_conv.fast_bias_relu_pool(x, self.weight, self.basis(), self.bias)

    def convolve(self, x: Tensor, basis: ScaleBasis, add_bias: bool = True) -> Tensor:
        """The layer with an explicit basis of the shared scales (for callers that hold one
        across several calls, e.g. the toy model's checkpointed chunks), without its bias where
        add_bias is False (for callers that add it themselves)."""
        y = IMPLEMENTATIONS[self.implementation][self._which](x, self.weight, basis)
        if add_bias and self.bias is not None:
            y = y + self.bias[:, None, None, None]
        return y

    def _check_input(self, x: Tensor) -> None:
        scales = self.basis.num_scales
        expected = [self.in_channels] if self._which == 0 else [self.in_channels, scales]
        if x.dim() != 3 + len(expected) or list(x.shape[1 : len(expected) + 1]) != expected:
            shape = "[B, Cin, H, W]" if self._which == 0 else "[B, Cin, S, H, W]"
            raise ValueError(
                f"{self._get_name()} expects x of shape {shape} with Cin = {self.in_channels}"
                + (f", S = {scales}" if self._which == 1 else "")
                + f"; got {tuple(x.shape)}"
            )

    def __repr__(self) -> str:
        # One line: the shared basis is a submodule of every layer, and printing it again inside
        # each would bury the network; the line already names its basis, scales, ISR and K.
        return f"{self._get_name()}({self.extra_repr()})"

    def extra_repr(self) -> str:
        hermite = self.basis.hermite
        return (
            f"{self.in_channels}, {self.out_channels}, basis={hermite.basis_type} "
            f"(effective_size {hermite.effective_size}, F={self.basis.num_functions}), "
            f"{self.basis.extra_repr()}, bias={self.bias is not None}, "
            f"implementation={self.implementation}"
        )


class ScaleConvZ2H(_ScaleConv):
    """Lifting layer (SESN's SESConv_Z2_H): [B, Cin, H, W] -> [B, Cout, S, H, W].

    y[:, :, s] = x ⋆ κ_s with κ_s = Σ_f W[…, f] · basis[f, s] (SPEC §4), zero padding K//2,
    stride 1; `bias` adds one value per output channel. `basis` is the network's SharedBasis.
    """

    _which = 0

    def forward(
        self,
        x: Tensor,
        add_bias: bool = True,
        relu_pool: bool = False,
        extremes: tuple[int, int] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """x [B, Cin, H, W] -> [B, Cout, S, H, W] (`relu_pool`: as `_ScaleConv.forward`'s);
        or, where `extremes` = (R, Q) is given (CPU,
        without autograd: evaluation), (maxima, minima) [B, Cout, R, Q], the max and the min of
        the output's max over the scales in each (H/R)×(W/Q) window (H, W multiples of R, Q):
        for heads that pool right after the scale max (the toy model's), which then never hold
        the output whole (`fast_conv.z2h_fast_extremes`)."""
        if extremes is None:
            return super().forward(x, add_bias, relu_pool)
        if torch.is_grad_enabled() or x.device.type != "cpu":
            raise RuntimeError(
                "ScaleConvZ2H(extremes=...) has no gradient and runs on the CPU only: call it "
                "under torch.no_grad() or torch.inference_mode() with a CPU tensor"
            )
        self._check_input(x)
        basis = self.basis()
        if self.implementation == "fast" and not (add_bias and self.bias is not None):
            return fast_conv.z2h_fast_extremes(x, self.weight, basis, *extremes)
        return cpu_kernels.scale_max_pool(self.convolve(x, basis, add_bias), *extremes)


class ScaleConvH2H(_ScaleConv):
    """Scale-to-scale layer (SESN's SESConv_H_H, scale_size 1): [B, Cin, S, H, W] ->
    [B, Cout, S, H, W], y_s = x_s ⋆ κ_s (no mixing across scales)."""

    _which = 1


def scale_max_projection(x: Tensor) -> Tensor:
    """Max over the scale axis: [B, C, S, H, W] -> [B, C, H, W].

    Where autograd records, the gradient goes to the arg-max scale (as max(dim)'s does; amax's
    compares the whole input with the result again and splits ties, measured about a third
    slower in the toy model's backward): on the CPU one fused pass each way
    (`cpu_kernels.scale_max`: the quick preset's E1 step 14.5 + 6.2 -> 2.4 + 2.7 ms), on CUDA
    `_ScaleMax`, the same values and gradients by selection instead of a scatter. Without
    autograd (evaluation) the same values come from an elementwise maximum over the S slices,
    which reads whole H×W planes instead of reducing across a strided axis (4× faster, measured
    on the toy model's [32, 16, 3, 168, 168] output).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        if x.is_cuda:
            return _ScaleMax.apply(x)
        # Not inside torch.compile (which fuses max itself): dynamo cannot trace numba.
        if x.device.type == "cpu" and x.shape[2] < 256 and not torch.compiler.is_compiling():
            return cpu_kernels.scale_max(x)
        return x.max(dim=2).values
    out = x[:, :, 0]
    for scale in range(1, x.shape[2]):
        out = torch.maximum(out, x[:, :, scale])
    return out


class _ScaleMax(torch.autograd.Function):
    """max(dim=2).values whose backward selects instead of scattering: the gradient goes to the
    arg-max scale (the same saved indices, so the same numbers as max's own backward), written by
    an elementwise comparison with the scale index. On CUDA, max's backward is a scatter, which
    under training's deterministic algorithms sorts its indices first."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        values, indices = x.max(dim=2)
        ctx.save_for_backward(indices)
        ctx.num_scales = x.shape[2]
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (indices,) = ctx.saved_tensors
        scales = torch.arange(ctx.num_scales, device=grad.device).view(1, 1, -1, 1, 1)
        chosen = indices.unsqueeze(2) == scales
        return torch.where(chosen, grad.unsqueeze(2), grad.new_zeros(()))


class ScaleMaxProjection(nn.Module):
    """Max over the scale axis (SESN's SESMaxProjection): [B, C, S, H, W] -> [B, C, H, W]."""

    def forward(self, x: Tensor) -> Tensor:
        return scale_max_projection(x)
