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
