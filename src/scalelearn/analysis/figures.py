"""Figures (matplotlib, Agg backend), each saved as PDF and PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scalelearn.atomic import atomic_path  # noqa: E402


def save_figure(figure: plt.Figure, stem: str | os.PathLike) -> list[Path]:
    """Save as `stem`.pdf and `stem`.png (atomically) and close the figure."""
    stem = Path(stem)
    paths = []
    for suffix in (".pdf", ".png"):
        path = stem.with_name(stem.name + suffix)
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=suffix[1:], dpi=200, bbox_inches="tight")
        paths.append(path)
    plt.close(figure)
    return paths


def isr_curve_figure(curve: pd.DataFrame) -> plt.Figure:
    """E1: test error (%) against ISR on a log2 axis, one line per width b with a ±1 std band
    over seeds, the best ISR of each width marked with a star. `curve` is an isr_curve_table."""
    figure, ax = plt.subplots(figsize=(5.0, 3.6))
    for (width, rows), color in zip(
        curve.groupby("width", sort=True),
        plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4,
        strict=False,
    ):
        rows = rows.sort_values("isr")
        mean = rows["test_error_mean"].to_numpy()
        std = np.nan_to_num(rows["test_error_std"].to_numpy())  # one seed: no band
        ax.plot(rows["isr"], mean, "o-", color=color, markersize=3, label=f"b = {width:.3g}")
        ax.fill_between(rows["isr"], mean - std, mean + std, color=color, alpha=0.2, lw=0)
        best = rows[rows["best"]]
        ax.plot(
            best["isr"],
            best["test_error_mean"],
            "*",
            color=color,
            markersize=13,
            markeredgecolor="black",
            markeredgewidth=0.6,
        )
    ax.set_xscale("log", base=2)
    isrs = np.sort(curve["isr"].unique())
    ticks = isrs if len(isrs) <= 8 else isrs[::2]
    ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("internal scale range (ISR, log2 axis)")
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    ax.legend(title="scale distribution (★ best ISR)", fontsize=8, title_fontsize=8)
    figure.tight_layout()
    return figure


def _colors() -> list[str]:
    return plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4


def per_scale_figure(table: pd.DataFrame) -> plt.Figure:
    """E1 in-depth test: one panel per width b; x = digit scale (log2 axis), y = test error %
    (log axis); one line per ISR (every other ISR of the sweep), mean over seeds with a band from
    the lowest to the highest seed; dashed lines at the distribution bounds 1 and b.
    `table` is a per_scale_table."""
    widths = sorted(table["width"].unique())
    isrs = sorted(table["isr"].unique())[::2]
    figure, axes = plt.subplots(
        1, len(widths), figsize=(4.2 * len(widths), 3.4), sharey=True, squeeze=False
    )
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, max(len(isrs), 1)))
    # Error 0 has no place on a log axis: draw it at a floor below the smallest positive error.
    positive = table["error_min"][table["error_min"] > 0]
    floor = positive.min() / 2 if len(positive) else 0.1
    for ax, width in zip(axes[0], widths, strict=True):
        for isr, color in zip(isrs, colors, strict=True):
            rows = table[(table["width"] == width) & (table["isr"] == isr)].sort_values("scale")
            mean = rows["error_mean"].clip(lower=floor)
            ax.plot(rows["scale"], mean, color=color, lw=1.2, label=f"ISR {isr:.2f}")
            ax.fill_between(
                rows["scale"],
                rows["error_min"].clip(lower=floor),
                rows["error_max"].clip(lower=floor),
                color=color,
                alpha=0.2,
                lw=0,
            )
        for bound in (1.0, width):
            ax.axvline(bound, color="black", ls="--", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"b = {width:.3g}")
        ax.set_xlabel("digit scale (log2 axis)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("test error (%)")
    axes[0][-1].legend(fontsize=7, title="fixed ISR", title_fontsize=7)
    figure.tight_layout()
    return figure


def scale_trajectories_figure(table: pd.DataFrame, cells: list[str]) -> plt.Figure:
    """Learnable scales over epochs: three panels (sigma_b, ISR, the internal scales), x = epoch;
    one line per cell (`cells`: the table's cell columns, the first being the width), colour per
    width, line style per value of the further cell columns. `table` is a trajectory_table."""
    figure, axes = plt.subplots(1, 3, figsize=(12.0, 3.6))
    scales = [c for c in table.columns if c.startswith("scale_") and c[6:].isdigit()]
    widths = sorted(table["width"].unique())
    color_of = dict(zip(widths, _colors(), strict=False))
    others = [c for c in cells if c != "width"]
    styles = ["-", "--", ":", "-."]
    style_of = {}
    for key, rows in table.groupby(cells, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        rest = key[1:]
        style = style_of.setdefault(rest, styles[len(style_of) % len(styles)])
        label = f"b = {key[0]:.3g}" + "".join(
            f", {name} {value:.3g}" if isinstance(value, float) else f", {value}"
            for name, value in zip(others, rest, strict=True)
        )
        kwargs = {"color": color_of[key[0]], "ls": style, "lw": 1.2, "marker": "o", "ms": 2.5}
        axes[0].plot(rows["epoch"], rows["sigma_basis"], label=label, **kwargs)
        axes[1].plot(rows["epoch"], rows["isr"], **kwargs)
        for column in scales:
            axes[2].plot(rows["epoch"], rows[column], **kwargs)
    for ax, title in zip(axes, ("sigma_b (px)", "ISR", "internal scales (px)"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log", base=2)
    axes[0].legend(fontsize=6, ncol=1 + len(axes[0].lines) // 12)
    figure.tight_layout()
    return figure
