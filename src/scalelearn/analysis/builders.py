"""The build functions of the analyses in `scalelearn.analysis.registry`: each reads an
AnalysisInputs and returns a Built (table + LaTeX and/or figure), calling the table functions
(tables.py), the figures (figures.py), the tolerance model and the method figure."""

from __future__ import annotations

import json

import pandas as pd

from scalelearn.analysis import figures, tables
from scalelearn.analysis.registry import AnalysisInputs, Built
from scalelearn.errors import ScalelearnError


def _need(value, what: str):
    if value is None:
        raise ScalelearnError(f"this analysis needs {what}")
    return value


def isr_curve(inputs: AnalysisInputs) -> Built:
    curve = tables.isr_curve_table(_need(inputs.runs, "--runs"))
    return Built(curve, tables.isr_curve_latex(curve), figures.isr_curve_figure(curve))


def learned_scales(inputs: AnalysisInputs) -> Built:
    table = tables.learned_scales_table(
        _need(inputs.runs, "--runs"), inputs.reference, inputs.cells
    )
    return Built(table, tables.learned_scales_latex(table))


def parameterisations(inputs: AnalysisInputs) -> Built:
    table = tables.parameterisation_table(_need(inputs.runs, "--runs"), inputs.reference)
    return Built(table, tables.parameterisation_latex(table))


def per_scale(inputs: AnalysisInputs) -> Built:
    runs = _need(inputs.runs, "--runs")
    table = tables.per_scale_table(runs, _need(inputs.run_files, "the runs' per_scale.csv"))
    return Built(figure=figures.per_scale_figure(table))


def scale_trajectories(inputs: AnalysisInputs) -> Built:
    runs = _need(inputs.runs, "--runs")
    metrics = _need(inputs.run_files, "the runs' metrics.csv")
    table = tables.trajectory_table(runs, metrics, inputs.cells)
    cells = [tables.cell_name(c) for c in inputs.cells]
    return Built(figure=figures.scale_trajectories_figure(table, cells))


def _tolerance_fit(inputs: AnalysisInputs):
    from scalelearn.analysis.tolerance import fit_tolerance

    return fit_tolerance(_need(inputs.widths_octaves, "--widths-octaves"))


def predicted_isr(fit) -> pd.DataFrame:
    """width, predicted_isr of a ToleranceFit."""
    return pd.DataFrame(
        {
            "width": [2.0**w.width_octaves for w in fit.widths],
            "predicted_isr": [w.isr for w in fit.widths],
        }
    )


def isr_comparison(inputs: AnalysisInputs) -> Built:
    fixed = _need(inputs.reference, "--compare-with (a fixed-ISR sweep)")
    table = tables.isr_comparison_table(
        predicted_isr(_tolerance_fit(inputs)), fixed, _need(inputs.runs, "--runs")
    )
    return Built(table, tables.isr_comparison_latex(table))


def tolerance(inputs: AnalysisInputs) -> Built:
    from scalelearn.analysis import tolerance as model

    fit = _tolerance_fit(inputs)
    table = model.tolerance_table(fit)
    return Built(table, model.tolerance_latex(table), model.tolerance_figure(fit))


def method_run(runs: pd.DataFrame) -> pd.Series:
    """The run whose learned scales the method figure shows: among the runs that finished ok
    (all runs when none did), the widest distribution, then the lowest seed (then the first run
    id, for grids that vary more)."""
    ok = runs[tables.run_ok(runs)]
    order = (ok if len(ok) else runs).sort_values(
        ["grid_width", "grid_seed", "run_id"], ascending=[False, True, True]
    )
    return order.iloc[0]


def method(inputs: AnalysisInputs) -> Built:
    from scalelearn.analysis.method import method_figure
    from scalelearn.nn.scales import initial_scales

    run = method_run(_need(inputs.runs, "--runs"))
    scales = [float(run[c]) for c in tables.scale_columns(inputs.runs) if pd.notna(run[c])]
    if not scales:
        # No run of the experiment finished ok (all diverged): draw the basis at the scales the
        # runs started from, so the figure exists and the failure shows in the tables instead.
        scales = initial_scales(
            float(run["model_sigma_basis"]), float(run["model_isr"]), int(run["model_num_scales"])
        )
    model = {}
    for column in inputs.runs.columns:
        if column.startswith("model_") and pd.notna(run[column]):
            value = run[column]
            if isinstance(value, str) and value.startswith("["):
                value = json.loads(value)  # aggregate.py writes lists as JSON
            elif hasattr(value, "item"):
                value = value.item()  # numpy scalar -> plain number
            model[column[len("model_") :]] = value
    return Built(figure=method_figure(scales, model))


def e5(inputs: AnalysisInputs) -> Built:
    from scalelearn.analysis.e5 import e5_latex, e5_table

    table = e5_table(_need(inputs.runs, "--runs"), inputs.reference)
    return Built(table, e5_latex(table))
