"""The `rows` method's channel mix on the CPU, in the layout of the FFT along W (numba kernels).

Per scale s and frequency k of the W axis, `rows` mixes the channels with a small matrix:

    y[s, o, b, h, k] = Σ_j t[s, o, j, k] · z[s, b, j, h, k]      (j = input channel · profile)

PyTorch's batched matmul needs the frequency axis first and the FFT needs it last, so on top of
the matmul a training step made four transposing copies of the [S, Cout, B, H, k] spectrum (the
largest tensor of the toy model: 50 MB at batch 32 on the 84 canvas), two forward, two backward,
each slower than the matmul itself. These kernels read and write the FFT's layout directly: the
copies are gone, and the products run at about the matmul's speed (the sums over j are short).

Each output element is summed by one thread in a fixed order, so the numbers are the same for
every thread count (numba's threads follow torch.get_num_threads()). Kernels compile on first
use and are cached on disk next to this file (numba's `cache=True`; NUMBA_CACHE_DIR moves it).
CUDA tensors never come here (`fast_conv` keeps the matmul there).
"""

from __future__ import annotations

import functools
import os

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
def _kernels():
    """The three numba kernels, compiled (or loaded from the cache) on first use."""
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
    def grad_t(g, z, out):
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
    def grad_z(t, g, out):
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

    return {"mix": mix, "grad_t": grad_t, "grad_z": grad_z}


def _run(kernel: str, *tensors: Tensor, out: Tensor) -> Tensor:
    """One kernel on contiguous CPU tensors (numpy views, no copies), with torch's thread count."""
    numba = _numba()
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
    arrays = [t.detach().resolve_conj().contiguous().numpy() for t in tensors]
    _kernels()[kernel](*arrays, out.numpy())
    return out


class _ChannelMix(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor, z: Tensor) -> Tensor:
        ctx.save_for_backward(t, z)
        scales, outs, _, bins = t.shape
        batch, height = z.shape[1], z.shape[3]
        return _run("mix", t, z, out=t.new_empty(scales, outs, batch, height, bins))

    @staticmethod
    def backward(ctx, grad: Tensor):
        t, z = ctx.saved_tensors
        grad_t = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_t = _run("grad_t", grad, z, out=torch.empty_like(t))
        if ctx.needs_input_grad[1]:
            grad_z = _run("grad_z", t, grad, out=torch.empty_like(z))
        return grad_t, grad_z


def channel_mix(t: Tensor, z: Tensor) -> Tensor:
    """t [S, Cout, J, k] (complex), z [S, B, J, H, k] (complex, the FFT along W of the row pass)
    -> y [S, Cout, B, H, k], y[s, o, b, h] = Σ_j t[s, o, j] · z[s, b, j, h] per frequency.
    CPU tensors; gradients reach t and z."""
    return _ChannelMix.apply(t, z)
