"""The method figure (SPEC §10.1): the Hermite basis at the N internal scales and one multi-scale
kernel built from it, rendered by the package's own basis code.

Rows are basis functions (a few low orders by default) and, last, the kernel κ_s = Σ_f w_f ·
basis[f, s]; columns are the internal scales. Every scale shares one K×K grid (K from the largest
scale), and smaller scales are zero outside their own support, exactly as the network sees them.
`method_figure_from_run` draws it at a trained run's internal scales with one of its learned
first-layer filters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scalelearn.analysis.figures import plt
from scalelearn.errors import ScalelearnError
from scalelearn.nn.conv import ScaleConvZ2H, multiscale_kernel
from scalelearn.nn.hermite import HermiteBasis, ScaleBasis, function_orders
from scalelearn.nn.models import build_model
from scalelearn.settings import MODEL_DEFAULTS

DEFAULT_MAX_TOTAL_ORDER = 2  # rows by default: the functions with i + j ≤ 2 (6 of them)
WEIGHT_SEED = 0  # the random kernel's weights when none are given (deterministic figure)


def _resolved(model_cfg: dict) -> dict:
    """The model defaults of `model_cfg["name"]` (if any) updated with `model_cfg`."""
    cfg = {**MODEL_DEFAULTS.get(model_cfg.get("name"), {}), **model_cfg}
    missing = [
        key
        for key in ("basis", "effective_size", "kernel_size_k", "basis_mult", "basis_max_order")
        if key not in cfg
    ]
    if missing:
        raise ScalelearnError(
            f"the method figure needs the model keys {missing} (a scale-equivariant model "
            f"config, e.g. name: toy); got {sorted(cfg)}"
        )
    return cfg


def basis_at_scales(internal_scales, model_cfg: dict) -> ScaleBasis:
    """The model's basis (float64) evaluated at the given scales; `.dense()` is [F, S, K, K]."""
    cfg = _resolved(model_cfg)
    scales = torch.as_tensor(internal_scales, dtype=torch.float64).flatten()
    if scales.numel() < 1 or not bool((scales > 0).all()):
        raise ScalelearnError(f"internal scales must be positive, got {scales.tolist()}")
    basis = HermiteBasis(
        cfg["basis"],
        cfg["effective_size"],
        cfg["kernel_size_k"],
        cfg["basis_mult"],
        cfg["basis_max_order"],
    )
    return basis(scales)


def kernel_at_scales(weight: Tensor, basis: ScaleBasis) -> Tensor:
    """κ_s = Σ_f w_f · basis[f, s]: weight [F] -> [S, K, K], with the network's own kernel code."""
    dtype = basis.profiles.dtype
    return multiscale_kernel(weight.to(dtype)[None, None, :], basis)[:, 0, 0]


def _label(order: tuple[int, int, int], mult: float) -> str:
    i, j, m = order
    sub = "" if m == 0 else f", σ/{mult:g}^{m}"
    return f"ψ{j}(u)·ψ{i}(v){sub}"


def method_figure(
    internal_scales, model_cfg: dict, weight=None, functions: list[int] | None = None
):
    """Rows: the basis functions `functions` (default: total order i + j ≤ 2) and, last, the
    kernel Σ_f w_f · basis[f, s]; columns: the internal scales. Blue negative, red positive,
    white zero, each panel scaled to its own largest magnitude.

    internal_scales: N positive scales. model_cfg: a model config (its name's defaults fill the
    rest). weight: [F] basis coefficients of the kernel; None draws them from N(0, 1) with a fixed
    seed. Returns a matplotlib Figure with (len(functions) + 1) × N panels.
    """
    cfg = _resolved(model_cfg)
    basis = basis_at_scales(internal_scales, cfg)
    dense = basis.dense()  # [F, S, K, K]
    orders = function_orders(cfg["basis"], cfg["effective_size"], cfg["basis_max_order"])
    count, num_scales = dense.shape[:2]
    if weight is None:
        generator = torch.Generator().manual_seed(WEIGHT_SEED)
        weight = torch.randn(count, generator=generator, dtype=torch.float64)
    weight = torch.as_tensor(weight, dtype=torch.float64).detach().flatten()
    if weight.numel() != count:
        raise ScalelearnError(
            f"the kernel weight has {weight.numel()} values; this basis has F = {count} functions"
        )
    if functions is None:
        functions = [f for f, (i, j, m) in enumerate(orders) if m == 0 and i + j <= 2]
    kernel = kernel_at_scales(weight, basis)  # [S, K, K]
    rows = [(dense[f].numpy(), _label(orders[f], cfg["basis_mult"])) for f in functions]
    rows.append((kernel.numpy(), "kernel Σ_f w_f·ψ_f"))
    scales = torch.as_tensor(internal_scales, dtype=torch.float64).flatten().tolist()
    size = dense.shape[-1]

    figure, axes = plt.subplots(
        len(rows),
        num_scales,
        figsize=(1.5 * num_scales + 1.2, 1.5 * len(rows)),
        squeeze=False,
    )
    for r, (images, label) in enumerate(rows):
        for s in range(num_scales):
            # Each panel gets its own symmetric colour range: the basis is normalised at the
            # smallest scale, so a shared range would leave the larger scales nearly blank.
            limit = float(np.abs(images[s]).max()) or 1.0
            ax = axes[r, s]
            ax.imshow(images[s], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"σ{s} = {scales[s]:.2f}", fontsize=9)
            if s == 0:
                ax.set_ylabel(label, fontsize=8)
        if r == len(rows) - 1:
            for ax in axes[r]:
                for spine in ax.spines.values():
                    spine.set_linewidth(2)
    figure.suptitle(
        f"{cfg['basis']} basis at the internal scales (K = {size}) and one multi-scale kernel "
        "(each panel scaled to its own range)",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


def read_run_model(folder: str | os.PathLike):
    """A run folder's model config and its model with the best checkpoint's weights loaded."""
    folder = Path(folder)
    config_path, checkpoint_path = folder / "config.json", folder / "best.ckpt"
    for path in (config_path, checkpoint_path):
        if not path.exists():
            raise ScalelearnError(f"{path} is missing; train the run first (snakemake makes it)")
    model_cfg = json.loads(config_path.read_text())["model"]
    model = build_model(model_cfg)
    if getattr(model, "internal_scales", None) is None:
        raise ScalelearnError(
            f"{folder} is a {model_cfg.get('name')!r} run; the method figure needs a "
            "scale-equivariant model (toy or sesn)"
        )
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    # The checkpoint holds the LightningModule's state: the network's entries start with "model.".
    state = {
        key.removeprefix("model."): value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith("model.")
    }
    model.load_state_dict(state)
    return model_cfg, model


def method_figure_from_run(folder: str | os.PathLike, channel: int = 0):
    """The method figure at a trained run's internal scales (best checkpoint), with the learned
    basis coefficients of its first layer's filter `channel` (input channel 0) as the kernel."""
    model_cfg, model = read_run_model(folder)
    with torch.no_grad():
        scales = model.internal_scales().double()
    first = next(m for m in model.modules() if isinstance(m, ScaleConvZ2H))
    if not 0 <= channel < first.weight.shape[0]:
        raise ScalelearnError(
            f"channel {channel} does not exist; the first layer has {first.weight.shape[0]} filters"
        )
    weight = first.weight.detach()[channel, 0]
    return method_figure(scales.tolist(), model_cfg, weight)
