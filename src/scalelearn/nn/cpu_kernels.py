"""Fused CPU kernels (numba) for memory-bound steps that PyTorch's CPU ops make in several
passes over the toy model's largest tensors. CUDA tensors never come here.

**rows' channel mix** in the layout of the FFT along W. Per scale s and frequency k of the W
axis, `rows` (scalelearn.nn.fast_conv) mixes the channels with a small matrix:

    y[b, o, s, h, k] = Σ_j t[s, o, j, k] · z[s, b, j, h, k]      (j = input channel · profile)

A batched matmul needs the frequency axis first and the FFT needs it last: on top of the matmul,
a training step made four transposing copies of the [S, Cout, B, H, k] spectrum (50 MB at
batch 32 on the 84 canvas), each slower than the matmul. `channel_mix` reads and writes the
FFT's layout directly, at about the matmul's speed (the sums over j are short), and writes y in
the layer's output layout [B, Cout, S, H, k], so that the inverse FFT's result is the output,
which the heads' kernels read in place (before, the permuted output cost a copy each way: the
quick preset's E1 step, `rows`, 84², batch 32, 1 thread, 117-120 -> 110-113 ms).

**The scale max-projection** with its arg-max, [B, C, S, H, W] -> [B, C, H, W]: `max(dim=2)`
reduces across a strided axis one element at a time and writes int64 indices (14.5 ms on the
quick preset's [32, 16, 3, 84, 84] with one thread), and its backward fills a zero tensor and
scatters into it (6.2 ms); one pass each here (2.4 and 2.7 ms), with the same values, the same
arg-max (the first of equal maxima; a NaN wins, as in torch.max) and so the same gradients.

**The lifting's kernel gradient** (`cpu_fft.lifting`, the `fft` method's lifting of one channel):
Σ_b ĝ[b] · conj(x̂[b]) read once in the spectrum's layout, added pass by pass.

**Evaluation's scale max and pool** of the toy model, [B, C, S, H, W] -> max and min of every pool
window of the scale max: one pass over the lifting's output, where ReLU, batch norm and the pool
made four over [B, C, H, W] maps (scalelearn.nn.models.ToyModel._pooled_head); the same over a
window's lifting placed on the background's (`windowed_scale_max_pool`, scalelearn.nn.windows).

**The toy model's training head up to batch norm** (`pooled_relu_moments`): r = relu(scale max),
every pool window's max or min of r, and r's batch mean and variance, in one pass over the
lifting's output; its backward writes the gradient in one pass, into the `fft` lifting's
zero-padded buffer where it follows that lifting (scalelearn.nn.models.ToyModel._fused_head).
The same over a window's lifting placed on the background's (scalelearn.nn.windows), whose
gradient goes to the window and, weighted by β, to the background's.

**SESN's bias, ReLU and 2×2 max pool** (`bias_relu_pool`), one pass each way.

The kernels read the lifting's output, a crop of wider rows, in place (`_padded_rows`): numba
vectorises loops over C-contiguous arrays only. Each output element is computed by one thread
in a fixed order, so the numbers are the same for every thread count (numba's threads follow
torch.get_num_threads()). Kernels compile on first use and are cached on disk next to this file
(numba's `cache=True`; NUMBA_CACHE_DIR moves it).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor


@functools.cache
def _numba():
    """numba, imported on first use with the threading layer that suits torch's thread count
    then (numba reads it when imported; a user's NUMBA_THREADING_LAYER wins):
    - one thread: `workqueue`, which honours set_num_threads: the OpenMP layer kept two cores
      busy in a one-thread training job (its idle worker spins), and two such jobs on two cores
      took twice as long;
    - several: OpenMP where numba finds libgomp, else workqueue. Between torch's own parallel
      ops, whose OpenMP workers spin after each, workqueue's sleeping workers took about twice
      as long to run a kernel (`e2_toy`'s training step, 2 threads: 70-77 against 55-64 ms;
      README "Throughput")."""
    if "NUMBA_THREADING_LAYER" not in os.environ:
        if torch.get_num_threads() > 1:
            os.environ.setdefault("NUMBA_THREADING_LAYER_PRIORITY", "omp workqueue tbb")
        else:
            os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    import numba

    return numba


@functools.cache
def _kernels() -> dict:
    """The numba kernels, compiled (or loaded from the cache) on first use."""
    numba = _numba()
    jit = numba.njit(parallel=True, cache=True)

    @jit
    def mix(t, z, y):
        """y[b, o, s, h, k] = Σ_j t[s, o, j, k] · z[s, b, j, h, k]."""
        scales, outs, ins, bins = t.shape
        batch, height = z.shape[1], z.shape[3]
        for n in numba.prange(scales * outs * batch):
            s, o, b = n // (outs * batch), (n // batch) % outs, n % batch
            for h in range(height):
                for k in range(bins):
                    y[b, o, s, h, k] = t[s, o, 0, k] * z[s, b, 0, h, k]
                for j in range(1, ins):
                    for k in range(bins):
                        y[b, o, s, h, k] += t[s, o, j, k] * z[s, b, j, h, k]

    @jit
    def mix_grad_t(g, z, out):
        """out[s, o, j, k] = Σ_(b, h) g[b, o, s, h, k] · conj(z[s, b, j, h, k])."""
        batch, outs, scales, height, bins = g.shape
        ins = z.shape[2]
        for n in numba.prange(scales * outs):
            s, o = n // outs, n % outs
            out[s, o] = 0
            for b in range(batch):
                for h in range(height):
                    for j in range(ins):
                        for k in range(bins):
                            out[s, o, j, k] += g[b, o, s, h, k] * z[s, b, j, h, k].conjugate()

    @jit
    def mix_grad_z(t, g, out):
        """out[s, b, j, h, k] = Σ_o conj(t[s, o, j, k]) · g[b, o, s, h, k]."""
        scales, outs, ins, bins = t.shape
        batch, height = g.shape[0], g.shape[3]
        for n in numba.prange(scales * batch):
            s, b = n // batch, n % batch
            for h in range(height):  # one row of every output channel at a time: g read once
                for j in range(ins):
                    for k in range(bins):
                        out[s, b, j, h, k] = t[s, 0, j, k].conjugate() * g[b, 0, s, h, k]
                for o in range(1, outs):
                    for j in range(ins):
                        for k in range(bins):
                            out[s, b, j, h, k] += t[s, o, j, k].conjugate() * g[b, o, s, h, k]

    @jit
    def scale_max(x, width, values, index):
        """values, index [B, C, H, W] = max and first arg-max of x [B, C, S, H, ≥W][..., :W]
        over S."""
        batch, channels, scales, height = x.shape[:4]
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
    def lifting_kernel_grad(g, x, total):
        """total[o, s, k1, k2] += Σ_b g[b, o, s, k1, k2] · conj(x[b, k1, k2]), b in order (so
        that images added pass by pass sum as they would in one call)."""
        batch, outs, scales, rows, bins = g.shape
        for n in numba.prange(outs * scales):
            o, s = n // scales, n % scales
            for k1 in range(rows):  # one row of g per image, read in order
                row = total[o, s, k1]
                for b in range(batch):
                    for k2 in range(bins):
                        row[k2] += g[b, o, s, k1, k2] * x[b, k1, k2].conjugate()

    @jit
    def scale_max_pool(parts, width, maxima, minima):
        """maxima, minima [B, C, R, Q] = max and min over each (H/R)×(W/Q) window of the max of
        x [B, C, S, H, ≥W][..., :W] over S (a NaN anywhere in a window wins), x's scales given
        as consecutive parts (a tuple of [B, C, S', H, ≥W]). Elementwise across rows, with
        selections on `|` (the loops vectorise: 2.7x faster than reducing each window row by
        row, measured); a window's columns are reduced at its last row."""
        front = parts[0]
        batch, channels, _, height = front.shape[:4]
        rows, cols = maxima.shape[2], maxima.shape[3]
        window_h, window_w = height // rows, width // cols
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            row = np.empty(width, dtype=front.dtype)
            high = np.empty(width, dtype=front.dtype)  # per column, over the window's rows so far
            low = np.empty(width, dtype=front.dtype)
            for h in range(height):
                for w in range(width):  # the scale max of one row, scale by scale
                    row[w] = front[b, c, 0, h, w]
                start = 1  # the first part's first scale is in `row` already
                for x in parts:
                    for s in range(start, x.shape[2]):
                        for w in range(width):
                            u, v = x[b, c, s, h, w], row[w]
                            row[w] = u if (u > v) | (u != u) else v
                    start = 0
                if h % window_h == 0:
                    high[:] = row
                    low[:] = row
                else:
                    for w in range(width):
                        v, top, bottom = row[w], high[w], low[w]
                        high[w] = v if (v > top) | (v != v) else top
                        low[w] = v if (v < bottom) | (v != v) else bottom
                if h % window_h == window_h - 1:
                    i = h // window_h
                    for j in range(cols):
                        top, bottom = high[j * window_w], low[j * window_w]
                        for w in range(j * window_w + 1, (j + 1) * window_w):
                            u, v = high[w], low[w]
                            top = u if (u > top) | (u != u) else top
                            bottom = v if (v < bottom) | (v != v) else bottom
                        maxima[b, c, i, j], minima[b, c, i, j] = top, bottom

    @jit
    def windowed_scale_max_pool(
        parts, back, high_back, low_back, beta, tops, lefts, maxima, minima
    ):
        """`scale_max_pool` of y = β·P + the window's lifting on an H × W canvas: y[b, c, s] =
        beta[b] · back[c, s] ([C, S, H, W]) plus, inside the side × side window at (tops[b],
        lefts[b]), the window's lifting x[b, c, s] (its scales in consecutive parts, a tuple of
        [B, C, S', side, ≥side]). Outside the window the scale max is beta[b] times
        high_back [C, H, W] (back's max over S) where beta[b] ≥ 0, else times low_back (its min):
        rounding is monotone, so these are the max over S of the rounded products. The pool as
        in `scale_max_pool` (a helper function shared by the two would defeat numba's cache)."""
        front = parts[0]
        batch, channels, _, side = front.shape[:4]
        height, width = back.shape[2:]
        rows, cols = maxima.shape[2], maxima.shape[3]
        window_h, window_w = height // rows, width // cols
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            factor, top, left = beta[b], tops[b], lefts[b]
            extreme = high_back if factor >= 0 else low_back
            row = np.empty(width, dtype=front.dtype)
            high = np.empty(width, dtype=front.dtype)
            low = np.empty(width, dtype=front.dtype)
            for h in range(height):
                for w in range(width):
                    row[w] = factor * extreme[c, h, w]
                if top <= h < top + side:
                    inside, first = row[left : left + side], 0
                    for x in parts:
                        for s in range(x.shape[2]):
                            scale = back[c, first + s, h, left : left + side]
                            local = x[b, c, s, h - top]
                            if first + s == 0:
                                for w in range(side):
                                    inside[w] = factor * scale[w] + local[w]
                            else:
                                for w in range(side):
                                    u, v = factor * scale[w] + local[w], inside[w]
                                    inside[w] = u if (u > v) | (u != u) else v
                        first += x.shape[2]
                if h % window_h == 0:
                    high[:] = row
                    low[:] = row
                else:
                    for w in range(width):
                        v, top_value, bottom = row[w], high[w], low[w]
                        high[w] = v if (v > top_value) | (v != v) else top_value
                        low[w] = v if (v < bottom) | (v != v) else bottom
                if h % window_h == window_h - 1:
                    i = h // window_h
                    for j in range(cols):
                        top_value, bottom = high[j * window_w], low[j * window_w]
                        for w in range(j * window_w + 1, (j + 1) * window_w):
                            u, v = high[w], low[w]
                            top_value = u if (u > top_value) | (u != u) else top_value
                            bottom = v if (v < bottom) | (v != v) else bottom
                        maxima[b, c, i, j], minima[b, c, i, j] = top_value, bottom

    @jit
    def relu_max_pool_moments(
        parts, width, back, beta, tops, lefts, increasing, pooled, position, relu_max, index, sums
    ):
        """Per plane (b, c) of y [B, C, S, H, W]: r = relu(max of y over S) and its first arg-max
        scale (relu_max, index [B, C, H, W]); pooled [B, C, R, Q] = the max of r over every
        (H/R)×(W/Q) window where increasing[c], else the min, at position h·W + w (the first in
        row-major order, as adaptive max pooling's; a NaN wins); sums [B, C, 2] = Σ r and Σ r²
        in float64. y is read from x, its scales given as consecutive parts (a tuple of [B, C,
        S', side_h, ≥width][..., :width]):
        - with an empty `back`, y = x (side_h = H, width = W; beta, tops, lefts unread);
        - else y[b, c, s] = beta[b] · back[c, s] ([C, S, H, W]) on the whole canvas, plus x[b,
          c, s] inside the side_h × width window at (tops[b], lefts[b]) (`scalelearn.nn.windows`:
          the canvas of a window's lifting is never written).
        Selections on `|` and `&` over 32-bit types, as `bias_relu_pool`'s (on the AMD machine,
        1 thread: one pass of a real E1 step, 4 images at K 35, 4.0 -> 3.1 ms, its gradient 2.5
        -> 1.2 ms; whole E1 steps 4-13 % less time)."""
        front = parts[0]
        batch, channels, _, side = front.shape[:4]
        height, canvas = relu_max.shape[2], relu_max.shape[3]
        rows, cols = pooled.shape[2], pooled.shape[3]
        window_h, window_w = height // rows, canvas // cols
        placed = back.shape[0] > 0
        for n in numba.prange(batch * channels):
            b, c = n // channels, n % channels
            up = increasing[c]
            zero = front.dtype.type(0)  # not 0.0: a float64 would widen float32 rows
            factor = beta[b] if placed else zero
            top, left = (tops[b], lefts[b]) if placed else (0, 0)
            row = np.empty(canvas, dtype=front.dtype)
            arg = np.empty(canvas, dtype=np.int32)  # 32-bit, as the rows: the selects vectorise
            y = np.empty(canvas, dtype=front.dtype)  # one scale's row of y where it is placed
            # Per column: the sums, and the extreme over the window's rows so far and its row
            # (elementwise across a row, so the loops vectorise; a window's columns are reduced
            # once, at its last row).
            total = np.zeros(canvas, dtype=np.float64)
            squares = np.zeros(canvas, dtype=np.float64)
            best = np.empty(canvas, dtype=front.dtype)
            best_row = np.empty(canvas, dtype=np.int32)
            for h in range(height):
                inside = top <= h < top + side
                first = 0
                for x in parts:
                    for s in range(x.shape[2]):
                        scale = np.int32(first + s)
                        if placed:
                            plane = back[c, first + s, h]
                            for w in range(canvas):
                                y[w] = factor * plane[w]
                            if inside:
                                local = x[b, c, s, h - top]
                                for w in range(width):
                                    y[left + w] += local[w]
                            line = y
                        else:
                            line = x[b, c, s, h]
                        if scale == 0:  # the scale max of one row, scale by scale
                            for w in range(canvas):
                                row[w], arg[w] = line[w], 0
                        else:
                            for w in range(canvas):
                                u, v = line[w], row[w]
                                wins = (u > v) | ((u != u) & (v == v))  # the first NaN wins
                                row[w] = u if wins else v
                                arg[w] = scale if wins else arg[w]
                    first += x.shape[2]
                for w in range(canvas):
                    v = row[w]
                    r = v if (v > zero) | (v != v) else zero  # ReLU (NaN stays NaN)
                    row[w] = r
                    relu_max[b, c, h, w] = r
                    index[b, c, h, w] = arg[w]
                    total[w] += r
                    squares[w] += np.float64(r) * np.float64(r)
                here = np.int32(h)
                if h % window_h == 0:
                    for w in range(canvas):
                        best[w], best_row[w] = row[w], here
                elif up:
                    for w in range(canvas):
                        v, top_value = row[w], best[w]
                        wins = (v > top_value) | (v != v)
                        best[w] = v if wins else top_value
                        best_row[w] = here if wins else best_row[w]
                else:
                    for w in range(canvas):
                        v, top_value = row[w], best[w]
                        wins = (v < top_value) | (v != v)
                        best[w] = v if wins else top_value
                        best_row[w] = here if wins else best_row[w]
                if h % window_h == window_h - 1:
                    i = h // window_h
                    for j in range(cols):  # the first extreme in row-major order
                        start = j * window_w
                        top_value, place = best[start], best_row[start] * canvas + start
                        for w in range(start + 1, start + window_w):
                            v, at = best[w], best_row[w] * canvas + w
                            better = v > top_value if up else v < top_value
                            nan = v != v and top_value == top_value
                            if better or (v == top_value and at < place) or nan:
                                top_value, place = v, at
                        pooled[b, c, i, j], position[b, c, i, j] = top_value, place
            sums[b, c, 0], sums[b, c, 1] = total.sum(), squares.sum()

    @jit
    def relu_max_pool_moments_grad(
        g_pooled, position, relu_max, index, offset, slope, first, back, beta, tops, lefts, out
    ):
        """∂y of `relu_max_pool_moments` for the scales first … first + S' − 1: g[b, c, s, h, w]
        = offset[c] + slope[c] · r (+ g_pooled where (h, w) is its window's position) where
        first + s is the arg-max scale and r = relu_max[b, c, h, w] > 0, else 0. With an empty
        `back`, out [B, C, S', L_H ≥ H, L_W ≥ W] = g (zero beyond H × W: out may be a larger,
        zero-padded buffer); else out [B, C, S', side, side] = g inside each image's window at
        (tops[b], lefts[b]), and back [C, S, H, W] += Σ_b beta[b] · g[b] (the images in order,
        by one thread per channel: the same sums for every thread count)."""
        batch, channels, height, width = relu_max.shape
        scales, length_h, length_w = out.shape[2], out.shape[3], out.shape[4]
        rows, cols = g_pooled.shape[2], g_pooled.shape[3]
        placed = back.shape[0] > 0
        side_h, side_w = min(length_h, height), min(length_w, width)
        for c in numba.prange(channels):
            zero = out.dtype.type(0)
            shift, gain = offset[c], slope[c]
            g = np.empty(width, dtype=out.dtype)
            for b in range(batch):
                factor = beta[b] if placed else zero
                top, left = (tops[b], lefts[b]) if placed else (0, 0)
                for s in range(scales):
                    scale = np.uint8(first + s)  # the index's own type
                    for h in range(height):
                        for w in range(width):
                            r = relu_max[b, c, h, w]
                            chosen = (index[b, c, h, w] == scale) & (r > zero)
                            g[w] = shift + gain * r if chosen else zero
                        if placed:
                            plane = back[c, first + s, h]
                            for w in range(width):
                                plane[w] += factor * g[w]
                        if top <= h < top + side_h:
                            line = out[b, c, s, h - top]
                            for w in range(side_w):
                                line[w] = g[left + w]
                            for w in range(side_w, length_w):
                                line[w] = 0
                    for h in range(side_h, length_h):
                        for w in range(length_w):
                            out[b, c, s, h, w] = 0
                for i in range(rows):
                    for j in range(cols):
                        h, w = position[b, c, i, j] // width, position[b, c, i, j] % width
                        s = np.int64(index[b, c, h, w]) - first
                        if relu_max[b, c, h, w] > 0 and 0 <= s < scales:
                            if placed:
                                back[c, first + s, h, w] += factor * g_pooled[b, c, i, j]
                            if top <= h < top + side_h and left <= w < left + side_w:
                                out[b, c, s, h - top, w - left] += g_pooled[b, c, i, j]

    @jit
    def bias_relu_pool(x, width, bias, first, out, index):
        """out[:, :, first + s] [B, C, S', H/2, W/2] = relu(the max of x [B, C, S', H, ≥W][...,
        :W] + bias[c] over every 2×2 window); index likewise = the window's first arg-max, 0-3
        in row-major order (a NaN wins), as float32. Selections on `|` and `&` instead of
        branches on `or` and `and`: the loop vectorises (3.6x faster, measured). A float32
        index (not uint8) keeps every type of the loops 32-bit, and so their vectors short
        enough for SESN's rows of 14 and 28 windows: forward 1.0-1.4x, backward 1.6-2.0x faster
        (its runs of scales, batch 32, 2 threads, measured)."""
        batch, channels, scales = x.shape[:3]
        rows, cols = out.shape[3], out.shape[4]
        for n in numba.prange(batch * channels * scales):
            b, c, s = n // (channels * scales), (n // scales) % channels, n % scales
            shift = bias[c]
            for i in range(rows):
                top, bottom = x[b, c, s, 2 * i], x[b, c, s, 2 * i + 1]
                values, places = out[b, c, first + s, i], index[b, c, first + s, i]
                for j in range(cols):
                    best, k = top[2 * j] + shift, np.float32(0)
                    v = top[2 * j + 1] + shift
                    wins = (v > best) | ((v != v) & (best == best))
                    best, k = (v if wins else best), (np.float32(1) if wins else k)
                    v = bottom[2 * j] + shift
                    wins = (v > best) | ((v != v) & (best == best))
                    best, k = (v if wins else best), (np.float32(2) if wins else k)
                    v = bottom[2 * j + 1] + shift
                    wins = (v > best) | ((v != v) & (best == best))
                    best, k = (v if wins else best), (np.float32(3) if wins else k)
                    values[j] = best if (best > 0) | (best != best) else np.float32(0)
                    places[j] = k

    @jit
    def bias_relu_pool_grad(g, out, index, first, grad_x, grad_bias):
        """grad_x [B, C, S', ≥H, ≥W] = g[:, :, first + s] at each window's arg-max where out >
        0, else 0 (also beyond H × W: grad_x may be a larger, zero-padded buffer); grad_bias
        [B, C, S'] = Σ of those (float64)."""
        batch, channels, scales = grad_x.shape[:3]
        rows, cols = out.shape[3], out.shape[4]
        for n in numba.prange(batch * channels * scales):
            b, c, s = n // (channels * scales), (n // scales) % channels, n % scales
            sums = np.zeros(cols, dtype=np.float64)
            grad_x[b, c, s] = 0.0  # the odd sides' last row and column, then every other place
            for i in range(rows):
                top, bottom = grad_x[b, c, s, 2 * i], grad_x[b, c, s, 2 * i + 1]
                for j in range(cols):
                    v = g[b, c, first + s, i, j] if out[b, c, first + s, i, j] > 0 else 0.0
                    k = index[b, c, first + s, i, j]
                    top[2 * j] = v if k == np.float32(0) else 0.0
                    top[2 * j + 1] = v if k == np.float32(1) else 0.0
                    bottom[2 * j] = v if k == np.float32(2) else 0.0
                    bottom[2 * j + 1] = v if k == np.float32(3) else 0.0
                    sums[j] += v
            grad_bias[b, c, s] = sums.sum()

    @jit
    def transpose(src, conj, dst):
        """dst[c, r] = src[r, c] (its conjugate where `conj`), in tiles of 32 × 32 (8 kB of
        complex64, in L1), each dst row of a tile written in one run: reading src's columns and
        writing dst's rows took 1.5-3.8x less time than the other way round (SESN's spectra,
        [B·Cin, N] of conv2: 2.5-3.1 -> 0.7-0.8 ms, 2 threads, measured)."""
        rows, cols = src.shape
        row_tiles, col_tiles = (rows + 31) // 32, (cols + 31) // 32
        for n in numba.prange(row_tiles * col_tiles):
            first_row, first_col = (n // col_tiles) * 32, (n % col_tiles) * 32
            for c in range(first_col, min(cols, first_col + 32)):
                for r in range(first_row, min(rows, first_row + 32)):
                    dst[c, r] = src[r, c].conjugate() if conj else src[r, c]

    return {
        "transpose": transpose,
        "lifting_kernel_grad": lifting_kernel_grad,
        "relu_max_pool_moments": relu_max_pool_moments,
        "bias_relu_pool": bias_relu_pool,
        "bias_relu_pool_grad": bias_relu_pool_grad,
        "relu_max_pool_moments_grad": relu_max_pool_moments_grad,
        "scale_max_pool": scale_max_pool,
        "windowed_scale_max_pool": windowed_scale_max_pool,
        "mix": mix,
        "mix_grad_t": mix_grad_t,
        "mix_grad_z": mix_grad_z,
        "scale_max": scale_max,
        "scale_max_grad": scale_max_grad,
    }


def _numpy(a):
    """A tensor (or a tuple of them) as numpy views, anything else as it is."""
    if isinstance(a, tuple):
        return tuple(map(_numpy, a))
    return a.detach().numpy() if isinstance(a, Tensor) else a


def _run(kernel: str, *args) -> None:
    """One kernel on CPU tensors (as numpy views, no copies; the last ones are written), tuples
    of them and integers, with torch's thread count."""
    numba = _numba()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    _kernels()[kernel](*map(_numpy, args))


def _dense(t: Tensor) -> Tensor:
    return t.resolve_conj().contiguous()


def _padded_rows(x: Tensor) -> Tensor:
    """x [..., H, W] as the C-contiguous [..., H, R] buffer it is a crop of, where its rows are
    R ≥ W apart and unit-strided (the lifting's output: a view into its inverse transform's
    L_W-wide rows); else x.contiguous(). numba vectorises loops over C-contiguous arrays only:
    on the strided view itself the scale max took 2-3x as long (measured, e2_toy)."""
    row = x.stride(-2)
    shape = (*x.shape[:-1], row)
    padded = torch.empty(shape, device="meta")  # the contiguous strides, no memory
    fits = (x.storage_offset() + padded.numel()) * x.element_size() <= x.untyped_storage().nbytes()
    if x.stride(-1) == 1 and row >= x.shape[-1] and x.stride() == padded.stride() and fits:
        return x.as_strided(shape, padded.stride())
    return x.contiguous()


class _ChannelMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, z: Tensor) -> Tensor:
        t, z = _dense(t), _dense(z)
        ctx.save_for_backward(t, z)
        scales, outs, _, bins = t.shape
        y = t.new_empty(z.shape[1], outs, scales, z.shape[3], bins)
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
    -> y [B, Cout, S, H, k], y[b, o, s, h] = Σ_j t[s, o, j] · z[s, b, j, h] per frequency: the
    layer's output layout, so that its inverse FFT along W is the output itself. CPU tensors;
    gradients reach t and z."""
    return _ChannelMix.apply(t, z)


class _ScaleMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        batch, channels, scales, height, width = x.shape
        values = x.new_empty(batch, channels, height, width)
        index = torch.empty(values.shape, dtype=torch.uint8)
        _run("scale_max", _padded_rows(x), width, values, index)
        ctx.save_for_backward(index)
        ctx.input_shape = x.shape
        return values

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (index,) = ctx.saved_tensors
        out = grad.new_empty(ctx.input_shape)
        _run("scale_max_grad", grad.contiguous(), index, out)
        return out


def transposed(x: Tensor, conj: bool = False) -> Tensor:
    """x [R, C] -> its transpose as a contiguous [C, R] tensor (conjugated where `conj`, for
    complex x). PyTorch's copy of a transposed view of SESN's spectra ([B·C, S·k1·k2] complex,
    27-54 MB) ran at 4-8 GB/s here, element by element along one axis; tile by tile it took
    2.5-6x less time (README "Throughput")."""
    x = _dense(x)
    out = x.new_empty(x.shape[1], x.shape[0])
    _run("transpose", x, conj, out)
    return out


def add_lifting_kernel_grad(g_hat: Tensor, x_hat: Tensor, total: Tensor) -> None:
    """The kernel's gradient of `cpu_fft.lifting`, before its paired bins are doubled, summed
    over some images: g_hat [B, Cout, S, k1, k2], x_hat [B, k1, k2] (complex); total [Cout, S,
    k1, k2] (contiguous) += Σ_b g_hat[b] · conj(x_hat[b])."""
    _run("lifting_kernel_grad", _dense(g_hat), _dense(x_hat), total)


def _parts(x) -> tuple[tuple, int]:
    """x [B, C, S, H, W], or its scales in consecutive parts (a list of [B, C, S', H, W] of one
    dtype) -> (the C-contiguous buffers the kernels read (`_padded_rows`), W)."""
    parts = list(x) if isinstance(x, (list, tuple)) else [x]
    return tuple(map(_padded_rows, parts)), parts[0].shape[-1]


def scale_max_pool(x, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """x [B, C, S, H, W] (real, CPU, any strides; H, W multiples of rows, cols), or its scales
    in consecutive parts (a list) -> (maxima, minima) [B, C, rows, cols]: the max and the min
    over every (H/rows)×(W/cols) window of x.max(dim=2), as adaptive max and min pooling would
    give them (a NaN propagates). No gradient (evaluation)."""
    parts, width = _parts(x)
    batch, channels = parts[0].shape[:2]
    maxima = parts[0].new_empty(batch, channels, rows, cols)
    minima = torch.empty_like(maxima)
    _run("scale_max_pool", parts, width, maxima, minima)
    return maxima, minima


def windowed_scale_max_pool(x, background, beta, tops, lefts, rows: int, cols: int):
    """`scale_max_pool` of y = β·P + each image's window lifting, never whole: x [B, C, S, side,
    side] (any strides) or its scales in consecutive parts (a list), the windows' liftings;
    background (P [C, S, H, W], P's max and min over S [C, H, W]); beta [B]; tops, lefts [B]
    (int64) the windows' origins on the H × W canvas -> (maxima, minima) [B, C, rows, cols]."""
    parts, _ = _parts(x)
    back, high, low = (t.contiguous() for t in background)
    maxima = parts[0].new_empty(len(beta), back.shape[0], rows, cols)
    minima = torch.empty_like(maxima)
    _run("windowed_scale_max_pool", parts, back, high, low, beta, tops, lefts, maxima, minima)
    return maxima, minima


def scale_max(x: Tensor) -> Tensor:
    """x [B, C, S, H, W] (real, CPU, S < 256) -> x.max(dim=2).values, with max's gradient."""
    return _ScaleMax.apply(x)


def relu_max_pool_moments_outputs(x_shape, dtype, rows: int, cols: int) -> tuple:
    """Empty outputs of `relu_max_pool_moments_into` for x of x_shape [B, C, S, H, W]: pooled,
    position [B, C, rows, cols], relu_max, index [B, C, H, W], sums [B, C, 2] (float64)."""
    batch, channels, _, height, width = x_shape
    pooled = torch.empty(batch, channels, rows, cols, dtype=dtype)
    position = torch.empty(pooled.shape, dtype=torch.int64)
    relu_max = torch.empty(batch, channels, height, width, dtype=dtype)
    index = torch.empty(relu_max.shape, dtype=torch.uint8)
    sums = torch.empty(batch, channels, 2, dtype=torch.float64)
    return pooled, position, relu_max, index, sums


def _unplaced(like: Tensor) -> tuple:
    """The kernels' (back, beta, tops, lefts) where y is x itself: empty."""
    empty = torch.empty(0, dtype=torch.int64)
    return like.new_empty(0, 0, 0, 0), like.new_empty(0), empty, empty


def relu_max_pool_moments_into(x, increasing: Tensor, outputs: tuple, window=None) -> None:
    """Per image of y [B, C, S, H, W] into `outputs` (`relu_max_pool_moments_outputs`, or the
    same images' slices of them): r = relu(y.max(dim=2)) and its arg-max scale, the max of r over
    every pool window where increasing[c] (bool [C]), else the min, and its first place, and Σ
    r, Σ r² (H, W multiples of the pool's rows, cols; S < 256). y is x (real, CPU, any strides),
    or its scales in consecutive parts (a list); with `window` = (back P [C, S, H, W], beta [B],
    tops, lefts [B] int64), x [B, C, S, side, side] is each image's window lifting and y = β·P
    with x added inside the window at (tops, lefts), never whole (`scalelearn.nn.windows`)."""
    increasing = increasing.detach().to(torch.bool).contiguous()
    parts, width = _parts(x)
    placed = _unplaced(parts[0]) if window is None else tuple(t.contiguous() for t in window)
    _run("relu_max_pool_moments", parts, width, *placed, increasing, *outputs)


def relu_max_pool_moments_result(outputs: tuple, dtype) -> tuple:
    """The outputs of every image -> (pooled, mean, variance, saved) of `relu_max_pool_moments`."""
    pooled, position, relu_max, index, sums = outputs
    count = relu_max.shape[0] * relu_max.shape[2] * relu_max.shape[3]
    mean, squares = (sums.sum(0) / count).unbind(-1)  # float64: no cancellation below
    variance = (squares - mean * mean).clamp(min=0)
    return pooled, mean.to(dtype), variance.to(dtype), (position, relu_max, index)


def relu_max_pool_moments(x: Tensor, increasing: Tensor, rows: int, cols: int):
    """r = relu(x.max(dim=2)) of x [B, C, S, H, W] (real, CPU, any strides, S < 256; H, W
    multiples of rows, cols) -> (pooled [B, C, rows, cols]: the max of r over every window where
    increasing[c] (bool [C]), else the min; mean, variance [C]: r's batch statistics over
    (B, H, W), the variance biased as batch norm's; saved: what `relu_max_pool_moments_grad`
    needs). No autograd: `pooled_relu_moments` and `cpu_fft.lifting_pooled_relu_moments` wrap it."""
    outputs = relu_max_pool_moments_outputs(x.shape, x.dtype, rows, cols)
    relu_max_pool_moments_into(x, increasing, outputs)
    return relu_max_pool_moments_result(outputs, x.dtype)


def relu_max_pool_moments_grad(
    saved, mean, grad_pooled, grad_mean, grad_variance, count, out, first: int = 0, window=None
):
    """The gradient of `relu_max_pool_moments` with respect to y, written into out [B, C, S',
    L_H, L_W] (L ≥ H, W; zero beyond) for the scales first … first + S' − 1: ∂mean/∂r = 1/N,
    ∂variance/∂r = 2 (r − mean)/N (N = `count`, B·H·W of the whole batch: saved and
    grad_pooled may be some images' slices), ∂pooled/∂r = 1 at each window's position, through
    ReLU and the arg-max scale. With `window` = (grad_back [C, S, H, W] (contiguous), beta [B],
    tops, lefts [B] int64), as `relu_max_pool_moments_into`'s: out [B, C, S, side, side] = ∂x,
    the gradient inside each image's window, and grad_back += Σ_b β_b · ∂y[b], P's."""
    position, relu_max, index = saved
    zeros = mean.new_zeros(mean.shape)
    grad_mean = zeros if grad_mean is None else grad_mean
    grad_variance = zeros if grad_variance is None else grad_variance
    if grad_pooled is None:
        grad_pooled = torch.zeros_like(position, dtype=out.dtype)
    offset = ((grad_mean - 2 * grad_variance * mean) / count).to(out.dtype).contiguous()
    slope = (2 * grad_variance / count).to(out.dtype).contiguous()
    coefficients = (offset, slope)
    placed = _unplaced(out) if window is None else window
    grads = (*coefficients, first, *placed, out)
    _run("relu_max_pool_moments_grad", _dense(grad_pooled), *saved, *grads)
    return out


class _ReluMaxPoolMoments(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, increasing: Tensor, rows: int, cols: int, width: int):
        pooled, mean, variance, saved = relu_max_pool_moments(
            x[..., :width], increasing, rows, cols
        )
        ctx.save_for_backward(mean, *saved)
        ctx.input_shape = x.shape
        ctx.count = x.shape[0] * x.shape[3] * width  # B·H·W
        return pooled, mean, variance

    @staticmethod
    def backward(ctx, grad_pooled, grad_mean, grad_variance):
        mean, *saved = ctx.saved_tensors
        out = mean.new_empty(ctx.input_shape)
        relu_max_pool_moments_grad(
            saved, mean, grad_pooled, grad_mean, grad_variance, ctx.count, out
        )
        return out, None, None, None, None


def pooled_relu_moments(x: Tensor, increasing: Tensor, rows: int, cols: int, width=None):
    """`relu_max_pool_moments` with its gradient: x [B, C, S, H, W] -> (pooled [B, C, rows,
    cols], mean [C], variance [C]) of r = relu(x.max(dim=2)) (the toy model's training head up to
    batch norm, scalelearn.nn.models.ToyModel). With `width`, x is [B, C, S, H, L ≥ width] and
    the head reads x[..., :width], and x's gradient is zero beyond: a zero-padded buffer (`rows`'
    inverse transform) passed whole has no crop, whose backward zero-fills and copies the
    gradient once more."""
    width = x.shape[-1] if width is None else width
    return _ReluMaxPoolMoments.apply(x, increasing, rows, cols, width)


def bias_relu_pool_outputs(shape, dtype) -> tuple[Tensor, Tensor]:
    """The (out, index) buffers of `bias_relu_pool_into` for an input [B, C, S, H, W]."""
    batch, channels, scales, height, width = shape
    out = torch.empty(batch, channels, scales, height // 2, width // 2, dtype=dtype)
    return out, torch.empty(out.shape, dtype=torch.float32)


def bias_relu_pool_into(x: Tensor, bias: Tensor, out: Tensor, index: Tensor, first: int = 0):
    """The forward of `bias_relu_pool` for x [B, C, S', H, W] (any strides), written into the
    scales first … first + S' − 1 of out and index [B, C, S, H/2, W/2] (C-contiguous)."""
    bias = bias.detach().to(x.dtype).contiguous()
    _run("bias_relu_pool", _padded_rows(x), x.shape[-1], bias, first, out, index)


def bias_relu_pool_grad_into(grad: Tensor, out: Tensor, index: Tensor, grad_x: Tensor, first=0):
    """The backward of `bias_relu_pool` for the scales first … first + S' − 1 of grad, out and
    index [B, C, S, H/2, W/2]: writes ∂x into grad_x [B, C, S', ≥H, ≥W] (C-contiguous; zeros
    beyond H × W) -> ∂bias [C] (float64)."""
    grad_bias = torch.empty(grad_x.shape[:3], dtype=torch.float64)
    _run("bias_relu_pool_grad", _dense(grad), out, index, first, grad_x, grad_bias)
    return grad_bias.sum((0, 2))


class _BiasReluPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, bias: Tensor) -> Tensor:
        out, index = bias_relu_pool_outputs(x.shape, x.dtype)
        bias_relu_pool_into(x, bias, out, index)
        ctx.save_for_backward(out, index)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        out, index = ctx.saved_tensors
        grad_x = grad.new_empty(ctx.input_shape)
        grad_bias = bias_relu_pool_grad_into(grad, out, index, grad_x)
        return grad_x, grad_bias.to(grad.dtype)


def bias_relu_pool(x: Tensor, bias: Tensor) -> Tensor:
    """x [B, C, S, H, W] (real, CPU, any strides), bias [C] -> [B, C, S, H/2, W/2] (odd sides
    floored), max_pool3d(relu(x + bias), (1, 2, 2)) with the same values and gradients (the
    first of equal maxima takes it) in one pass each way. Gradients reach x and the bias."""
    return _BiasReluPool.apply(x, bias)
