"""The toy model's lifting over each image's ink window, in training and evaluation (CPU, `fft`).

A digit of the scale-distribution datasets lies on a constant background β (its canvas's zero,
normalised). The lifting is linear, so with 1 the canvas of ones

    lift(x) = β · lift(1) + lift(x − β),

and x − β is zero outside the ink: lift(x − β) is zero outside the ink's bounding box widened by
the kernel's half size (clipped to the canvas), the image's window. lift(1), the background's
part P [1, C, S, H, W], is the same for every image and separable (`background`); each window is
lifted at the FFT lengths of its own size, images of one window size together (a group), and
the head's kernel reads P and the window's lifting and adds them itself, so that y = β·P + the
window is never written: in training `cpu_kernels.relu_max_pool_moments_into` with a window
(`pooled_relu_moments`; its gradient kernel writes the window's gradient and adds β·∂y to P's),
in evaluation `cpu_kernels.windowed_scale_max_pool` (`scale_extremes`, which reads β·P's scale
max outside the window). Windows are square, of sides rounded up to WINDOW_STEP pixels, so that
a batch falls into a few groups, each with its own kernel spectra.

The same values as the whole canvas's lifting, rounded differently (an image's logits can differ
in the last bits with the batch it is evaluated in: the windows are planned per batch).
On a narrow distribution the windows are a fraction of the canvas (the quick preset's training
digits: K 13 needs 0.19 of the transforms' work at b = 2.83, 0.48 at b = 8; K 49 0.80 and 0.90);
where they are not, `plan_windows` declines and the caller lifts the canvas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scalelearn.nn import cpu_fft
from scalelearn.nn.cpu_kernels import (
    relu_max_pool_moments_grad,
    relu_max_pool_moments_into,
    relu_max_pool_moments_outputs,
    relu_max_pool_moments_result,
    windowed_scale_max_pool,
)
from scalelearn.nn.hermite import ScaleBasis

# Window sides are multiples of this many pixels (or the canvas's side): few groups per batch.
WINDOW_STEP = 16
# The windows are lifted where their transforms' work (every image's, plus SPECTRA_IMAGES images'
# for each group's kernel spectra and, in training, their gradient) is at most this share of the
# canvas's; evaluation counts the same (one image's worth per group would do). E1's
# steps were as fast either way near the line, and faster below it (README "Throughput").
WORK_SHARE = 0.8
SPECTRA_IMAGES = 2.0


@dataclass
class Plan:
    """Images sorted by window side: order [B] (sorted position -> image), beta [B] (sorted), and
    per group (side, start, stop, tops, lefts): images start … stop − 1 of the sorted batch have
    the window side × side at (tops[i], lefts[i])."""

    order: Tensor
    beta: Tensor
    groups: list[tuple[int, int, int, list[int], list[int]]]


def _work(runs) -> float:
    """One image's transform work at these runs: Σ S'·L_H·L_W·log2(L_H·L_W)."""
    return sum((stop - first) * h * w * math.log2(h * w) for (first, stop), (h, w), _ in runs)


def _extent(ink: Tensor) -> tuple[Tensor, Tensor]:
    """ink bool [B, N] (any pixel in each row or column) -> first and last True index [B]
    (N and −1 where none)."""
    index = torch.arange(ink.shape[1])
    first = torch.where(ink, index, ink.shape[1]).amin(1)
    last = torch.where(ink, index, -1).amax(1)
    return first, last


def plan_windows(x: Tensor, basis: ScaleBasis, runs_of) -> Plan | None:
    """The windows of x [B, 1, H, W] (square H × W canvas), or None where lifting them is not
    worth it (WORK_SHARE); runs_of(side) = `fast_conv._fft_runs` of a side × side image."""
    batch, _, height, width = x.shape
    if height != width or batch < 2:
        return None
    half = min(basis.kernel_size // 2, height - 1)
    beta = x[:, 0, 0, 0]
    ink = x[:, 0] != beta[:, None, None]
    top, bottom = _extent(ink.any(2))
    left, right = _extent(ink.any(1))
    extent = torch.maximum(bottom - top, right - left).clamp(min=0) + 1 + 2 * half
    side = (-(-extent // WINDOW_STEP) * WINDOW_STEP).clamp(max=height)
    sides = side.tolist()
    work = {s: _work(runs_of(s)) for s in set(sides)}
    spectra = SPECTRA_IMAGES * sum(work.values())  # each group's kernel spectra, their gradient
    if sum(work[s] for s in sides) + spectra > WORK_SHARE * batch * _work(runs_of(height)):
        return None
    # Each window starts half a kernel before the ink, inside the canvas: it holds the ink ± half.
    top = torch.minimum((top - half).clamp(min=0), height - side)
    left = torch.minimum((left - half).clamp(min=0), width - side)
    order = torch.argsort(side, stable=True)
    groups, start = [], 0
    values, counts = torch.unique_consecutive(side[order], return_counts=True)
    for value, count in zip(values.tolist(), counts.tolist(), strict=True):
        stop = start + count
        members = order[start:stop]
        groups.append((value, start, stop, top[members].tolist(), left[members].tolist()))
        start = stop
    return Plan(order, beta[order], groups)


def background(weight: Tensor, basis: ScaleBasis, height: int, width: int) -> Tensor:
    """lift(1) of the H × W canvas of ones: [1, Cout, S, H, W]. Separable: y[o, s, h, w] =
    Σ_f W[o, f] · A[s, row(f), h] · A'[s, col(f), w], with A[s, p, h] = the sum of profile p
    of scale s over the offsets that stay on the canvas from row h."""
    profiles = basis.profiles.to(weight.dtype)  # [S, P, K]
    size = profiles.shape[-1]
    offsets = torch.arange(size) - size // 2

    def sums(length: int) -> Tensor:  # [S, P, length]
        inside = torch.arange(length)[:, None] + offsets
        mask = ((inside >= 0) & (inside < length)).to(profiles.dtype)  # [length, K]
        return profiles @ mask.T

    rows = sums(height)[:, basis.row_index]  # [S, F, H]
    cols = sums(width)[:, basis.col_index]  # [S, F, W]
    out_channels = weight.shape[0]
    weighted = weight.reshape(out_channels, 1, -1, 1) * rows[None]  # [Cout, S, F, H]
    y = weighted.transpose(-1, -2) @ cols[None]  # [Cout, S, H, W]
    return y[None]


def _origins(plan: Plan, group, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One group's beta [n] (like's dtype) and window origins tops, lefts [n] (int64)."""
    _, start, stop, tops, lefts = group
    return plan.beta[start:stop].to(like.dtype), torch.tensor(tops), torch.tensor(lefts)


class _WindowedHead(torch.autograd.Function):
    """(background P [1, Cout, S, H, W], each group's window lifting [n, Cout, S, side, side]) ->
    `cpu_kernels.relu_max_pool_moments` of y = β·P + the windows (pooled [B, Cout, R, Q] of the
    sorted batch, mean, variance [Cout]); the kernels read P and the windows and write the
    gradients of both, so that nothing of the canvas's size is written per image but the head's
    own r and arg-max."""

    @staticmethod
    def forward(ctx, plan: Plan, increasing, rows, cols, back: Tensor, *locals: Tensor):
        batch, shape = len(plan.beta), back.shape[1:]
        outputs = relu_max_pool_moments_outputs((batch, *shape), back.dtype, rows, cols)
        for group, local in zip(plan.groups, locals, strict=True):
            _, start, stop, _, _ = group
            window = (back[0], *_origins(plan, group, back))
            relu_max_pool_moments_into(local, increasing, [t[start:stop] for t in outputs], window)
        pooled, mean, variance, saved = relu_max_pool_moments_result(outputs, back.dtype)
        ctx.save_for_backward(mean, *saved)
        ctx.plan, ctx.shape = plan, back.shape
        return pooled, mean, variance

    @staticmethod
    def backward(ctx, grad_pooled, grad_mean, grad_variance):
        mean, *saved = ctx.saved_tensors
        plan, shape = ctx.plan, ctx.shape
        count = len(plan.beta) * shape[-2] * shape[-1]
        grad_back = mean.new_zeros(shape[1:])
        grad_locals = []
        for group in plan.groups:
            side, start, stop, _, _ = group
            grad_local = mean.new_empty(stop - start, *shape[1:3], side, side)
            pooled = None if grad_pooled is None else grad_pooled[start:stop]
            parts = [t[start:stop] for t in saved]
            window = (grad_back, *_origins(plan, group, mean))
            grads = (grad_mean, grad_variance, count, grad_local)
            relu_max_pool_moments_grad(parts, mean, pooled, *grads, window=window)
            grad_locals.append(grad_local)
        return None, None, None, None, grad_back[None], *grad_locals


def _windows(sorted_x: Tensor, plan: Plan, group) -> Tensor:
    """One group's windows of the sorted batch minus their backgrounds: [n, 1, side, side]."""
    side, start, stop, tops, lefts = group
    crops = [
        sorted_x[i, :, top : top + side, left : left + side]
        for i, top, left in zip(range(start, stop), tops, lefts, strict=True)
    ]
    return torch.stack(crops) - plan.beta[start:stop, None, None, None]


def _unsorted(plan: Plan, *sorted_outputs: Tensor) -> tuple[Tensor, ...]:
    """Outputs of the sorted batch in the batch's own order."""
    inverse = torch.empty_like(plan.order)
    inverse[plan.order] = torch.arange(len(inverse))
    return tuple(t[inverse] for t in sorted_outputs)


def pooled_relu_moments(x, weight, basis, plan: Plan, spectra_of, increasing, rows, cols):
    """The toy model's training head up to batch norm over the windows of `plan` (`plan_windows`):
    x [B, 1, H, W] -> (pooled [B, Cout, R, Q], mean, variance [Cout]), as
    `cpu_fft.lifting_pooled_relu_moments` of the canvas; spectra_of(side) -> (kernels, lengths)
    of `cpu_fft.lifting` for a side × side image."""
    sorted_x = x[plan.order]
    locals_ = [
        cpu_fft.lifting(_windows(sorted_x, plan, group), *spectra_of(group[0]))
        for group in plan.groups
    ]
    back = background(weight, basis, *x.shape[-2:])
    pooled, mean, variance = _WindowedHead.apply(plan, increasing, rows, cols, back, *locals_)
    return *_unsorted(plan, pooled), mean, variance


def scale_extremes(x, weight, basis, plan: Plan, spectra_of, rows: int, cols: int):
    """The toy model's evaluation head up to ReLU over the windows of `plan` (no gradient): x [B,
    1, H, W] -> (maxima, minima) [B, Cout, rows, cols], as `cpu_fft.lifting_scale_max_pool` of
    the canvas; each group's windows lifted pass by pass, and each pass's pool
    (`cpu_kernels.windowed_scale_max_pool`) reads β·P outside the windows, so that neither the
    canvas's lifting nor the windows' is ever whole."""
    back = background(weight, basis, *x.shape[-2:])[0]  # [Cout, S, H, W]
    backgrounds = back, back.amax(1), back.amin(1)  # P, its max and min over the scales
    sorted_x = x[plan.order]
    maxima, minima = [], []
    for group in plan.groups:
        side = group[0]
        beta, tops, lefts = _origins(plan, group, back)

        def head(y, images, channels, beta=beta, tops=tops, lefts=lefts):
            of_channels = [t[channels] for t in backgrounds]
            return windowed_scale_max_pool(
                y, of_channels, beta[images], tops[images], lefts[images], rows, cols
            )

        windows = _windows(sorted_x, plan, group)
        group_extremes = cpu_fft.lifting_scale_max_pool(
            windows, *spectra_of(side), rows, cols, head
        )
        maxima.append(group_extremes[0])
        minima.append(group_extremes[1])
    return _unsorted(plan, torch.cat(maxima), torch.cat(minima))
