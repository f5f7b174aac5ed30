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

from scalelearn.nn.cpu_kernels import (
    lifting_kernel_grad,
    relu_max_pool_moments,
    relu_max_pool_moments_grad,
)


def _paired_bins(length: int) -> slice:
    """The bins of a one-sided spectrum of `length` that stand for two (k and L − k): all but
    the DC bin and, for even L, the Nyquist bin."""
    return slice(1, (length + 1) // 2)


def _lift(x: Tensor, kernel: Tensor, lengths) -> tuple[Tensor, Tensor]:
    """x [B, 1, H, W], kernel K̂ [Cout, S, k2, k1] -> (y [B, Cout, S, H, W], a view; x̂ [B, k1,
    k2])."""
    height, width = x.shape[-2:]
    x_hat = torch.fft.rfft2(x[:, 0], s=lengths)  # [B, k1, k2]
    # The product with the H frequencies last, [B, Cout, S, k2, k1]: the inverse along H then
    # runs along contiguous lines, and the one along W (a strided axis) only on the H rows the
    # crop keeps (torch writes its output with W contiguous: y's rows are L_W apart).
    y_hat = x_hat.transpose(-1, -2).contiguous()[:, None, None] * kernel
    rows = torch.fft.ifft(y_hat, dim=-1)[..., :height]
    y = torch.fft.irfft(rows, n=lengths[1], dim=-2)[..., :width, :]
    return y.transpose(-1, -2), x_hat


def _lift_grads(ctx, g_hat: Tensor, x_hat: Tensor, kernel: Tensor, needs_x: bool, needs_kernel):
    """The gradients of x and the kernel from g_hat = rfft2(∂y zero-padded to L, norm="forward")
    [B, Cout, S, k1, k2]."""
    grad_x = grad_kernel = None
    if needs_kernel:
        grad_kernel = lifting_kernel_grad(g_hat, x_hat, _paired_bins(ctx.lengths[1]))
    if needs_x:
        # x̂'s gradient is Σ ĝ · conj(K̂) with the paired bins doubled, and rfft2's adjoint is
        # L_H·L_W · irfft2 with them halved: the two cancel.
        grad_x_hat = (g_hat * kernel.transpose(-1, -2).conj()).sum((1, 2))  # [B, k1, k2]
        grad_x = torch.fft.irfft2(grad_x_hat, s=ctx.lengths, norm="forward")
        grad_x = grad_x[:, None, : ctx.size[0], : ctx.size[1]]
    return grad_x, grad_kernel


class _Lifting(torch.autograd.Function):
    """x [B, 1, H, W], kernel K̂ [Cout, S, k2, k1] (H frequencies last) -> y [B, Cout, S, H, W]
    (a view)."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, lengths) -> Tensor:
        y, x_hat = _lift(x, kernel, lengths)
        ctx.save_for_backward(x_hat, kernel)
        ctx.lengths, ctx.size = lengths, tuple(x.shape[-2:])
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_hat, kernel = ctx.saved_tensors
        g_hat = torch.fft.rfft2(grad, s=ctx.lengths, norm="forward")  # [B, Cout, S, k1, k2]
        return *_lift_grads(ctx, g_hat, x_hat, kernel, *ctx.needs_input_grad[:2]), None


class _LiftingPooledReluMoments(torch.autograd.Function):
    """`_Lifting`, then `cpu_kernels.relu_max_pool_moments`: x, K̂, increasing [Cout] ->
    (pooled [B, Cout, R, Q], mean [Cout], variance [Cout]). The lifting's output is not kept,
    and the gradient is written straight into the zero-padded buffer the transform reads."""

    @staticmethod
    def forward(ctx, x: Tensor, kernel: Tensor, lengths, increasing: Tensor, rows, cols):
        y, x_hat = _lift(x, kernel, lengths)
        pooled, mean, variance, saved = relu_max_pool_moments(y, increasing, rows, cols)
        ctx.save_for_backward(x_hat, kernel, mean, *saved)
        ctx.lengths, ctx.size, ctx.output_shape = lengths, tuple(x.shape[-2:]), y.shape[:3]
        return pooled, mean, variance

    @staticmethod
    def backward(ctx, grad_pooled, grad_mean, grad_variance):
        x_hat, kernel, mean, *saved = ctx.saved_tensors
        padded = mean.new_empty(*ctx.output_shape, *ctx.lengths)
        relu_max_pool_moments_grad(saved, mean, grad_pooled, grad_mean, grad_variance, padded)
        g_hat = torch.fft.rfft2(padded, norm="forward")  # [B, Cout, S, k1, k2]
        grads = _lift_grads(ctx, g_hat, x_hat, kernel, *ctx.needs_input_grad[:2])
        return *grads, None, None, None, None


def lifting(x: Tensor, kernel: Tensor, lengths) -> Tensor:
    """x [B, 1, H, W] (real, CPU), kernel K̂ [Cout, S, k2, k1] (conj(DFT) of the kernels at
    lengths (L_H, L_W): k1 = L_H, k2 = L_W//2 + 1; the H frequencies last) -> y [B, Cout, S, H, W]
    (a view of a buffer with L_W columns), y[b, o, s] = x[b, 0] ⋆ κ[s, 0, o]. Gradients reach x
    and the kernel."""
    return _Lifting.apply(x, kernel, tuple(lengths))


def lifting_pooled_relu_moments(x: Tensor, kernel: Tensor, lengths, increasing: Tensor, rows, cols):
    """`lifting` followed by `cpu_kernels.pooled_relu_moments` (the toy model's training head up
    to batch norm) -> (pooled [B, Cout, rows, cols], mean [Cout], variance [Cout]), the same
    values and gradients, with the gradient handed to the transform without a padding copy."""
    return _LiftingPooledReluMoments.apply(x, kernel, tuple(lengths), increasing, rows, cols)
