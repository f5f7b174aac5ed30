"""The `fft` method on the CPU with its gradient written out: the lifting of one channel, and
the H→H layers (`h2h`, SESN's conv2 and conv3).

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
  numba pass (`cpu_kernels.add_lifting_kernel_grad`); the scaling of the inverse's adjoint (2
  for the bins of the halved W axis that stand for two; the 1/(L_H·L_W) is the transform's
  norm="forward") is applied to the kernel-sized sum instead of the batch-sized spectrum;
- runs: each run of scales at its own lengths (`fast_conv._fft_runs`), one kernel spectrum per
  run; the heads read every run's output where its inverse transform left it;
- passes: every step runs on a few images at a time (`PASS_BYTES` of spectrum), so that each
  transform reads what the step before wrote from the cache; the toy model's heads (training:
  `lifting_pooled_relu_moments`, evaluation: `lifting_scale_max_pool`) pool each pass's output
  at once, and the whole output is never held; evaluation also splits an image's output
  channels where its spectrum alone exceeds `PASS_BYTES`. A pass's numbers are those of the whole
  batch (every step but the kernel's gradient is per image and channel, and that one sums the
  images in order).
The H→H layers (`h2h`): per run of scales, rfft2, a transposing copy into the batched matmul's
layout (frequency first), the matmul over the input channels and irfft2, each run written into
one output. Autograd's backward of that chain zero-filled and copied the gradient once per
cropped axis and per run's slice of the input, took the adjoint of rfft2 as a full complex
transform, and doubled the paired bins of the batch-sized spectrum; here ∂y is padded once by
rfft2 itself, the adjoint of rfft2 is irfft2 (the bins' doubling and halving cancel), and the
doubling goes to the kernel-sized gradient. `e5_sesn`'s training step, one process alternating
(2 threads, 2026-11-27): 402-426 -> 390-404 ms. The forward's inverse runs along H on the
permuted product, then along W on the rows the crop keeps (as the lifting's): 404-423 -> 388-399
ms, evaluation of 256 images 1,092-1,127 -> 1,018-1,058 ms, the same bits; scale by scale (no
copy of a run's product first), evaluation 1,044-1,050 -> 969-992 ms, equal to rounding. The
doubling of the kernel's gradient, with its conjugation, goes to the kernel spectra's factors
in training (`_kernel_grads`). Measured against the autograd chain: README "Throughput". CUDA
tensors never come here.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scalelearn.nn.cpu_kernels import (
    add_lifting_kernel_grad,
    bias_relu_pool_grad_into,
    bias_relu_pool_into,
    bias_relu_pool_outputs,
    relu_max_pool_moments_grad,
    relu_max_pool_moments_into,
    relu_max_pool_moments_outputs,
    relu_max_pool_moments_result,
    scale_max_pool,
    transposed,
)

# The images of one pass of the transforms: as many as keep the pass's spectrum within this many
# bytes (at least one image), so that each transform reads what the one before it wrote from the
# cache rather than from memory. The forward lifting of 16 images of `e2_toy`'s evaluation (K 49,
# 7 MB of spectrum per image) took 30-32 ms in passes of one image, 40-44 in passes of four and
# 43 in one (README "Throughput"; 2 threads, this project's CPU, L2 2 MB per core). But every pass
# also sweeps the kernel-sized K̂ and its gradient's sum, and where an image's spectrum is small
# one image per pass is too few: the toy training step at 84², batch 32 (K 35-49, 2.3 MB per
# image) took 134 -> 117 ms (1 thread) and 74 -> 55 ms (2 threads) with 8 MiB instead of 4 per
# pass; 16 MiB was slower again (124 ms).
PASS_BYTES = 8 << 20


def images_per_pass(batch: int, spectrum_bytes: int) -> int:
    """Images per pass of a batch whose spectrum takes spectrum_bytes per image."""
    return min(batch, max(1, PASS_BYTES // spectrum_bytes))


def _slices(stop: int, step: int) -> list[slice]:
    """0 … stop in consecutive slices of `step` (the last one shorter)."""
    return [slice(first, min(first + step, stop)) for first in range(0, stop, step)]


def _image_bytes(kernels) -> int:
    """The bytes of one image's spectrum: the kernels K̂ [Cout, S', k2, k1] of every run have
    one image's spectrum's size together."""
    return sum(kernel.numel() * kernel.element_size() for kernel in kernels)


def _passes(batch: int, kernels) -> list[slice]:
    """The images of each pass."""
    return _slices(batch, images_per_pass(batch, _image_bytes(kernels)))


def _channel_groups(kernels) -> list[slice]:
    """The output channels of each evaluation pass: all of them where one image's spectrum fits
    in PASS_BYTES, else as few equal groups as fit. At E3's worst case (K 193, L 288: 16 MB per
    image) the lifting pass took 20-26 % less time per image in two groups of 8 channels, whole
    evaluation calls 13-16 % less (README "Throughput")."""
    count = kernels[0].shape[0]
    groups = -(-_image_bytes(kernels) // PASS_BYTES)
    return _slices(count, -(-count // max(1, groups)))


def _scale_slices(kernels, axis: int = 1) -> list[slice]:
    """The scales of each run: consecutive, S' of them for a kernel with S' along `axis` (the
    lifting's [Cout, S', k2, k1], H→H's [S', k1, k2, Cin, Cout] with axis 0)."""
    slices, stop = [], 0
    for kernel in kernels:
        slices.append(slice(stop, stop + kernel.shape[axis]))
        stop += kernel.shape[axis]
    return slices


def _output_shape(x: Tensor, kernels) -> tuple:
    """The lifting's output shape [B, Cout, S, H, W], S the runs' scales together."""
    return (len(x), kernels[0].shape[0], _scale_slices(kernels)[-1].stop, *x.shape[-2:])


def _paired_bins(length: int) -> slice:
    """The bins of a one-sided spectrum of `length` that stand for two (k and L − k): all but
    the DC bin and, for even L, the Nyquist bin."""
    return slice(1, (length + 1) // 2)


def _spectra(x: Tensor, lengths) -> list[Tensor]:
    """x [B, 1, H, W] -> x̂ [B, k1, k2] at each run's lengths."""
    return [torch.fft.rfft2(x[:, 0], s=run_lengths) for run_lengths in lengths]


def _lift_pass(x_hat: Tensor, kernel: Tensor, height: int, length_w: int) -> Tensor:
    """The lifting of the images whose spectra are x̂ [b, k1, k2], kernel K̂ [Cout, S, k2, k1]
    -> y [b, Cout, S, height, L_W] (the first H rows of the inverse, all L_W columns)."""
    # The product with the H frequencies last, [b, Cout, S, k2, k1]: the inverse along H runs
    # along contiguous lines; the one along W only on the H rows the crop keeps.
    y_hat = x_hat.transpose(-1, -2).contiguous()[:, None, None] * kernel
    rows = torch.fft.ifft(y_hat, dim=-1)[..., :height]
    return torch.fft.irfft(rows.transpose(-1, -2), n=length_w, dim=-1)


def _lift_runs(x_hats, kernels, lengths, size, images, channels=slice(None)) -> list[Tensor]:
    """The lifting of some images and output channels, run by run of scales -> [y [b, Cout',
    S', H, W]] (views into each run's inverse transform: the heads read the runs in place)."""
    height, width = size
    return [
        _lift_pass(x_hat[images], kernel[channels], height, run_lengths[1])[..., :width]
        for x_hat, kernel, run_lengths in zip(x_hats, kernels, lengths, strict=True)
    ]


def _joined(parts: list[Tensor]) -> Tensor:
    """The runs' outputs as one y [b, Cout, S, H, W]: the one run's itself (a view)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def _pass_buffers(kernels, lengths, batch: int, dtype) -> list[Tensor]:
    """One pass's buffers [b, Cout, S', L_H, L_W] per run, for the heads' backward to write the
    zero-padded gradient that the transforms read."""
    step = _passes(batch, kernels)[0].stop
    return [
        torch.empty(step, *kernel.shape[:2], *run_lengths, dtype=dtype)
        for kernel, run_lengths in zip(kernels, lengths, strict=True)
    ]


def _lift_grads(ctx, x_hats, kernels, needs_x: bool, needs_kernels, g_hat_of):
    """The gradients of x and of each run's kernel, pass by pass: g_hat_of(images, run, scales)
    = rfft2(∂y of those images at those scales zero-padded to the run's lengths,
    norm="forward") [b, Cout, S', k1, k2]."""
    height, width = ctx.size
    grad_x = x_hats[0].real.new_zeros(len(x_hats[0]), 1, height, width) if needs_x else None
    totals = [
        kernel.new_zeros(*kernel.shape[:2], *x_hat.shape[1:]) if needs else None
        for kernel, x_hat, needs in zip(kernels, x_hats, needs_kernels, strict=True)
    ]
    runs = list(zip(x_hats, kernels, _scale_slices(kernels), ctx.lengths, totals, strict=True))
    for images in _passes(len(x_hats[0]), kernels):
        for run, (x_hat, kernel, scales, lengths, total) in enumerate(runs):
            if total is None and not needs_x:
                continue
            g_hat = g_hat_of(images, run, scales)
            if total is not None:
                add_lifting_kernel_grad(g_hat, x_hat[images], total)  # [Cout, S', k1, k2]
            if needs_x:
                # x̂'s gradient is Σ ĝ · conj(K̂) with the paired bins doubled, and rfft2's
                # adjoint is L_H·L_W · irfft2 with them halved: the two cancel.
                grad_x_hat = (g_hat * kernel.transpose(-1, -2).conj()).sum((1, 2))  # [b, k1, k2]
                grad = torch.fft.irfft2(grad_x_hat, s=lengths, norm="forward")
                grad_x[images, 0] += grad[:, :height, :width]
    grad_kernels = []
    for total, lengths in zip(totals, ctx.lengths, strict=True):
        if total is not None:
            # The inverse's adjoint: the bins of the halved W axis that stand for two count
            # twice (the 1/(L_H·L_W) is the transform's norm="forward").
            total[..., _paired_bins(lengths[1])] *= 2
            total = total.transpose(-1, -2).contiguous()
        grad_kernels.append(total)
    return grad_x, grad_kernels


class _Lifting(torch.autograd.Function):
    """x [B, 1, H, W], lengths, kernels K̂ [Cout, S', k2, k1] (H frequencies last) of each run
    of scales -> y [B, Cout, S, H, W]."""

    @staticmethod
    def forward(ctx, x: Tensor, lengths, *kernels: Tensor) -> Tensor:
        size = x.shape[-2:]
        x_hats = _spectra(x, lengths)
        passes = _passes(len(x), kernels)
        if len(passes) == 1:
            y = _joined(_lift_runs(x_hats, kernels, lengths, size, passes[0]))
        else:
            y = x.new_empty(_output_shape(x, kernels))
            slices = _scale_slices(kernels)
            for images in passes:
                parts = _lift_runs(x_hats, kernels, lengths, size, images)
                for part, scales in zip(parts, slices, strict=True):
                    y[images, :, scales] = part
        ctx.save_for_backward(*x_hats, *kernels)
        ctx.lengths, ctx.size = lengths, tuple(size)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved, runs = ctx.saved_tensors, len(ctx.lengths)  # unpacked once (checkpointing)
        x_hats, kernels = saved[:runs], saved[runs:]

        def g_hat_of(images, run, scales):
            return torch.fft.rfft2(grad[images, :, scales], s=ctx.lengths[run], norm="forward")

        needs = ctx.needs_input_grad
        grad_x, grad_kernels = _lift_grads(ctx, x_hats, kernels, needs[0], needs[2:], g_hat_of)
        return grad_x, None, *grad_kernels


class _LiftingPooledReluMoments(torch.autograd.Function):
    """`_Lifting`, then `cpu_kernels.relu_max_pool_moments`, pass by pass: x, lengths, increasing
    [Cout], rows, cols, kernels -> (pooled [B, Cout, R, Q], mean [Cout], variance [Cout]). The
    lifting's output is never whole (the head reads each pass's from the cache), and the
    gradient is written straight into the zero-padded buffers the transforms read."""

    @staticmethod
    def forward(ctx, x: Tensor, lengths, increasing: Tensor, rows, cols, *kernels: Tensor):
        size = x.shape[-2:]
        x_hats = _spectra(x, lengths)
        outputs = relu_max_pool_moments_outputs(_output_shape(x, kernels), x.dtype, rows, cols)
        for images in _passes(len(x), kernels):
            y = _lift_runs(x_hats, kernels, lengths, size, images)
            relu_max_pool_moments_into(y, increasing, [t[images] for t in outputs])
        pooled, mean, variance, saved = relu_max_pool_moments_result(outputs, x.dtype)
        ctx.save_for_backward(mean, *saved, *x_hats, *kernels)
        ctx.lengths, ctx.size = lengths, tuple(size)
        return pooled, mean, variance

    @staticmethod
    def backward(ctx, grad_pooled, grad_mean, grad_variance):
        tensors, runs = ctx.saved_tensors, len(ctx.lengths)  # unpacked once (checkpointing)
        mean, *saved = tensors[:4]
        x_hats, kernels = tensors[4 : 4 + runs], tensors[4 + runs :]
        batch = len(x_hats[0])
        count = batch * ctx.size[0] * ctx.size[1]
        padded = _pass_buffers(kernels, ctx.lengths, batch, mean.dtype)

        def g_hat_of(images, run, scales):
            part = padded[run][: images.stop - images.start]
            grads = (grad_mean, grad_variance, count, part, scales.start)
            pooled = None if grad_pooled is None else grad_pooled[images]
            relu_max_pool_moments_grad([t[images] for t in saved], mean, pooled, *grads)
            return torch.fft.rfft2(part, norm="forward")  # [b, Cout, S', k1, k2]

        needs = ctx.needs_input_grad
        grad_x, grad_kernels = _lift_grads(ctx, x_hats, kernels, needs[0], needs[5:], g_hat_of)
        return grad_x, None, None, None, None, *grad_kernels


class _LiftingBiasReluPool(torch.autograd.Function):
    """`_Lifting`, then `cpu_kernels.bias_relu_pool`, pass by pass: x, lengths, bias [Cout],
    kernels -> [B, Cout, S, H/2, W/2]. As in `_LiftingPooledReluMoments`, the lifting's output
    is never whole and the gradient goes straight into the transforms' zero-padded buffers."""

    @staticmethod
    def forward(ctx, x: Tensor, lengths, bias: Tensor, *kernels: Tensor):
        size = x.shape[-2:]
        x_hats = _spectra(x, lengths)
        out, index = bias_relu_pool_outputs(_output_shape(x, kernels), x.dtype)
        slices = _scale_slices(kernels)
        for images in _passes(len(x), kernels):
            parts = _lift_runs(x_hats, kernels, lengths, size, images)
            for part, scales in zip(parts, slices, strict=True):
                bias_relu_pool_into(part, bias, out[images], index[images], scales.start)
        ctx.save_for_backward(out, index, *x_hats, *kernels)
        ctx.lengths, ctx.size = lengths, tuple(size)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        tensors, runs = ctx.saved_tensors, len(ctx.lengths)  # unpacked once (checkpointing)
        out, index = tensors[:2]
        x_hats, kernels = tensors[2 : 2 + runs], tensors[2 + runs :]
        padded = _pass_buffers(kernels, ctx.lengths, len(x_hats[0]), grad.dtype)
        grad_bias = torch.zeros(out.shape[1], dtype=torch.float64)

        def g_hat_of(images, run, scales):
            part = padded[run][: images.stop - images.start]
            saved = (out[images], index[images])
            grad_bias.add_(bias_relu_pool_grad_into(grad[images], *saved, part, scales.start))
            return torch.fft.rfft2(part, norm="forward")  # [b, Cout, S', k1, k2]

        # The bias's gradient comes with the kernels': every pass of every run is visited.
        needs = ctx.needs_input_grad
        visit = [needs_kernel or needs[2] for needs_kernel in needs[3:]]
        grad_x, grad_kernels = _lift_grads(ctx, x_hats, kernels, needs[0], visit, g_hat_of)
        grad_kernels = [g if n else None for g, n in zip(grad_kernels, needs[3:], strict=True)]
        grad_bias = grad_bias.to(grad.dtype) if needs[2] else None
        return grad_x, None, grad_bias, *grad_kernels


def _h2h_forward(x: Tensor, lengths, kernels, needs_kernels, write) -> list:
    """The runs of `h2h`: write(scales, part) with each scale's output part [B, Cout, 1, H, W]
    (a crop of its inverse transform), scales its slice of S -> the transposed spectra a [N, B,
    Cin] of each run that its backward needs (None where the run's kernel takes no gradient)."""
    batch, in_channels, _, height, width = x.shape
    out_channels = kernels[0].shape[-1]
    transposed_spectra = []
    runs = zip(kernels, lengths, _scale_slices(kernels, 0), needs_kernels, strict=True)
    for kernel, run_lengths, run, needs_kernel in runs:
        x_hat = torch.fft.rfft2(x[:, :, run], s=run_lengths)  # [B, Cin, S', k1, k2]
        a = transposed(x_hat.view(batch * in_channels, -1)).view(-1, batch, in_channels)
        del x_hat  # each temporary dropped once read: the call's peak memory
        y_hat = torch.bmm(a, kernel.view(-1, in_channels, out_channels))  # [N, B, Cout]
        y_hat = y_hat.view(*kernel.shape[:3], batch, out_channels).permute(3, 4, 0, 1, 2)
        # Kept for the kernel's gradient only (evaluation holds one run's at a time).
        transposed_spectra.append(a if needs_kernel else None)
        del a
        for scale in range(run.start, run.stop):
            # The inverse along H, then along W on the H rows the crop keeps (irfft2's 1-D
            # transforms). Scale by scale, MKL reads the permuted product along H in place; a
            # run's scales together are no one batch for it, and were copied first.
            rows = torch.fft.ifft(y_hat[:, :, scale - run.start], dim=-2)[..., :height, :]
            part = torch.fft.irfft(rows, n=run_lengths[1], dim=-1)[:, :, None, :, :width]
            del rows
            write(slice(scale, scale + 1), part)
            del part
        del y_hat
    return transposed_spectra


def _h2h_backward(ctx, inputs, kernels, x_shape, g_hat_of):
    """-> (∂x, [conj(∂K̂) per run before the doubling below, None where its kernel takes no
    gradient: `_kernel_grads` finishes them]) of `h2h`: g_hat_of(run, lengths) = rfft2 of the
    run's zero-padded ∂y [B, Cout, S', k1, k2] with norm="forward" (the 1/(L_H·L_W) of the
    inverse); x is ctx's input 0. Called for every run, whatever needs a gradient.

    The inverse's adjoint doubles ∂ŷ's paired bins of the halved W axis: left to the
    kernel-sized gradient (`_kernel_grads`), and for x it cancels against the halving in
    rfft2's adjoint (L_H·L_W · irfft2 with those bins halved), as in `_lift_grads`. The products
    run on conj(∂ŷ), conjugated by the transposing copy, so that the conjugate transposes ∂K̂ =
    aᴴ·∂ŷ and ∂a = ∂ŷ·K̂ᴴ need are plain transposes, which the matmul reads in place (a
    conjugate one is copied first)."""
    batch, in_channels, scales, height, width = x_shape
    out_channels = kernels[0].shape[-1]
    needs_x = ctx.needs_input_grad[0]
    grad_x = kernels[0].real.new_empty(x_shape) if needs_x else None
    grad_kernels = []
    runs = zip(inputs, kernels, ctx.lengths, _scale_slices(kernels, 0), strict=True)
    for a, kernel, lengths, run in runs:
        g_hat = g_hat_of(run, lengths)
        g = transposed(g_hat.view(batch * out_channels, -1), conj=True)
        del g_hat  # each temporary dropped once read: the step's peak memory
        g = g.view(-1, batch, out_channels)  # conj(∂ŷ) [N, B, Cout]
        # aᵀ·conj(∂ŷ) [S', k1, k2, Cin, Cout]
        grad_kernels.append(None if a is None else torch.bmm(a.mT, g).view(kernel.shape))
        if needs_x:
            grad_a = torch.bmm(g, kernel.view(-1, in_channels, out_channels).mT)  # conj(∂a)
            del g
            grad_x_hat = transposed(grad_a.view(len(grad_a), -1), conj=True)
            del grad_a
            grad_x_hat = grad_x_hat.view(batch, in_channels, *kernel.shape[:3])
            grad_x_run = torch.fft.irfft2(grad_x_hat, s=lengths, norm="forward")
            del grad_x_hat
            grad_x[:, :, run] = grad_x_run[..., :height, :width]
            del grad_x_run
    return grad_x, grad_kernels


def _kernel_inputs(kernels) -> tuple[bool, tuple]:
    """`h2h`'s kernels as autograd inputs -> (factored, (K̂ of each run) or (the spectra of
    each run, then the placed weights of each run))."""
    if isinstance(kernels[0], Tensor):
        return False, tuple(kernels)
    spectra, placed = zip(*kernels, strict=True)
    return True, (*spectra, *placed)


def _h2h_kernels(ctx, factored: bool, tensors, first: int) -> tuple[list, list]:
    """-> (K̂ of each run, whether it takes a gradient) from `_kernel_inputs`' tensors, inputs
    first, first + 1, … of ctx."""
    needs = ctx.needs_input_grad[first:]
    if not factored:
        return list(tensors), list(needs)
    runs = len(tensors) // 2
    kernels = [kernel_product(*pair) for pair in zip(tensors[:runs], tensors[runs:], strict=True)]
    return kernels, [needs[run] or needs[runs + run] for run in range(runs)]


def _kernel_grads(ctx, factored: bool, tensors, raw, first: int) -> list:
    """The gradients of `_kernel_inputs`' tensors (inputs first, first + 1, … of ctx) from
    `_h2h_backward`'s raw ones, conj(∂K̂) with the paired bins not yet doubled (the tensors:
    the factors, saved where `factored`).

    Given K̂ (evaluation's kernels, the tests'), ∂K̂ is conjugated and doubled in one pass. Given
    its factors (training), K̂ = spectra · placed (`kernel_product`), the matmul's gradients take
    the conjugation (a sign on placed's imaginary slots) and the doubling (a factor on the
    spectra's bins) on their small operands instead: a pass over the kernel-sized gradient
    fewer (17 ms of `e5_sesn`'s training step in torch.profiler; the step 366-370 -> 359-360 ms,
    one process alternating, 2 threads)."""
    if not factored:
        for grad, lengths in zip(raw, ctx.lengths, strict=True):
            if grad is not None:
                torch.view_as_real(grad).mul_(_conj_paired_weights(lengths[1], grad))
        return raw
    needs = ctx.needs_input_grad[first:]
    runs = len(raw)
    grad_spectra, grad_placed = [], []
    for run, (grad, lengths) in enumerate(zip(raw, ctx.lengths, strict=True)):
        spectra, placed = tensors[run], tensors[runs + run]
        doubled = _doubled_bins(lengths[1], spectra.dtype)[:, None]  # over the spectra's k2
        conj = torch.tensor([1.0, -1.0], dtype=placed.dtype)
        grad = None if grad is None else torch.view_as_real(grad).flatten(0, 2).flatten(1)
        if needs[run]:  # ∂spectra = ∂K̂ · placedᵀ [S', k1, k2, F]
            product = grad @ (placed * conj).flatten(1).T
            grad_spectra.append(product.view(spectra.shape) * doubled)
        else:
            grad_spectra.append(None)
        if needs[runs + run]:  # ∂placed = spectraᵀ · ∂K̂ [F, Cin, Cout, 2]
            product = (spectra * doubled).flatten(0, 2).T @ grad
            grad_placed.append(product.view(placed.shape) * conj)
        else:
            grad_placed.append(None)
    return [*grad_spectra, *grad_placed]


class _H2H(torch.autograd.Function):
    """x [B, Cin, S, H, W], lengths, factored, the kernels of each run of scales
    (`_kernel_inputs`) -> y [B, Cout, S, H, W]."""

    @staticmethod
    def forward(ctx, x: Tensor, lengths, factored: bool, *tensors: Tensor) -> Tensor:
        kernels, needs_kernels = _h2h_kernels(ctx, factored, tensors, 3)
        # One scale: its inverse transform's crop itself (the heads read it in place).
        shape = (len(x), kernels[0].shape[-1], *x.shape[2:])
        y = x.new_empty(shape) if x.shape[2] > 1 else None
        parts = []

        def write(run, part):
            if y is None:
                parts.append(part)
            else:
                y[:, :, run] = part

        saved = _h2h_forward(x, lengths, kernels, needs_kernels, write)
        ctx.save_for_backward(*saved, *kernels, *(tensors if factored else ()))
        ctx.lengths, ctx.x_shape, ctx.factored = lengths, x.shape, factored
        return parts[0] if y is None else y

    @staticmethod
    def backward(ctx, grad: Tensor):
        saved, runs = ctx.saved_tensors, len(ctx.lengths)
        kernels, tensors = saved[runs : 2 * runs], saved[2 * runs :]

        def g_hat_of(run, lengths):
            return torch.fft.rfft2(grad[:, :, run], s=lengths, norm="forward")

        grad_x, raw = _h2h_backward(ctx, saved[:runs], kernels, ctx.x_shape, g_hat_of)
        return grad_x, None, None, *_kernel_grads(ctx, ctx.factored, tensors, raw, 3)


class _H2HBiasReluPool(torch.autograd.Function):
    """`_H2H`, then `cpu_kernels.bias_relu_pool` scale by scale: x, lengths, bias [Cout],
    factored, kernels -> [B, Cout, S, H/2, W/2]. The head reads each scale's inverse transform
    in place (no joined output), and its backward writes the gradient straight into the
    zero-padded buffer each run's transform reads."""

    @staticmethod
    def forward(ctx, x: Tensor, lengths, bias: Tensor, factored: bool, *tensors: Tensor):
        kernels, needs_kernels = _h2h_kernels(ctx, factored, tensors, 4)
        shape = (len(x), kernels[0].shape[-1], *x.shape[2:])
        out, index = bias_relu_pool_outputs(shape, x.dtype)

        def write(run, part):
            bias_relu_pool_into(part, bias, out, index, run.start)

        saved = _h2h_forward(x, lengths, kernels, needs_kernels, write)
        ctx.save_for_backward(out, index, *saved, *kernels, *(tensors if factored else ()))
        ctx.lengths, ctx.x_shape, ctx.factored = lengths, x.shape, factored
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        tensors, runs = ctx.saved_tensors, len(ctx.lengths)
        out, index = tensors[:2]
        inputs, kernels = tensors[2 : 2 + runs], tensors[2 + runs : 2 + 2 * runs]
        grad_bias = torch.zeros(out.shape[1], dtype=torch.float64)

        def g_hat_of(run, lengths):
            padded = grad.new_empty(*out.shape[:2], run.stop - run.start, *lengths)
            grad_bias.add_(bias_relu_pool_grad_into(grad, out, index, padded, run.start))
            return torch.fft.rfft2(padded, norm="forward")

        grad_x, raw = _h2h_backward(ctx, inputs, kernels, ctx.x_shape, g_hat_of)
        grads = _kernel_grads(ctx, ctx.factored, tensors[2 + 2 * runs :], raw, 4)
        grad_bias = grad_bias.to(grad.dtype) if ctx.needs_input_grad[2] else None
        return grad_x, None, grad_bias, None, *grads


def _doubled_bins(length: int, dtype) -> Tensor:
    """[k2]: 2 at the bins of a one-sided spectrum of `length` that stand for two
    (`_paired_bins`), else 1."""
    weights = torch.ones(length // 2 + 1, dtype=dtype)
    weights[_paired_bins(length)] = 2
    return weights


def _conj_paired_weights(length: int, like: Tensor) -> Tensor:
    """[k2, 1, 1, 2]: the factors that conjugate a one-sided spectrum of `length` (the
    interleaved real and imaginary parts of `torch.view_as_real`, in like's real dtype) and
    double its bins that stand for two (`_doubled_bins`), in one pass."""
    conj = torch.tensor([1.0, -1.0], dtype=like.real.dtype)
    return _doubled_bins(length, like.real.dtype)[:, None, None, None] * conj


def kernel_product(spectra: Tensor, placed: Tensor) -> Tensor:
    """spectra [S', k1, k2, F] (real), placed [F, Cin, Cout, 2] (real) -> K̂ [S', k1, k2, Cin,
    Cout] (complex), Σ_f spectra[..., f] · placed[f] with placed's last axis (real, imaginary)."""
    product = spectra.flatten(0, 2) @ placed.flatten(1)
    return torch.view_as_complex(product.view(*spectra.shape[:3], *placed.shape[1:]))


def h2h(x: Tensor, kernels, lengths) -> Tensor:
    """x [B, Cin, S, H, W] (real, CPU); for each run of consecutive scales
    (`fast_conv._fft_runs`), kernel K̂ [S', k1, k2, Cin, Cout] (conj(DFT) of the kernels at that
    run's lengths, `fast_conv._kernel_spectrum`), or its factors (spectra, placed)
    (`kernel_product`, `fast_conv._kernel_factors`) -> y [B, Cout, S, H, W], y[:, :, s] = x[:,
    :, s] ⋆ κ_s. Gradients reach x and the kernels (or their factors)."""
    factored, tensors = _kernel_inputs(kernels)
    return _H2H.apply(x, _lengths(lengths), factored, *tensors)


def h2h_bias_relu_pool(x: Tensor, kernels, lengths, bias: Tensor) -> Tensor:
    """`h2h` followed by `cpu_kernels.bias_relu_pool` (SESN's block: bias, ReLU, 2×2 max pool)
    -> [B, Cout, S, H/2, W/2], the same values and gradients (x, kernels, bias), the head
    reading each scale's output where its inverse transform left it."""
    factored, tensors = _kernel_inputs(kernels)
    return _H2HBiasReluPool.apply(x, _lengths(lengths), bias, factored, *tensors)


def lifting(x: Tensor, kernels, lengths) -> Tensor:
    """x [B, 1, H, W] (real, CPU); for each run of consecutive scales (`fast_conv._fft_runs`),
    kernel K̂ [Cout, S', k2, k1] (conj(DFT) of the kernels at that run's lengths (L_H, L_W): k1 =
    L_H, k2 = L_W//2 + 1; the H frequencies last) -> y [B, Cout, S, H, W], y[b, o, s] = x[b, 0]
    ⋆ κ[s, 0, o]. Gradients reach x and the kernels."""
    return _Lifting.apply(x, _lengths(lengths), *kernels)


def _lengths(lengths) -> tuple:
    return tuple(tuple(run_lengths) for run_lengths in lengths)


def lifting_pooled_relu_moments(x: Tensor, kernels, lengths, increasing: Tensor, rows, cols):
    """`lifting` followed by `cpu_kernels.pooled_relu_moments` (the toy model's training head up
    to batch norm) -> (pooled [B, Cout, rows, cols], mean [Cout], variance [Cout]), the same
    values and gradients, with the gradient handed to the transforms without a padding copy."""
    lengths = _lengths(lengths)
    return _LiftingPooledReluMoments.apply(x, lengths, increasing, rows, cols, *kernels)


def lifting_bias_relu_pool(x: Tensor, kernels, lengths, bias: Tensor) -> Tensor:
    """`lifting` followed by `cpu_kernels.bias_relu_pool` (SESN's first block: bias, ReLU, 2×2
    max pool) -> [B, Cout, S, H/2, W/2], the same values and gradients (x, kernels, bias), each
    pass's output pooled from the cache."""
    return _LiftingBiasReluPool.apply(x, _lengths(lengths), bias, *kernels)


def lifting_scale_max_pool(x: Tensor, kernels, lengths, rows: int, cols: int, head=None):
    """`lifting` followed by `cpu_kernels.scale_max_pool` (evaluation, no gradient), pass by
    pass: the head reads each pass's output from the cache, and the lifting's output is never
    whole -> (maxima, minima) [B, Cout, rows, cols]. head(y, images, channels): another head for
    the lifting y (a list of its runs' [b, Cout', S', H, W]) of those images and channels."""
    size = x.shape[-2:]
    x_hats = _spectra(x, lengths)
    maxima, minima = [], []
    for images in _passes(len(x), kernels):
        parts = []
        for channels in _channel_groups(kernels):
            y = _lift_runs(x_hats, kernels, lengths, size, images, channels)
            parts.append(head(y, images, channels) if head else scale_max_pool(y, rows, cols))
        maxima.append(torch.cat([part[0] for part in parts], dim=1))
        minima.append(torch.cat([part[1] for part in parts], dim=1))
    return torch.cat(maxima), torch.cat(minima)
