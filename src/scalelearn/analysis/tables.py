"""Result tables from the aggregated runs (pandas): a tidy CSV for machines and a LaTeX table
for the paper layout.

- `isr_curve_table` (E1): test error mean ± std over seeds per (width, ISR), best ISR per width.
- `learned_scales_table` (E2): per width the test error and the learned sigma_b, ISR and scales,
  next to the best fixed ISR of a reference experiment (E1).

Failed runs (status other than "ok", e.g. diverged) are counted, never averaged: every table has
`n_runs` (ok runs, whose numbers make the means) and `n_failed` per cell (`cell_stats`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from scalelearn.analysis.aggregate import write_csv
from scalelearn.atomic import write_text
from scalelearn.errors import ScalelearnError


def _require(runs: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise ScalelearnError(
            f"{what} needs the column(s) {missing} in the aggregated runs; found "
            f"{list(runs.columns)}. Did the grid include them?"
        )


def run_ok(runs: pd.DataFrame) -> pd.Series:
    """True for the runs that finished ok (an aggregate without `status`: all)."""
    if "status" not in runs:
        return pd.Series(True, index=runs.index)
    return runs["status"].fillna("missing") == "ok"


def cell_stats(
    runs: pd.DataFrame, by: list[str], columns: list[str], std: bool = True
) -> pd.DataFrame:
    """One row per cell (the values of `by`): `n_runs` (ok runs), `n_failed` (the others) and,
    over the ok runs only, `<column>_mean` and `<column>_std` (sample std, ddof 1; NaN for one
    run) of each column. Cells whose runs all failed are kept, with NaN numbers."""
    runs = runs.assign(_ok=run_ok(runs))
    for column in columns:
        if column not in runs:  # every run of the aggregate failed: no numbers at all
            runs[column] = np.nan
    counts = runs.groupby(by, sort=True)["_ok"].agg(n_runs="sum", n_failed=lambda ok: (~ok).sum())
    stats = (
        runs[runs["_ok"]].groupby(by, sort=True)[columns].agg(["mean", "std"] if std else ["mean"])
    )
    stats.columns = [f"{column}_{stat}" for column, stat in stats.columns]
    table = counts.join(stats, how="left").reset_index()
    return table.astype({"n_runs": int, "n_failed": int})


def isr_curve_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Columns: width, isr, n_runs, n_failed, test_error_mean, test_error_std, best (the ISR with
    the lowest mean error of its width, among cells with ok runs). One row per (width, ISR)."""
    _require(runs, ["grid_width", "grid_isr"], "the ISR curve")
    table = cell_stats(runs, ["grid_width", "grid_isr"], ["test_error"])
    table = table.rename(columns={"grid_width": "width", "grid_isr": "isr"})
    measured = table.dropna(subset=["test_error_mean"])
    best = measured.groupby("width")["test_error_mean"].idxmin()
    table["best"] = False
    table.loc[best.to_numpy(), "best"] = True
    return table[
        ["width", "isr", "n_runs", "n_failed", "test_error_mean", "test_error_std", "best"]
    ]


def best_isr_per_width(curve: pd.DataFrame) -> pd.DataFrame:
    """The best rows of an `isr_curve_table`: width, isr, test_error_mean, test_error_std."""
    best = curve[curve["best"]].reset_index(drop=True)
    return best[["width", "isr", "test_error_mean", "test_error_std"]]


def learned_scales_table(runs: pd.DataFrame, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per width: n_runs, test error, learned sigma_b and ISR (mean and std over seeds) and the
    mean learned internal scales; with `reference` (runs of a fixed-ISR sweep) also the best
    fixed ISR and its error."""
    _require(runs, ["grid_width"], "the learned-scales table")
    table = cell_stats(runs, ["grid_width"], ["test_error", "sigma_basis", "isr"])
    scale_columns = sorted(
        (c for c in runs.columns if c.startswith("scale_")), key=lambda c: int(c.split("_")[1])
    )
    if scale_columns:
        scales = cell_stats(runs, ["grid_width"], scale_columns, std=False)
        means = scales[[f"{c}_mean" for c in scale_columns]]
        table[scale_columns] = means.to_numpy()
    table = table.rename(columns={"grid_width": "width"})
    if reference is not None:
        best = best_isr_per_width(isr_curve_table(reference)).rename(
            columns={
                "isr": "best_fixed_isr",
                "test_error_mean": "best_fixed_error_mean",
                "test_error_std": "best_fixed_error_std",
            }
        )
        # The widths are 2^octaves computed the same way in both experiments; round anyway so
        # a CSV round trip cannot split them.
        table["_key"] = table["width"].round(6)
        best["_key"] = best.pop("width").round(6)
        table = table.merge(best, on="_key", how="left").drop(columns="_key")
    return table


# --- LaTeX ----------------------------------------------------------------------------------


def _pm(mean: float, std: float, bold: bool = False) -> str:
    if np.isnan(mean):
        return "--"
    text = f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} \\pm {std:.2f}"
    return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"


def _failed_note(cell: str, n_runs: int, n_failed: int) -> str:
    """A cell with failed runs says how many: '$2.31$ (1 of 3 failed)'."""
    if not n_failed:
        return cell
    return f"{cell} ({n_failed} of {n_runs + n_failed} failed)"


def isr_curve_latex(curve: pd.DataFrame) -> str:
    """Rows ISR, columns width b; cells test error % mean ± std; best per width in bold."""
    cells = curve.assign(
        cell=[
            _failed_note(_pm(m, s, b), n, f)
            for m, s, b, n, f in zip(
                curve["test_error_mean"],
                curve["test_error_std"],
                curve["best"],
                curve["n_runs"],
                curve["n_failed"],
                strict=True,
            )
        ]
    )
    wide = cells.pivot(index="isr", columns="width", values="cell").fillna("--")
    wide.columns = [f"$b = {width:.3g}$" for width in wide.columns]
    wide.insert(0, "ISR", [f"{isr:.2f}" for isr in wide.index])
    return wide.to_latex(
        index=False,
        escape=False,
        column_format="r" + "c" * (len(wide.columns) - 1),
        caption="Test error (\\%, mean $\\pm$ std over seeds) of fixed internal scales per "
        "internal scale range (ISR) and scale-distribution width $b$; best ISR per width in bold.",
        label="tab:e1-isr",
    )


def learned_scales_latex(table: pd.DataFrame) -> str:
    rows = {
        "$b$": [f"{w:.3g}" for w in table["width"]],
        "error (\\%)": [
            _failed_note(_pm(m, s), n, f)
            for m, s, n, f in zip(
                table["test_error_mean"],
                table["test_error_std"],
                table["n_runs"],
                table["n_failed"],
                strict=True,
            )
        ],
        "learned $\\sigma_b$": [
            _pm(m, s)
            for m, s in zip(table["sigma_basis_mean"], table["sigma_basis_std"], strict=True)
        ],
        "learned ISR": [
            _pm(m, s) for m, s in zip(table["isr_mean"], table["isr_std"], strict=True)
        ],
    }
    if "best_fixed_isr" in table:
        rows["best fixed ISR"] = [f"{v:.2f}" for v in table["best_fixed_isr"]]
        rows["its error (\\%)"] = [
            _pm(m, s)
            for m, s in zip(
                table["best_fixed_error_mean"], table["best_fixed_error_std"], strict=True
            )
        ]
    return pd.DataFrame(rows).to_latex(
        index=False,
        escape=False,
        caption="Learned internal scales: test error and learned $\\sigma_b$ and ISR at the best "
        "checkpoint (mean $\\pm$ std over seeds) per scale-distribution width $b$.",
        label="tab:learned-scales",
    )


def write_table(frame: pd.DataFrame, latex: str, stem: str | os.PathLike) -> list[Path]:
    """Write `stem`.csv (the tidy numbers) and `stem`.tex, atomically; return both paths."""
    stem = Path(stem)
    csv_path, tex_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".tex")
    write_csv(frame, csv_path)
    write_text(tex_path, latex)
    return [csv_path, tex_path]
