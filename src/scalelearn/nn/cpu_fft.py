"""The `fft` method's lifting of one channel on the CPU, with its gradient written out.

fast_conv's `fft` method computes y = irfft2(rfft2(x) · K̂)[:H, :W]. For the lifting of one
input channel (the toy model's only layer, SESN's first) the product is a broadcast over the
batch, and PyTorch's autograd of that chain spends more time moving memory than transforming
it: the product comes out in the kernel's layout (frequency-major, channels last), so the inverse
transform first copies it back; the inverse along H (a non-last axis) transposes in and out; its
backward pads the gradient in two zero-filled copies (one per cropped axis); and the kernel's
gradient Σ_b ĝ[b] · conj(x̂[b]) makes a batch-sized temporary. Here:
- forward: the product with the H frequencies last, [B, Cout, S, k2, k1] (the kernel spectra are
  built in that layout, `fast_conv._lifting_spectrum`), so the inverse along H runs on
  contiguous lines; then the inverse along W on the H rows the crop keeps (not all L_H);
- backward: one zero-padded 2-D transform of the gradient, and the kernel's gradient in one
  numba pass (`cpu_kernels.lifting_kernel_grad`) that also applies the scaling of the inverse's
  adjoint (2 for the bins of the halved W axis that stand for two; the 1/(L_H·L_W) is the
  transform's norm="forward") to the kernel-sized result instead of the batch-sized spectrum.
Measured against the autograd chain: README "Throughput". CUDA tensors never come here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scalelearn.nn.cpu_kernels import lifting_kernel_grad


def _paired_bins(length: int) -> slice:
    """The bins of a one-sided spectrum of `length` that stand for two (k and L − k): all but
    the DC bin and, for even L, the Nyquist bin."""
    return slice(1, (length + 1) // 2)


class _Lifting(torch.autograd.Function):
    """x [B, 1, H, W], kernel K̂ [Cout, S, k2, k1] (H frequencies last) -> y [B, Cout, S, H, W]
    (a view)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, lengths) -> Tensor:
        height, width = x.shape[-2:]
        x_hat = torch.fft.rfft2(x[:, 0], s=lengths)  # [B, k1, k2]
        ctx.save_for_backward(x_hat, kernel)
        ctx.lengths, ctx.size = lengths, (height, width)
        # The product with the H frequencies last, [B, Cout, S, k2, k1]: the inverse along H then
        # runs along contiguous lines, and the one along W (a strided axis) only on the H rows
        # the crop keeps (torch writes its output with W contiguous: y's rows are L_W apart).
        y_hat = x_hat.transpose(-1, -2).contiguous()[:, None, None] * kernel
        rows = torch.fft.ifft(y_hat, dim=-1)[..., :height]
        y = torch.fft.irfft(rows, n=lengths[1], dim=-2)[..., :width, :]
        return y.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_hat, kernel = ctx.saved_tensors
        lengths = ctx.lengths
        g_hat = torch.fft.rfft2(grad, s=lengths, norm="forward")  # [B, Cout, S, k1, k2]
        grad_x = grad_kernel = None
        if ctx.needs_input_grad[1]:
            grad_kernel = lifting_kernel_grad(g_hat, x_hat, _paired_bins(lengths[1]))
        if ctx.needs_input_grad[0]:
            # x̂'s gradient is Σ ĝ · conj(K̂) with the paired bins doubled, and rfft2's adjoint
            # is L_H·L_W · irfft2 with them halved: the two cancel.
            grad_x_hat = (g_hat * kernel.transpose(-1, -2).conj()).sum((1, 2))  # [B, k1, k2]
            grad_x = torch.fft.irfft2(grad_x_hat, s=lengths, norm="forward")
            grad_x = grad_x[:, None, : ctx.size[0], : ctx.size[1]]
        return grad_x, grad_kernel, None


def lifting(x: Tensor, kernel: Tensor, lengths) -> Tensor:
    """x [B, 1, H, W] (real, CPU), kernel K̂ [Cout, S, k2, k1] (conj(DFT) of the kernels at
    lengths (L_H, L_W): k1 = L_H, k2 = L_W//2 + 1; the H frequencies last) -> y [B, Cout, S, H, W]
    (a view of a buffer with L_W columns), y[b, o, s] = x[b, 0] ⋆ κ[s, 0, o]. Gradients reach x
    and the kernel."""
    return _Lifting.apply(x, kernel, tuple(lengths))
