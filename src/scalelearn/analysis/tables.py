"""Result tables from the aggregated runs (pandas): a tidy CSV for machines and a LaTeX table
for the paper layout.

- `isr_curve_table` (E1): test error mean ± std over seeds per (width, ISR), best ISR per width.
- `learned_scales_table` (E2, E3): per cell (width, and the initialisation where the experiment
  varies it) the test error and the learned sigma_b, ISR and scales, next to the best fixed ISR
  of a reference experiment (E1).
- `parameterisation_table` (E4): per (width, scale_mode) the test error and the final scales.
- `isr_comparison_table`: predicted (tolerance model) / best fixed / learned ISR per width.
- `per_scale_table` (E1 in-depth test) and `trajectory_table` (scales over epochs): the numbers
  behind two figures.

Failed runs (status other than "ok", e.g. diverged) are counted, never averaged: every table has
`n_runs` (ok runs, whose numbers make the means) and `n_failed` per cell (`cell_stats`), beside
mean and std over seeds.
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


# How a grid column shows in a table of learned scales: the grid's isr and sigma_basis are the
# initial values there, the learned ones are the `isr_*` and `sigma_basis_*` columns.
CELL_NAMES = {"grid_width": "width", "grid_isr": "init_isr", "grid_sigma_basis": "init_sigma_basis"}


def cell_name(column: str) -> str:
    return CELL_NAMES.get(column, column.removeprefix("grid_"))


def scale_columns(frame: pd.DataFrame) -> list[str]:
    """scale_0, scale_1, ... in index order."""
    found = [c for c in frame.columns if c.startswith("scale_") and c[6:].isdigit()]
    return sorted(found, key=lambda c: int(c[6:]))


def _width_key(frame: pd.DataFrame) -> pd.DataFrame:
    # The widths are 2^octaves computed the same way in every experiment; round anyway so a CSV
    # round trip cannot split them.
    return frame.assign(_key=frame["width"].round(6))


def learned_scales_table(
    runs: pd.DataFrame, reference: pd.DataFrame | None = None, cells: list[str] | None = None
) -> pd.DataFrame:
    """Per cell (`cells`: grid columns, default the width; E3 adds grid_isr and
    grid_sigma_basis, shown as init_isr / init_sigma_basis): n_runs, test error, learned sigma_b
    and ISR (mean and std over seeds) and the mean learned internal scales; with `reference`
    (runs of a fixed-ISR sweep) also the best fixed ISR of the cell's width and its error."""
    cells = cells or ["grid_width"]
    _require(runs, cells, "the learned-scales table")
    table = cell_stats(runs, cells, ["test_error", "sigma_basis", "isr"])
    if scale_columns(runs):
        scales = cell_stats(runs, cells, scale_columns(runs), std=False)
        table[scale_columns(runs)] = scales[[f"{c}_mean" for c in scale_columns(runs)]].to_numpy()
    table = table.rename(columns={c: cell_name(c) for c in cells})
    if reference is not None:
        best = best_isr_per_width(isr_curve_table(reference)).rename(
            columns={
                "isr": "best_fixed_isr",
                "test_error_mean": "best_fixed_error_mean",
                "test_error_std": "best_fixed_error_std",
            }
        )
        best = _width_key(best).drop(columns="width")
        table = _width_key(table).merge(best, on="_key", how="left").drop(columns="_key")
    return table


def scale_mode_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's parameterisation: the grid's scale_mode, else the model's."""
    if "grid_scale_mode" in runs:
        return runs["grid_scale_mode"]
    _require(runs, ["model_scale_mode"], "the parameterisation table")
    return runs["model_scale_mode"]


def parameterisation_table(runs: pd.DataFrame, reference: pd.DataFrame | None = None):
    """E4: per (width, scale_mode) n_runs, test error, final sigma_b and ISR (mean, std) and the
    final internal scales (mean, std). `reference` (E2: learn ISR) joins as more rows, its
    scale_mode from the model config. Rows: width, then the modes in order of appearance."""
    frames = [runs] if reference is None else [runs, reference]
    both = pd.concat([f.assign(scale_mode=scale_mode_of(f)) for f in frames], ignore_index=True)
    _require(both, ["grid_width"], "the parameterisation table")
    columns = ["test_error", "sigma_basis", "isr", *scale_columns(both)]
    table = cell_stats(both, ["grid_width", "scale_mode"], columns)
    # Rows: width, then the parameterisations in the order they appear (the experiment's own
    # modes, then the reference's).
    order = list(dict.fromkeys(both["scale_mode"]))
    table["_order"] = table["scale_mode"].map(order.index)
    table = table.sort_values(["grid_width", "_order"]).drop(columns="_order")
    return table.rename(columns={"grid_width": "width"}).reset_index(drop=True)


def isr_comparison_table(
    predicted: pd.DataFrame, fixed_runs: pd.DataFrame, learned_runs: pd.DataFrame
) -> pd.DataFrame:
    """Per width: the predicted ISR (`predicted`: columns width, predicted_isr), the best
    fixed ISR of a fixed-ISR sweep with its error and n_runs, and the learned ISR and error
    (mean, std, n_runs) of learned-scale runs. Widths missing from a source give NaN."""
    curve = isr_curve_table(fixed_runs)
    best = curve[curve["best"]].rename(
        columns={
            "isr": "best_fixed_isr",
            "test_error_mean": "best_fixed_error_mean",
            "test_error_std": "best_fixed_error_std",
            "n_runs": "best_fixed_n_runs",
        }
    )[
        [
            "width",
            "best_fixed_isr",
            "best_fixed_error_mean",
            "best_fixed_error_std",
            "best_fixed_n_runs",
        ]
    ]
    learned = learned_scales_table(learned_runs).rename(
        columns={
            "isr_mean": "learned_isr_mean",
            "isr_std": "learned_isr_std",
            "test_error_mean": "learned_error_mean",
            "test_error_std": "learned_error_std",
            "n_runs": "learned_n_runs",
        }
    )[
        [
            "width",
            "learned_isr_mean",
            "learned_isr_std",
            "learned_error_mean",
            "learned_error_std",
            "learned_n_runs",
        ]
    ]
    sources = [_width_key(f) for f in (predicted[["width", "predicted_isr"]], best, learned)]
    table = pd.concat([f[["_key", "width"]] for f in sources]).drop_duplicates("_key")
    for source in sources:
        table = table.merge(source.drop(columns="width"), on="_key", how="left")
    return table.sort_values("_key").drop(columns="_key").reset_index(drop=True)


def _run_cells(runs: pd.DataFrame, files: pd.DataFrame, cells: list[str]) -> pd.DataFrame:
    """The per-run file rows with the run's cell columns joined by run id."""
    _require(files, ["run_id"], "the per-run files")
    missing = sorted(set(runs["run_id"]) - set(files["run_id"]))
    if missing:
        raise ScalelearnError(f"no per-run file for run(s) {missing}; pass one per run")
    return files.merge(runs[["run_id", *cells]], on="run_id", how="inner")


def per_scale_table(runs: pd.DataFrame, per_scale: pd.DataFrame) -> pd.DataFrame:
    """E1 in-depth test: per (width, isr, scale) the error % mean, std, min and max over seeds
    and n_runs. `per_scale`: the stacked per_scale.csv files (run_id, scale, n, errors, error)."""
    _require(runs, ["grid_width", "grid_isr"], "the per-scale table")
    _require(per_scale, ["scale", "error"], "the per-scale table")
    rows = _run_cells(runs, per_scale, ["grid_width", "grid_isr"])
    group = rows.groupby(["grid_width", "grid_isr", "scale"], sort=True)["error"]
    table = group.agg(["count", "mean", "std", "min", "max"]).reset_index()
    return table.rename(
        columns={
            "grid_width": "width",
            "grid_isr": "isr",
            "count": "n_runs",
            "mean": "error_mean",
            "std": "error_std",
            "min": "error_min",
            "max": "error_max",
        }
    )


def trajectory_table(runs: pd.DataFrame, metrics: pd.DataFrame, cells: list[str]) -> pd.DataFrame:
    """Scales over epochs: per cell and epoch the mean (over seeds) of sigma_b, ISR and every
    internal scale, and n_runs. `metrics`: the stacked metrics.csv files of the runs."""
    _require(metrics, ["epoch"], "the scale trajectories")
    # A run that diverged in its first epoch has a metrics.csv without rows or scale columns.
    metrics = metrics.reindex(columns=list(dict.fromkeys([*metrics, "sigma_basis", "isr"])))
    rows = _run_cells(runs, metrics, cells)
    columns = ["sigma_basis", "isr", *scale_columns(rows)]
    group = rows.groupby([*cells, "epoch"], sort=True)
    table = pd.concat([group["run_id"].count().rename("n_runs"), group[columns].mean()], axis=1)
    return table.reset_index().rename(columns={c: cell_name(c) for c in cells})


# --- LaTeX ----------------------------------------------------------------------------------


def _pm(mean: float, std: float, bold: bool = False) -> str:
    if np.isnan(mean):
        return "--"
    text = f"{mean:.2f}" if np.isnan(std) else f"{mean:.2f} \\pm {std:.2f}"
    return f"$\\mathbf{{{text}}}$" if bold else f"${text}$"


def _pms(table: pd.DataFrame, name: str) -> list[str]:
    """The `name`_mean ± `name`_std cells of a table."""
    return [_pm(m, s) for m, s in zip(table[f"{name}_mean"], table[f"{name}_std"], strict=True)]


def _n_note(counts: pd.Series) -> str:
    """The caption's note on the number of runs per cell."""
    counts = sorted(set(int(n) for n in counts))
    if len(counts) == 1:
        return f" Every cell averages {counts[0]} run(s)."
    return f" Cells average {counts[0]} to {counts[-1]} runs (column $n$ or in parentheses)."


def _n_cells(table: pd.DataFrame) -> list[str]:
    """The runs per cell, with the failed ones where there are any: '3', '2 (1 failed)'."""
    failed = table["n_failed"] if "n_failed" in table else pd.Series(0, index=table.index)
    return [
        f"{int(n)}" + (f" ({int(f)} failed)" if f else "")
        for n, f in zip(table["n_runs"], failed, strict=True)
    ]


def _latex(frame: pd.DataFrame, caption: str, label: str) -> str:
    return frame.to_latex(index=False, escape=False, caption=caption, label=label)


def isr_curve_latex(curve: pd.DataFrame) -> str:
    """Rows ISR, columns width b; cells test error % mean ± std; best per width in bold; the
    number of runs in parentheses where the cells differ in it."""
    uneven = curve["n_runs"].nunique() > 1

    def cell(mean, std, best, n_runs, n_failed) -> str:
        text = _pm(mean, std, best)
        if n_failed:
            return f"{text} ({n_failed} of {n_runs + n_failed} failed)"
        return text + (f" ({n_runs})" if uneven else "")

    cells = curve.assign(
        cell=[
            cell(*values)
            for values in zip(
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
        "internal scale range (ISR) and scale-distribution width $b$; best ISR per width in bold."
        + _n_note(curve["n_runs"]),
        label="tab:e1-isr",
    )


def learned_scales_latex(table: pd.DataFrame) -> str:
    rows = {"$b$": [f"{w:.3g}" for w in table["width"]]}
    for column in table.columns[1 : table.columns.get_loc("n_runs")]:
        # further cell columns (E3: the initial ISR and sigma_b)
        label = {"init_isr": "init ISR", "init_sigma_basis": "init $\\sigma_b$"}.get(
            column, column.replace("_", " ")
        )
        rows[label] = [f"{v:.3g}" if isinstance(v, float) else str(v) for v in table[column]]
    rows["$n$"] = _n_cells(table)
    rows["error (\\%)"] = _pms(table, "test_error")
    rows["learned $\\sigma_b$"] = _pms(table, "sigma_basis")
    rows["learned ISR"] = _pms(table, "isr")
    if "best_fixed_isr" in table:
        rows["best fixed ISR"] = [f"{v:.2f}" for v in table["best_fixed_isr"]]
        rows["its error (\\%)"] = _pms(table, "best_fixed_error")
    return _latex(
        pd.DataFrame(rows),
        "Learned internal scales: test error and learned $\\sigma_b$ and ISR at the best "
        "checkpoint (mean $\\pm$ std over seeds, $n$ runs) per scale-distribution width $b$.",
        "tab:learned-scales",
    )


def parameterisation_latex(table: pd.DataFrame) -> str:
    scales = scale_columns(table.rename(columns=lambda c: c.removesuffix("_mean")))
    rows = {
        "$b$": [f"{w:.3g}" for w in table["width"]],
        "parameterisation": [m.replace("_", "\\_") for m in table["scale_mode"]],
        "$n$": _n_cells(table),
        "error (\\%)": _pms(table, "test_error"),
        "$\\sigma_b$": _pms(table, "sigma_basis"),
        "ISR": _pms(table, "isr"),
        "final scales (mean)": [
            "[" + ", ".join(f"{row[f'{c}_mean']:.2f}" for c in scales) + "]"
            for _, row in table.iterrows()
        ],
    }
    return _latex(
        pd.DataFrame(rows),
        "Parameterisations of the learnable internal scales: test error and final scales at "
        "the best checkpoint (mean $\\pm$ std over seeds, $n$ runs) per width $b$.",
        "tab:parameterisations",
    )


def isr_comparison_latex(table: pd.DataFrame) -> str:
    def fmt(value: float) -> str:
        return "--" if np.isnan(value) else f"{value:.2f}"

    rows = {
        "$b$": [f"{w:.3g}" for w in table["width"]],
        "predicted ISR": [fmt(v) for v in table["predicted_isr"]],
        "best fixed ISR": [fmt(v) for v in table["best_fixed_isr"]],
        "its error (\\%)": _pms(table, "best_fixed_error"),
        "$n$ fixed": [fmt(v).removesuffix(".00") for v in table["best_fixed_n_runs"]],
        "learned ISR": _pms(table, "learned_isr"),
        "learned error (\\%)": _pms(table, "learned_error"),
        "$n$ learned": [fmt(v).removesuffix(".00") for v in table["learned_n_runs"]],
    }
    return _latex(
        pd.DataFrame(rows),
        "Internal scale range per width $b$: predicted by the tolerance model, best fixed ISR "
        "(lowest mean test error) and learned ISR (mean $\\pm$ std over seeds, $n$ runs).",
        "tab:isr-comparison",
    )


def write_table(frame: pd.DataFrame, latex: str, stem: str | os.PathLike) -> list[Path]:
    """Write `stem`.csv (the tidy numbers) and `stem`.tex, atomically; return both paths."""
    stem = Path(stem)
    csv_path, tex_path = stem.with_name(stem.name + ".csv"), stem.with_name(stem.name + ".tex")
    write_csv(frame, csv_path)
    write_text(tex_path, latex)
    return [csv_path, tex_path]
