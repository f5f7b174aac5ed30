"""The tolerance model (SPEC §9): good fixed internal scales for a known scale distribution,
analytically, without training.

Work in x = log2(data scale). Internal scale i of N covers the data scales around it with a Gaussian
tolerance of std T octaves: μ_i = log2(ref · p^{i/(N−1)}), g_i(x) = exp(−(x − μ_i)² / (2T²)) (a
Gaussian scaled to peak 1), and the model's coverage is P(x) = Σ_i g_i(x), normalised on the grid.
The data distribution Q(x) is the log-uniform on [log2 a, log2 b] (a = 1: the scale-distribution
datasets are LogUniform[1, b]) with half-Gaussian tails of std 0.4 octave beyond each bound that
start at the uniform's height, normalised on the grid, zeros replaced by 1e−100. One fit over K
distributions finds ref_k and p_k per distribution and one shared T by minimising Σ_k KL(P_k ‖ Q_k)
with Nelder–Mead (bounds ref ≥ 0.5, p ≥ 1.5, T ≥ 0.1; start ref 1, p 2, T 0.1) on 10,000 points of
[log2 0.5, log2 17]. p_k is the predicted ISR; the predicted scales ref_k · p_k^{i/(N−1)} are in the
units of the data scales (multiply by a for a distribution that starts at a ≠ 1).

The command `scalelearn tolerance --widths-octaves 1.5 2.25 3` prints the fit (`--json` for
machines, `--table STEM` / `--figure STEM` to write the table and the figure).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from scalelearn.errors import ScalelearnError

LOWER_SCALE = 1.0  # a: the scale-distribution datasets are LogUniform[1, b]
TAIL_STD_OCTAVES = 0.4  # std of Q's half-Gaussian tails beyond each bound
GRID_POINTS = 10_000
GRID_LOW = math.log2(0.5)
GRID_HIGH = math.log2(17.0)
# The paper's grid reaches log2(17/8) ≈ 1.09 octaves beyond its widest distribution (b = 8). A
# wider distribution keeps that margin (the grid grows), so its tail is not cut off; the paper's
# widths (all ≤ 3 octaves) get the paper's grid exactly.
GRID_MARGIN_OCTAVES = GRID_HIGH - 3.0
ZERO_PROBABILITY = 1e-100  # replaces exact zeros of Q so that KL(P ‖ Q) stays finite
# Nelder–Mead: bounds and start point of SPEC §9.
REF_MIN, ISR_MIN, T_MIN = 0.5, 1.5, 0.1
REF_START, ISR_START, T_START = 1.0, 2.0, 0.1


@dataclass
class WidthFit:
    """The fit of one distribution LogUniform[1, b], b = 2**width_octaves."""

    width_octaves: float
    width: float  # b
    ref: float  # the smallest predicted internal scale
    isr: float  # p, the predicted internal scale range
    scales: list[float]  # ref · p^{i/(N−1)}, i = 0..N−1
    kl: float  # KL(P ‖ Q) of this distribution at the fit


@dataclass
class ToleranceFit:
    """The joint fit over several widths: one shared tolerance T (octaves); ref, ISR per width."""

    T: float
    widths: list[WidthFit]
    num_scales: int
    kl: float  # Σ_k KL(P_k ‖ Q_k), the minimised objective
    iterations: int


def scale_grid(widths_octaves) -> np.ndarray:
    """x = log2(scale): GRID_POINTS points on [log2 0.5, max(log2 17, widest + margin)] -> [G]."""
    high = max(GRID_HIGH, max(widths_octaves) + GRID_MARGIN_OCTAVES)
    return np.linspace(GRID_LOW, high, GRID_POINTS)


def data_distribution(x: np.ndarray, widths_octaves) -> np.ndarray:
    """Q_k(x) of LogUniform[1, 2**w_k] with half-Gaussian tails: x [G], K widths -> [K, G], each
    row summing to 1 on the grid, no zeros."""
    low = math.log2(LOWER_SCALE)
    high = np.asarray(widths_octaves, dtype=float)[:, None] + low
    # Height 1 inside [low, high]; outside, a Gaussian of the distance to the nearer bound that
    # equals 1 at the bound, so the tails start at the uniform's height.
    distance = np.maximum(low - x[None, :], 0.0) + np.maximum(x[None, :] - high, 0.0)
    q = np.exp(-0.5 * (distance / TAIL_STD_OCTAVES) ** 2)
    q = q / q.sum(axis=1, keepdims=True)
    return np.where(q == 0.0, ZERO_PROBABILITY, q)


def internal_scales(ref, isr, num_scales: int) -> np.ndarray:
    """ref · isr^{i/(N−1)}: ref, isr [K] -> [K, N]."""
    exponents = np.arange(num_scales) / (num_scales - 1)
    return (
        np.asarray(ref, dtype=float)[:, None] * np.asarray(isr, dtype=float)[:, None] ** exponents
    )


def coverage(x: np.ndarray, ref, isr, T: float, num_scales: int) -> np.ndarray:
    """P_k(x) = Σ_i exp(−(x − μ_ki)²/(2T²)), normalised on the grid: x [G], ref and isr [K] ->
    [K, G], each row summing to 1."""
    mu = np.log2(internal_scales(ref, isr, num_scales))  # [K, N]
    g = np.exp(-0.5 * ((x[None, None, :] - mu[:, :, None]) / T) ** 2).sum(axis=1)
    return g / g.sum(axis=1, keepdims=True)


def kl_divergences(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(P_k ‖ Q_k) = Σ_x P log(P/Q) per row: [K, G] -> [K] (0 · log 0 = 0)."""
    # scipy is imported where it is used: this module registers a verb, and every `scalelearn`
    # command builds the whole parser, so a top-level scipy import would slow all of them.
    from scipy.special import rel_entr

    return rel_entr(p, q).sum(axis=1)


def _check_inputs(widths_octaves, num_scales) -> list[float]:
    widths = [float(w) for w in widths_octaves]
    if not widths:
        raise ScalelearnError("widths_octaves is empty; give at least one width, e.g. 1.5 2.25 3")
    bad = [w for w in widths if not (math.isfinite(w) and w > 0)]
    if bad:
        raise ScalelearnError(
            f"widths_octaves must be positive finite numbers (b = 2**width > 1), got {bad}"
        )
    if int(num_scales) != num_scales or num_scales < 2:
        raise ScalelearnError(
            f"num_scales must be an integer >= 2 (an ISR needs two scales), got {num_scales}"
        )
    return widths


def fit_tolerance(widths_octaves, num_scales: int = 3) -> ToleranceFit:
    """Fit ref_k and ISR p_k per width and one shared T by minimising Σ_k KL(P_k ‖ Q_k).

    widths_octaves: log2 of the upper bounds b_k of the distributions LogUniform[1, b_k].
    Raises ScalelearnError on bad input or when the optimiser does not converge.
    """
    from scipy.optimize import minimize

    widths = _check_inputs(widths_octaves, num_scales)
    num_scales = int(num_scales)
    count = len(widths)
    x = scale_grid(widths)
    q = data_distribution(x, widths)

    # Parameters [ref_1, p_1, ..., ref_K, p_K, T], the order of the authors' fit; Nelder–Mead's
    # initial simplex (and so the point where it stops) depends on that order only through ties.
    def unpack(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        return theta[0:-1:2], theta[1:-1:2], theta[-1]

    def objective(theta: np.ndarray) -> float:
        ref, isr, T = unpack(theta)
        return float(kl_divergences(coverage(x, ref, isr, T, num_scales), q).sum())

    start = np.array([REF_START, ISR_START] * count + [T_START])
    bounds = [(REF_MIN, None), (ISR_MIN, None)] * count + [(T_MIN, None)]
    # scipy's default stopping rule (xatol = fatol = 1e-4) reproduces the paper's numbers (about
    # 600 iterations for its three widths); xatol 1e-8, fatol 1e-10 moved no parameter by 1e-4.
    # The iteration limit is 1000 per parameter instead of scipy's 200: seven widths (15
    # parameters) needed about 5,300 iterations, more than the default 3,000.
    result = minimize(
        objective,
        start,
        method="Nelder-Mead",
        bounds=bounds,
        options={"maxiter": 1000 * len(start), "maxfev": 1000 * len(start)},
    )
    if not result.success:
        raise ScalelearnError(
            f"the tolerance fit did not converge for widths {widths}: {result.message}"
        )
    ref, isr, T = unpack(result.x)
    scales = internal_scales(ref, isr, num_scales)
    kls = kl_divergences(coverage(x, ref, isr, T, num_scales), q)
    fits = [
        WidthFit(
            width_octaves=w,
            width=2.0**w * LOWER_SCALE,
            ref=float(ref[k]),
            isr=float(isr[k]),
            scales=[float(s) for s in scales[k]],
            kl=float(kls[k]),
        )
        for k, w in enumerate(widths)
    ]
    return ToleranceFit(
        T=float(T),
        widths=fits,
        num_scales=num_scales,
        kl=float(result.fun),
        iterations=int(result.nit),
    )


# --- table and figure -----------------------------------------------------------------------


def tolerance_table(fit: ToleranceFit) -> pd.DataFrame:
    """One row per width: width_octaves, width (b), ref, isr (predicted), T (shared), kl, and the
    predicted internal scales scale_0 .. scale_{N−1}."""
    rows = []
    for w in fit.widths:
        row = {
            "width_octaves": w.width_octaves,
            "width": w.width,
            "ref": w.ref,
            "isr": w.isr,
            "T": fit.T,
            "kl": w.kl,
        }
        row.update({f"scale_{i}": s for i, s in enumerate(w.scales)})
        rows.append(row)
    return pd.DataFrame(rows)


def tolerance_latex(table: pd.DataFrame) -> str:
    """Rows per width b: ref, predicted ISR, T, predicted internal scales."""
    scale_columns = sorted(
        (c for c in table.columns if c.startswith("scale_")), key=lambda c: int(c.split("_")[1])
    )
    frame = pd.DataFrame(
        {
            "$b$": [f"{b:.3g}" for b in table["width"]],
            "ref": [f"{v:.2f}" for v in table["ref"]],
            "predicted ISR": [f"{v:.2f}" for v in table["isr"]],
            "$T$ (octaves)": [f"{v:.3f}" for v in table["T"]],
            "predicted scales": [
                "[" + ", ".join(f"{v:.2f}" for v in row) + "]"
                for row in table[scale_columns].to_numpy()
            ],
        }
    )
    return frame.to_latex(
        index=False,
        escape=False,
        column_format="rrrrl",
        caption="Tolerance model (no training): internal scales fitted to each scale distribution "
        "LogUniform$[1, b]$ by minimising $\\sum_k \\mathrm{KL}(P_k \\| Q_k)$ with one tolerance "
        "$T$ shared by all widths; ref is the smallest internal scale, the predicted ISR the ratio "
        "of the largest to the smallest.",
        label="tab:tolerance",
    )


def tolerance_figure(fit: ToleranceFit):
    """One panel per width: the coverage P(x) (density per octave), the data distribution Q(x)
    (grey), the predicted internal scales (dashed) and the distribution bounds a, b (solid), on a
    log2 axis of the data scale."""
    from scalelearn.analysis.figures import plt  # matplotlib (Agg) only where a figure is drawn

    widths = [w.width_octaves for w in fit.widths]
    x = scale_grid(widths)
    step = x[1] - x[0]
    q = data_distribution(x, widths) / step
    p = coverage(
        x,
        [w.ref for w in fit.widths],
        [w.isr for w in fit.widths],
        fit.T,
        fit.num_scales,
    )
    p = p / step
    scale = 2.0**x
    figure, axes = plt.subplots(
        1, len(fit.widths), figsize=(3.4 * len(fit.widths), 2.8), sharey=True, squeeze=False
    )
    for k, (ax, w) in enumerate(zip(axes[0], fit.widths, strict=True)):
        ax.fill_between(scale, q[k], color="0.8", lw=0, label="data Q(x)")
        ax.plot(scale, p[k], color="C0", label="coverage P(x)")
        for s in w.scales:
            ax.axvline(s, color="C0", ls="--", lw=1)
        for bound in (LOWER_SCALE, w.width):
            ax.axvline(bound, color="black", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlim(scale[0], scale[-1])
        ax.set_title(f"b = {w.width:.3g}: predicted ISR {w.isr:.2f}", fontsize=9)
        ax.set_xlabel("data scale (log2 axis)")
    axes[0, 0].set_ylabel("density per octave")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    figure.suptitle(
        f"Tolerance model: T = {fit.T:.3f} octaves; internal scales dashed, bounds solid",
        fontsize=9,
    )
    figure.tight_layout()
    return figure


# --- command line ---------------------------------------------------------------------------


def fit_as_dict(fit: ToleranceFit) -> dict:
    """The `--json` output: {"T": T, "widths": [{width_octaves, ref, isr, scales}, ...]}."""
    return {
        "T": fit.T,
        "widths": [
            {"width_octaves": w.width_octaves, "ref": w.ref, "isr": w.isr, "scales": w.scales}
            for w in fit.widths
        ],
    }


def format_fit(fit: ToleranceFit) -> str:
    lines = [
        f"tolerance model: {fit.num_scales} internal scales, fitted jointly over "
        f"{len(fit.widths)} scale distribution(s) LogUniform[1, b]",
        f"shared tolerance T = {fit.T:.3f} octaves",
    ]
    for w in fit.widths:
        scales = ", ".join(f"{s:.2f}" for s in w.scales)
        lines.append(
            f"b = {w.width:.3g} ({w.width_octaves:g} octaves): ref {w.ref:.2f}, "
            f"predicted ISR {w.isr:.2f}, internal scales [{scales}]"
        )
    return "\n".join(lines)


def _command(args: argparse.Namespace) -> None:
    fit = fit_tolerance(args.widths_octaves, args.num_scales)
    print(json.dumps(fit_as_dict(fit), indent=2) if args.json else format_fit(fit))
    if args.table:
        from scalelearn.analysis.tables import write_table

        table = tolerance_table(fit)
        _report_paths(write_table(table, tolerance_latex(table), args.table), args.json)
    if args.figure:
        from scalelearn.analysis.figures import save_figure

        _report_paths(save_figure(tolerance_figure(fit), args.figure), args.json)


def _report_paths(paths: list[os.PathLike], quiet: bool) -> None:
    # With --json stdout is the JSON document only; the written paths are not part of it.
    if not quiet:
        for path in paths:
            print(path)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tolerance",
        help="predict good fixed internal scales for known scale distributions (no training)",
        description="The tolerance model (SPEC §9): fits, jointly over the given distributions "
        "LogUniform[1, 2**WIDTH], one tolerance T and per distribution the smallest internal "
        "scale (ref) and the internal scale range (ISR). Scales are in the units of the data "
        "scales (multiply by a for a distribution that starts at a, not 1).",
    )
    parser.add_argument(
        "--widths-octaves",
        type=float,
        nargs="+",
        required=True,
        metavar="WIDTH",
        help="log2 of each distribution's upper bound b (the paper: 1.5 2.25 3)",
    )
    parser.add_argument("--num-scales", type=int, default=3, help="N internal scales (default 3)")
    parser.add_argument("--json", action="store_true", help="print the fit as JSON")
    parser.add_argument("--table", metavar="STEM", help="also write STEM.csv and STEM.tex")
    parser.add_argument("--figure", metavar="STEM", help="also write STEM.pdf and STEM.png")
    parser.set_defaults(func=_command)
