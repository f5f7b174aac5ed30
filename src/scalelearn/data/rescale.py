"""Rescaling an image about its centre: the one resampler used by both dataset protocols, the
in-depth per-scale test and the train-time "+" augmentation.

A pure scaling about the centre is separable, so the resampling is two small matrix products per
image, ``out = W_y @ image @ W_x^T``, where ``W`` holds the 1-D interpolation weights
(``[out, in]``). That is exact, batched, deterministic on the CPU, and never touches the zero part
of a large canvas: a 28x28 frame rendered onto a 168x168 canvas costs a [168, 28] weight matrix,
not a 16-tap gather over 168x168 pixels.

Interpolation (the choice, and why)
-----------------------------------
MNIST-Scale is defined by SESN's generator (``prepare_datasets.py``): torchvision ``RandomAffine``
with ``resample=PIL.Image.BICUBIC`` on PIL images, i.e. Pillow's ``Image.transform(AFFINE)``.
That routine point-samples a cubic convolution kernel with ``a = -1`` at the mapped pixel centre
and does *not* antialias (unlike Pillow's ``resize``). The default here is that same resampler
(``CUBIC_A = -1``, ``antialias=False``): ``tests/test_data.py`` checks it against torchvision +
Pillow to within one grey level, so our MNIST-Scale is the benchmark the published numbers were
measured on, only with seeded draws. For the scale-distribution datasets every factor is >= 1
(upsampling), where antialiasing does not apply. ``antialias=True`` is available: for factors < 1
it widens the kernel by ``1/s`` and renormalises (what Pillow's ``resize`` and
``torch.nn.functional.interpolate(antialias=True)`` do), i.e. a low-pass filter before
decimation; it is recorded in the dataset manifest when used.

Geometry: pixel ``j`` of the output samples the input at ``c_in + (j - c_out) / s`` where ``c`` is
the centre ``(n - 1) / 2`` in pixel-index coordinates (pixel centres at integers), so the frame
sits at the centre of the output canvas and ``s > 1`` enlarges it. Samples outside the input read
zero (zero fill). Intensities must be un-normalised (background 0) when this is applied.
"""

from __future__ import annotations

import math

import torch

# Cubic convolution parameter of Pillow's affine BICUBIC (the MNIST-Scale reference generator).
CUBIC_A = -1.0


def cubic_kernel(x: torch.Tensor, a: float = CUBIC_A) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter ``a``; support ``|x| < 2``."""
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def resample_matrices(
    factors: torch.Tensor, n_in: int, n_out: int, *, antialias: bool = False, a: float = CUBIC_A
) -> torch.Tensor:
    """1-D weights that rescale a signal of length ``n_in`` about its centre onto ``n_out`` samples.

    factors: [B] scale factors (> 0), dtype/device of the result.
    Returns W: [B, n_out, n_in] with ``out = W @ signal``.
    """
    dtype, device = factors.dtype, factors.device
    s = factors.reshape(-1, 1, 1)
    out_pos = torch.arange(n_out, dtype=dtype, device=device).reshape(1, -1, 1)
    src = (n_in - 1) / 2 + (out_pos - (n_out - 1) / 2) / s  # [B, n_out, 1] input coordinate
    if not antialias or bool((factors >= 1).all()):
        taps = torch.arange(n_in, dtype=dtype, device=device).reshape(1, 1, -1)
        return cubic_kernel(src - taps, a)
    # Antialiased: the kernel is stretched by 1/s where s < 1. Its weights are normalised over the
    # whole (zero-padded) lattice, then the taps outside the input are dropped, because those
    # pixels are zeros, not missing values.
    stretch = torch.where(s < 1, s, torch.ones_like(s))
    pad = math.ceil(2 / float(factors.min())) + 1
    taps = torch.arange(-pad, n_in + pad, dtype=dtype, device=device).reshape(1, 1, -1)
    weights = cubic_kernel((src - taps) * stretch, a)
    weights = weights / weights.sum(dim=2, keepdim=True)
    return weights[:, :, pad : pad + n_in]


def rescale_about_centre(
    images: torch.Tensor, factors: torch.Tensor, out_size: int, *, antialias: bool = False
) -> torch.Tensor:
    """Rescale each image by its factor about the centre onto an ``out_size`` canvas, zero fill.

    images: [B, 1, H, W] float (un-normalised, background 0); factors: [B] (> 0).
    Returns [B, 1, out_size, out_size] in the dtype/device of ``images`` (values may overshoot
    the input range slightly: cubic interpolation rings; ``to_uint8`` clamps).
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be [B, 1, H, W], got {tuple(images.shape)}")
    factors = torch.as_tensor(factors).to(dtype=images.dtype, device=images.device).reshape(-1)
    if factors.shape[0] != images.shape[0]:
        raise ValueError(f"{factors.shape[0]} factors for {images.shape[0]} images")
    if not bool((factors > 0).all()):
        raise ValueError("scale factors must be positive")
    height, width = images.shape[-2:]
    w_y = resample_matrices(factors, height, out_size, antialias=antialias)  # [B, out, H]
    w_x = resample_matrices(factors, width, out_size, antialias=antialias)  # [B, out, W]
    out = w_y @ images[:, 0] @ w_x.transpose(1, 2)
    return out.unsqueeze(1)


def to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 intensities -> float in [0, 1] (same shape)."""
    return images.to(dtype) / 255.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> uint8, rounded to the nearest grey level and clamped to 0..255."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def rescale_uint8(
    images: torch.Tensor,
    factors: torch.Tensor,
    out_size: int,
    *,
    antialias: bool = False,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Render uint8 images rescaled about the centre, as uint8 (how datasets are stored).

    images: uint8 [B, H, W] or [B, 1, H, W]; factors: [B]. Computed in ``dtype`` (float64 by
    default, so the rounding to grey levels does not depend on float32 summation order) on
    ``device`` (default: the images' device). Returns uint8 with the input's layout and
    ``out_size`` x ``out_size`` pixels.
    """
    squeeze = images.ndim == 3
    x = images.unsqueeze(1) if squeeze else images
    if device is not None:
        x = x.to(device)
    factors = torch.as_tensor(factors, dtype=dtype, device=x.device)
    # Resampling is linear, so it runs on grey levels (0..255) directly; the rounding and clamping
    # are in place: at 168x168 these full-size passes cost more than the matrix products.
    out = rescale_about_centre(x.to(dtype), factors, out_size, antialias=antialias)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    return out[:, 0] if squeeze else out


def random_rescale(
    images: torch.Tensor,
    scale_range: tuple[float, float],
    generator: torch.Generator,
    *,
    antialias: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The train-time "+" augmentation: a fresh factor ~ Uniform[scale_range] per image.

    images: uint8 [B, 1, H, W] (on any device); generator: a torch.Generator on that device.
    Returns (uint8 [B, 1, H, W] on the same canvas, factors [B]). The result is rounded to grey
    levels like a stored image, so augmented and stored images look alike to the network.
    """
    low, high = scale_range
    u = torch.rand(images.shape[0], generator=generator, device=images.device, dtype=dtype)
    factors = low + (high - low) * u
    out = rescale_uint8(images, factors, images.shape[-1], antialias=antialias, dtype=dtype)
    return out, factors
