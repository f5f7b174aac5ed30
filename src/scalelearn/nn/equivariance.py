"""How scale-equivariant a layer or a network is: SESN's equivariance error (Sosnovik et al. 2020).

Enlarging the input by the ratio r = σ_{s+1} / σ_s of two neighbouring internal scales should move
the response at scale s to scale s + 1, rescaled by r:

    Φ(L_r x)[:, :, s + 1] ≈ L_r Φ(x)[:, :, s]

with L_r the rescaling about the image centre (bicubic, zero fill, same canvas). The error is
Δ = ‖Φ(L_r x) − L_r Φ(x)‖² / ‖L_r Φ(x)‖², summed over the batch, averaged over the pairs of
neighbouring scales. Which part of the output is compared depends on its shape:
- [B, C, S, H, W] (a scale axis): scale s + 1 of Φ(L_r x) against scale s of Φ(x), rescaled;
- [B, C, H, W] (after a max projection, or a plain CNN): Φ(L_r x) against L_r Φ(x);
- anything else (e.g. logits [B, classes]): Φ(L_r x) against Φ(x) (invariance).
An input with a scale axis [B, C, S, H, W] is acted on as a function on the scale group: every
scale map is rescaled by r and moves up one scale (scale 0 is filled with zeros).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scalelearn.data.rescale import resample_matrices
from scalelearn.nn.scales import InternalScales


def rescale_maps(maps: Tensor, ratio: float) -> Tensor:
    """Rescale every [H, W] map about its centre by `ratio` on the same canvas, zero fill.

    maps: [..., H, W] -> [..., H, W] (bicubic, the resampler of scalelearn.data.rescale).
    """
    height, width = maps.shape[-2:]
    factor = torch.tensor([float(ratio)], dtype=maps.dtype, device=maps.device)
    w_y = resample_matrices(factor, height, height)[0]  # [H, H]
    w_x = resample_matrices(factor, width, width)[0]  # [W, W]
    return w_y @ maps @ w_x.T


def neighbour_ratios(module: nn.Module) -> list[float]:
    """σ_{s+1} / σ_s for every pair of neighbouring internal scales of the module's InternalScales.

    Raises ValueError when the module holds no InternalScales, or several different ones.
    """
    found = {id(m): m for m in module.modules() if isinstance(m, InternalScales)}
    if len(found) != 1:
        what = "no InternalScales" if not found else f"{len(found)} different InternalScales"
        raise ValueError(f"{type(module).__name__} holds {what}; pass ratio= explicitly")
    with torch.no_grad():
        scales = next(iter(found.values()))().detach().double()
    if len(scales) < 2:
        raise ValueError("a single internal scale has no neighbour; pass ratio= explicitly")
    return [float(b / a) for a, b in zip(scales[:-1], scales[1:], strict=True)]


def _act(x: Tensor, ratio: float) -> Tensor:
    """L_r on the input: rescale the images; on a scale axis, also move every map up one scale."""
    if x.dim() == 4:
        return rescale_maps(x, ratio)
    if x.dim() == 5:
        shifted = torch.zeros_like(x)
        shifted[:, :, 1:] = rescale_maps(x[:, :, :-1], ratio)
        return shifted
    raise ValueError(f"input must be [B, C, H, W] or [B, C, S, H, W], got {tuple(x.shape)}")


def _compared(y: Tensor, y_moved: Tensor, ratio: float, scale: int) -> tuple[Tensor, Tensor]:
    """(Φ(L_r x) part, L_r Φ(x) part) that equivariance says are equal."""
    if y.dim() == 5:
        return y_moved[:, :, scale + 1], rescale_maps(y[:, :, scale], ratio)
    if y.dim() == 4:
        return y_moved, rescale_maps(y, ratio)
    return y_moved, y


def equivariance_error(module: nn.Module, x: Tensor, ratio: float | None = None) -> float:
    """SESN's equivariance error Δ of `module` on the inputs `x` (see the module docstring).

    module: a layer or a network; it runs in eval mode (restored afterwards), without gradients.
    x: [B, C, H, W] images, or [B, C, S, H, W] for a layer that takes a scale axis. Leave a zero
       margin around the content so that, enlarged by the ratio, it stays on the canvas.
    ratio: the rescaling factor (> 1). Default: the ratio of every pair of neighbouring internal
       scales of the module's InternalScales, one Δ per pair, averaged (a plain CNN has none:
       pass it).
    Returns Δ ≥ 0: a few percent for the layers of scalelearn.nn on smooth inputs (pixel
    sampling, resampling and finite supports keep it above 0), order 1 for an ordinary CNN.
    """
    if ratio is not None and ratio <= 1:
        raise ValueError(f"ratio must be > 1 (an enlargement), got {ratio}")
    ratios = neighbour_ratios(module) if ratio is None else None
    if ratios is not None and min(ratios) <= 1:
        raise ValueError(f"the internal scales are not increasing (ratios {ratios})")
    training = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            y = module(x)
            pairs = list(enumerate(ratios)) if ratios is not None else [(0, ratio)]
            if y.dim() == 5 and ratios is None:
                pairs = [(s, ratio) for s in range(y.shape[2] - 1)]
            errors = []
            for scale, r in pairs:
                moved, expected = _compared(y, module(_act(x, r)), r, scale)
                errors.append(float((moved - expected).pow(2).sum() / expected.pow(2).sum()))
    finally:
        for m, mode in training:
            m.train(mode)
    return sum(errors) / len(errors)
