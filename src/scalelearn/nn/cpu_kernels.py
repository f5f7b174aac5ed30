"""Fused CPU kernels (numba) for memory-bound steps that PyTorch's CPU ops make in several
passes over the toy model's largest tensors. CUDA tensors never come here.

**rows' channel mix** in the layout of the FFT along W. Per scale s and frequency k of the W
axis, `rows` (scalelearn.nn.fast_conv) mixes the channels with a small matrix:

    y[s, o, b, h, k] = Σ_j t[s, o, j, k] · z[s, b, j, h, k]      (j = input channel · profile)

A batched matmul needs the frequency axis first and the FFT needs it last: on top of the matmul,
a training step made four transposing copies of the [S, Cout, B, H, k] spectrum (50 MB at
batch 32 on the 84 canvas), each slower than the matmul. `channel_mix` reads and writes the
FFT's layout directly, at about the matmul's speed (the sums over j are short).

**The scale max-projection** with its arg-max, [B, C, S, H, W] -> [B, C, H, W]: `max(dim=2)`
reduces across a strided axis one element at a time and writes int64 indices (14.5 ms on the
quick preset's [32, 16, 3, 84, 84] with one thread), and its backward fills a zero tensor and
scatters into it (6.2 ms); one pass each here (2.4 and 2.7 ms), with the same values, the same
arg-max (the first of equal maxima; a NaN wins, as in torch.max) and so the same gradients.

**The lifting's kernel gradient** (`cpu_fft.lifting`, the `fft` method's lifting of one channel):
Σ_b ĝ[b] · conj(x̂[b]) read once in the spectrum's layout and written in the kernel's.

**Evaluation's scale max and pool** of the toy model, [B, C, S, H, W] -> max and min of every pool
window of the scale max: one pass over the lifting's output, where ReLU, batch norm and the pool
made four over [B, C, H, W] maps (scalelearn.nn.models.ToyModel._pooled_head).

Each output element is computed by one thread in a fixed order, so the numbers are the same for
every thread count (numba's threads follow torch.get_num_threads()). Kernels compile on first
use and are cached on disk next to this file (numba's `cache=True`; NUMBA_CACHE_DIR moves it).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor


@functools.cache
def _numba():
    """numba, imported on first use with its own thread pool, which honours set_num_threads:
    its OpenMP layer (the default where libgomp is found) kept two cores busy in a one-thread
    training job, and two such jobs on two cores took twice as long."""
    os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")  # read when numba is imported
    import numba

    return numba


@functools.cache
def _kernels() -> dict:
    """The numba kernels, compiled (or loaded from the cache) on first use."""
    numba = _numba()
    jit = numba.njit(parallel=True, cache=True)

    @jit
    def mix(t, z, y):
        """y[s, o, b, h, k] = Σ_j t[s, o, j, k] · z[s, b, j, h, k]."""
        scales, outs, ins, bins = t.shape
        batch, height = z.shape[1], z.shape[3]
        for n in numba.prange(scales * outs * batch):
            s, o, b = n // (outs * batch), (n // batch) % outs, n % batch
            for h in range(height):
                for k in range(bins):
                    y[s, o, b, h, k] = t[s, o, 0, k] * z[s, b, 0, h, k]
                for j in range(1, ins):
                    for k in range(bins):
                        y[s, o, b, h, k] += t[s, o, j, k] * z[s, b, j, h, k]

    @jit
    def mix_grad_t(g, z, out):
        """out[s, o, j, k] = Σ_(b, h) g[s, o, b, h, k] · conj(z[s, b, j, h, k])."""
        scales, outs, batch, height, bins = g.shape
        ins = z.shape[2]
        for n in numba.prange(scales * outs):
            s, o = n // outs, n % outs
            out[s, o] = 0
            for b in range(batch):
                for h in range(height):
                    for j in range(ins):
                        for k in range(bins):
                            out[s, o, j, k] += g[s, o, b, h, k] * z[s, b, j, h, k].conjugate()

    @jit
    def mix_grad_z(t, g, out):
        """out[s, b, j, h, k] = Σ_o conj(t[s, o, j, k]) · g[s, o, b, h, k]."""
        scales, outs, ins, bins = t.shape
        batch, height = g.shape[2], g.shape[3]
        for n in numba.prange(scales * batch):
            s, b = n // batch, n % batch
            for h in range(height):  # one row of every output channel at a time: g read once
                for j in range(ins):
                    for k in range(bins):
                        out[s, b, j, h, k] = t[s, 0, j, k].conjugate() * g[s, 0, b, h, k]
                for o in range(1, outs):
                    for j in range(ins):
                        for k in range(bins):
                            out[s, b, j, h, k] += t[s, o, j, k].conjugate() * g[s, o, b, h, k]

    @jit
    def scale_max(x, values, index):
        """values, index [B, C, H, W] = max and first arg-max of x [B, C, S, H, W] over S."""
        batch, channels, scales, height, width = x.shape
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            for h in range(height):
                for w in range(width):
                    values[b, c, h, w] = x[b, c, 0, h, w]
                    index[b, c, h, w] = 0
                for s in range(1, scales):
                    for w in range(width):
                        v, best = x[b, c, s, h, w], values[b, c, h, w]
                        if v > best or (v != v and best == best):  # the first NaN wins
                            values[b, c, h, w] = v
                            index[b, c, h, w] = s

    @jit
    def scale_max_grad(g, index, out):
        """out[b, c, s, h, w] = g[b, c, h, w] where s is the arg-max, else 0."""
        batch, channels, scales, height, width = out.shape
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            for s in range(scales):
                for h in range(height):
                    for w in range(width):
                        out[b, c, s, h, w] = g[b, c, h, w] if index[b, c, h, w] == s else 0

    @jit
    def lifting_kernel_grad(g, x, paired_start, paired_stop, out):
        """out[o, s, k2, k1] = Σ_b g[b, o, s, k1, k2] · conj(x[b, k1, k2]), times 2 for
        paired_start <= k2 < paired_stop."""
        batch, outs, scales, rows, bins = g.shape
        for n in numba.prange(outs * scales):
            o, s = n // scales, n % scales
            row = np.empty(bins, dtype=g.dtype)
            for k1 in range(rows):  # one row of g per image, read in order; out written across
                for k2 in range(bins):
                    row[k2] = g[0, o, s, k1, k2] * x[0, k1, k2].conjugate()
                for b in range(1, batch):
                    for k2 in range(bins):
                        row[k2] += g[b, o, s, k1, k2] * x[b, k1, k2].conjugate()
                for k2 in range(bins):
                    out[o, s, k2, k1] = 2 * row[k2] if paired_start <= k2 < paired_stop else row[k2]

    @jit
    def scale_max_pool(x, maxima, minima):
        """maxima, minima [B, C, R, Q] = max and min over each (H/R)×(W/Q) window of the max of
        x [B, C, S, H, W] over S (a NaN anywhere in a window wins)."""
        batch, channels, scales, height, width = x.shape
        rows, cols = maxima.shape[2], maxima.shape[3]
        window_h, window_w = height // rows, width // cols
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            row = np.empty(width, dtype=x.dtype)
            for h in range(height):
                for w in range(width):  # the scale max of one row, scale by scale
                    row[w] = x[b, c, 0, h, w]
                for s in range(1, scales):
                    for w in range(width):
                        u = x[b, c, s, h, w]
                        row[w] = u if u > row[w] or u != u else row[w]
                i = h // window_h
                for j in range(cols):
                    high = row[j * window_w] if h % window_h == 0 else maxima[b, c, i, j]
                    low = row[j * window_w] if h % window_h == 0 else minima[b, c, i, j]
                    for w in range(j * window_w, (j + 1) * window_w):
                        v = row[w]
                        high = v if v > high or v != v else high
                        low = v if v < low or v != v else low
                    maxima[b, c, i, j] = high
                    minima[b, c, i, j] = low

    return {
        "lifting_kernel_grad": lifting_kernel_grad,
        "scale_max_pool": scale_max_pool,
        "mix": mix,
        "mix_grad_t": mix_grad_t,
        "mix_grad_z": mix_grad_z,
        "scale_max": scale_max,
        "scale_max_grad": scale_max_grad,
    }


def _run(kernel: str, *args) -> None:
    """One kernel on CPU tensors (as numpy views, no copies; the last ones are written) and
    integers, with torch's thread count."""
    numba = _numba()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _kernels()[kernel](*(a.detach().numpy() if isinstance(a, Tensor) else a for a in args))


def _dense(t: Tensor) -> Tensor:
    return t.resolve_conj().contiguous()


class _ChannelMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, z: Tensor) -> Tensor:
        t, z = _dense(t), _dense(z)
        ctx.save_for_backward(t, z)
        scales, outs, _, bins = t.shape
        y = t.new_empty(scales, outs, z.shape[1], z.shape[3], bins)
        _run("mix", t, z, y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        t, z = ctx.saved_tensors
        grad, grad_t, grad_z = _dense(grad), None, None
        if ctx.needs_input_grad[0]:
            grad_t = torch.empty_like(t)
            _run("mix_grad_t", grad, z, grad_t)
        if ctx.needs_input_grad[1]:
            grad_z = torch.empty_like(z)
            _run("mix_grad_z", t, grad, grad_z)
        return grad_t, grad_z


def channel_mix(t: Tensor, z: Tensor) -> Tensor:
    """t [S, Cout, J, k] (complex), z [S, B, J, H, k] (complex, the FFT along W of the row pass)
    -> y [S, Cout, B, H, k], y[s, o, b, h] = Σ_j t[s, o, j] · z[s, b, j, h] per frequency.
    CPU tensors; gradients reach t and z."""
    return _ChannelMix.apply(t, z)


class _ScaleMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        batch, channels, scales, height, width = x.shape
        values = x.new_empty(batch, channels, height, width)
        index = torch.empty(values.shape, dtype=torch.uint8)
        _run("scale_max", x, values, index)  # x in any layout: the lifting's output is a view
        ctx.save_for_backward(index)
        ctx.input_shape = x.shape
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (index,) = ctx.saved_tensors
        out = grad.new_empty(ctx.input_shape)
        _run("scale_max_grad", grad.contiguous(), index, out)
        return out


def lifting_kernel_grad(g_hat: Tensor, x_hat: Tensor, paired: slice) -> Tensor:
    """The kernel's gradient of `cpu_fft.lifting`: g_hat [B, Cout, S, k1, k2], x_hat [B, k1, k2]
    (complex) -> [Cout, S, k2, k1], Σ_b g_hat[b] · conj(x_hat[b]), the bins `paired` of k2
    doubled."""
    g_hat, x_hat = _dense(g_hat), _dense(x_hat)
    batch, outs, scales, rows, bins = g_hat.shape
    out = g_hat.new_empty(outs, scales, bins, rows)
    _run("lifting_kernel_grad", g_hat, x_hat, paired.start, paired.stop, out)
    return out


def scale_max_pool(x: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """x [B, C, S, H, W] (real, CPU, any strides; H, W multiples of rows, cols) -> (maxima,
    minima) [B, C, rows, cols]: the max and the min over every (H/rows)×(W/cols) window of
    x.max(dim=2), as adaptive max and min pooling would give them (a NaN propagates). No
    gradient (evaluation)."""
    batch, channels = x.shape[:2]
    maxima = x.new_empty(batch, channels, rows, cols)
    minima = torch.empty_like(maxima)
    _run("scale_max_pool", x, maxima, minima)
    return maxima, minima


def scale_max(x: Tensor) -> Tensor:
    """x [B, C, S, H, W] (real, CPU, S < 256) -> x.max(dim=2).values, with max's gradient."""
    return _ScaleMax.apply(x)
