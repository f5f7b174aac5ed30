"""Tests of scalelearn.analysis on small hand-made run folders and run tables: aggregation, the
E1 table (mean ± std over seeds, best ISR per width), the learned-scales tables of E2 and E3, the
E4 table, the ISR comparison, the per-scale test and the scale trajectories (numbers computed by
hand), the figure files and the `analyse` command."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from scalelearn.analysis import aggregate, figures, tables
from scalelearn.cli import main
from scalelearn.errors import ScalelearnError

# test error % per (width, isr): seeds 0 and 1
E1_ERRORS = {
    (2.0, 1.5): (3.0, 5.0),
    (2.0, 3.0): (2.0, 2.0),
    (4.0, 1.5): (6.0, 6.0),
    (4.0, 3.0): (4.0, 6.0),
}


def write_run(root, experiment, grid, summary, model=None):
    run_id = "_".join(f"{k}{v}" for k, v in grid.items())
    folder = root / experiment / run_id
    folder.mkdir(parents=True)
    config = {
        "experiment": experiment,
        "run_id": run_id,
        "grid": grid,
        "dataset": "d.npz",
        "model": model or {"name": "toy"},
        "train": {"lr_milestones": [20, 40]},
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def e1_folders(tmp_path):
    folders = []
    for (width, isr), errors in E1_ERRORS.items():
        for seed, error in enumerate(errors):
            grid = {"width": width, "isr": isr, "seed": seed}
            summary = {"test_error": error, "isr": isr, "sigma_basis": 2.0}
            folders.append(write_run(tmp_path, "e1", grid, summary))
    return folders


def test_isr_curve_table_means_stds_and_best(e1_folders):
    runs = aggregate.collect_runs(e1_folders)
    assert len(runs) == 8 and runs["train_lr_milestones"].iloc[0] == "[20, 40]"
    curve = tables.isr_curve_table(runs)
    row = curve[(curve["width"] == 2.0) & (curve["isr"] == 1.5)].iloc[0]
    assert row["test_error_mean"] == 4.0
    assert row["test_error_std"] == pytest.approx(np.std([3.0, 5.0], ddof=1))
    assert row["n_runs"] == 2
    best = tables.best_isr_per_width(curve)
    assert best["isr"].tolist() == [3.0, 3.0]
    assert best["test_error_mean"].tolist() == [2.0, 5.0]
    latex = tables.isr_curve_latex(curve)
    assert "\\mathbf{2.00 \\pm 0.00}" in latex and "$b = 4$" in latex


def test_learned_scales_table_joins_best_fixed_isr(e1_folders, tmp_path):
    folders = []
    for width, errors in ((2.0, (1.0, 3.0)), (4.0, (4.0, 4.0))):
        for seed, error in enumerate(errors):
            summary = {
                "test_error": error,
                "isr": 2.0 + seed,
                "sigma_basis": 1.5,
                "internal_scales": [1.5, 1.5 * (2.0 + seed)],
            }
            folders.append(write_run(tmp_path / "l", "e2", {"width": width, "seed": seed}, summary))
    table = tables.learned_scales_table(
        aggregate.collect_runs(folders), aggregate.collect_runs(e1_folders)
    )
    assert table["isr_mean"].tolist() == [2.5, 2.5]
    assert table["scale_1"].tolist() == pytest.approx([3.75, 3.75])
    assert table["test_error_mean"].tolist() == [2.0, 4.0]
    assert table["best_fixed_isr"].tolist() == [3.0, 3.0]
    assert table["best_fixed_error_mean"].tolist() == [2.0, 5.0]
    assert "best fixed ISR" in tables.learned_scales_latex(table)


def test_command_line_writes_csv_tex_pdf_png(e1_folders, tmp_path, capsys):
    runs_csv = tmp_path / "out" / "e1.csv"
    main(["aggregate", "--out", str(runs_csv), *map(str, e1_folders)])
    stem = str(tmp_path / "out/e1_isr")
    main(["analyse", "isr_curve", "--runs", str(runs_csv), "--table", stem, "--figure", stem])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["e1.csv", "e1_isr.csv", "e1_isr.pdf", "e1_isr.png", "e1_isr.tex"]
    assert pd.read_csv(tmp_path / "out/e1_isr.csv")["best"].sum() == 2
    assert (tmp_path / "out/e1_isr.png").read_bytes()[:4] == b"\x89PNG"


def test_command_line_names_a_missing_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["analyse", "per_scale", "--runs", str(tmp_path / "e1.csv")])
    assert "per_scale needs --run-files (every run's per_scale.csv)" in capsys.readouterr().err


def test_figure_has_one_line_per_width(e1_folders):
    curve = tables.isr_curve_table(aggregate.collect_runs(e1_folders))
    figure = figures.isr_curve_figure(curve)
    labels = [t.get_text() for t in figure.axes[0].get_legend().get_texts()]
    assert labels == ["b = 2", "b = 4"]


def test_missing_run_and_missing_columns_are_clear(tmp_path, e1_folders):
    with pytest.raises(ScalelearnError, match="the run did not finish"):
        aggregate.collect_runs([tmp_path / "nowhere"])
    runs = aggregate.collect_runs(e1_folders).drop(columns="grid_isr")
    with pytest.raises(ScalelearnError, match=r"needs the column\(s\) \['grid_isr'\]"):
        tables.isr_curve_table(runs)


# --- the tables of E2-E4, the ISR comparison, the per-scale test and the trajectories -------


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_learned_scales_table_groups_by_the_initialisation():
    """E3: cells (width, init ISR, init sigma_b); the learned ISR is not the grid's ISR."""
    rows = []
    for isr, sb, seed, error, learned in [
        (1.5, 1.0, 0, 3.0, 2.0),
        (1.5, 1.0, 1, 5.0, 4.0),
        (6.0, 1.0, 0, 2.0, 5.0),
        (6.0, 4.0, 0, 1.0, 7.0),
    ]:
        rows.append(
            {
                "run_id": f"{isr}_{sb}_{seed}",
                "grid_width": 8.0,
                "grid_isr": isr,
                "grid_sigma_basis": sb,
                "grid_seed": seed,
                "test_error": error,
                "isr": learned,
                "sigma_basis": sb + 0.5 * seed,
            }
        )
    cells = ["grid_width", "grid_isr", "grid_sigma_basis"]
    table = tables.learned_scales_table(frame(rows), cells=cells)
    assert list(table.columns[:4]) == ["width", "init_isr", "init_sigma_basis", "n_runs"]
    assert table["n_runs"].tolist() == [2, 1, 1]
    first = table.iloc[0]
    assert (first["init_isr"], first["init_sigma_basis"]) == (1.5, 1.0)
    assert first["test_error_mean"] == 4.0 and first["isr_mean"] == 3.0
    assert first["isr_std"] == pytest.approx(np.std([2.0, 4.0], ddof=1))
    assert first["sigma_basis_mean"] == 1.25
    assert table["isr_mean"].tolist() == [3.0, 5.0, 7.0]
    # A diverged run is counted in its cell, never averaged.
    diverged = {**rows[0], "run_id": "x", "grid_seed": 2, "status": "diverged", "isr": 99.0}
    with_failed = frame([*[{**r, "status": "ok"} for r in rows], diverged])
    failed_table = tables.learned_scales_table(with_failed, cells=cells)
    assert failed_table["n_failed"].tolist() == [1, 0, 0]
    assert failed_table["isr_mean"].tolist() == [3.0, 5.0, 7.0]
    assert "2 (1 failed)" in tables.learned_scales_latex(failed_table)
    latex = tables.learned_scales_latex(table)
    assert "init ISR" in latex and "init $\\sigma_b$" in latex and "$n$" in latex


def e4_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, reference = [], []
    for mode, errors in (("direct", (3.0, 4.0)), ("ratio_squared", (2.0, 2.0))):
        for seed, error in enumerate(errors):
            rows.append(
                {
                    "run_id": f"{mode}{seed}",
                    "grid_width": 4.0,
                    "grid_scale_mode": mode,
                    "grid_seed": seed,
                    "test_error": error,
                    "isr": 3.0 + seed,
                    "sigma_basis": 2.0,
                    "scale_0": 2.0,
                    "scale_1": 4.0 + seed,
                    "model_scale_mode": mode,
                }
            )
    for width, error in ((2.0, 1.0), (4.0, 1.5)):
        reference.append(
            {
                "run_id": f"b{width}",
                "grid_width": width,
                "grid_seed": 0,
                "test_error": error,
                "isr": 5.0,
                "sigma_basis": 1.0,
                "scale_0": 1.0,
                "scale_1": 5.0,
                "model_scale_mode": "single_ratio_squared",
            }
        )
    return frame(rows), frame(reference)


def test_parameterisation_table_adds_the_reference_as_a_row_per_width():
    runs, reference = e4_runs()
    table = tables.parameterisation_table(runs, reference)
    keys = list(zip(table["width"], table["scale_mode"], strict=True))
    assert keys == [
        (2.0, "single_ratio_squared"),
        (4.0, "direct"),
        (4.0, "ratio_squared"),
        (4.0, "single_ratio_squared"),
    ]
    assert table["n_runs"].tolist() == [1, 2, 2, 1]
    assert table["test_error_mean"].tolist() == [1.0, 3.5, 2.0, 1.5]
    assert table["scale_1_mean"].tolist() == [5.0, 4.5, 4.5, 5.0]
    assert table.loc[1, "test_error_std"] == pytest.approx(np.std([3.0, 4.0], ddof=1))
    latex = tables.parameterisation_latex(table)
    assert "ratio\\_squared" in latex and "[2.00, 4.50]" in latex


def test_isr_comparison_table_joins_predicted_best_fixed_and_learned(e1_folders, tmp_path):
    fixed = aggregate.collect_runs(e1_folders)
    learned = frame(
        [
            {
                "run_id": "a",
                "grid_width": 4.0,
                "grid_seed": 0,
                "test_error": 3.0,
                "isr": 4.0,
                "sigma_basis": 2.0,
            },
            {
                "run_id": "b",
                "grid_width": 4.0,
                "grid_seed": 1,
                "test_error": 5.0,
                "isr": 6.0,
                "sigma_basis": 2.0,
            },
        ]
    )
    predicted = frame([{"width": 2.0, "predicted_isr": 2.5}, {"width": 4.0, "predicted_isr": 3.5}])
    table = tables.isr_comparison_table(predicted, fixed, learned)
    assert table["width"].tolist() == [2.0, 4.0]
    assert table["predicted_isr"].tolist() == [2.5, 3.5]
    # E1_ERRORS: b 2 -> ISR 3 (2.0 ± 0), b 4 -> ISR 3 (5.0 ± 1.41), two seeds each
    assert table["best_fixed_isr"].tolist() == [3.0, 3.0]
    assert table["best_fixed_error_mean"].tolist() == [2.0, 5.0]
    assert table["best_fixed_n_runs"].tolist() == [2, 2]
    assert np.isnan(table.loc[0, "learned_isr_mean"]) and table.loc[1, "learned_isr_mean"] == 5.0
    assert table.loc[1, "learned_n_runs"] == 2 and table.loc[1, "learned_error_mean"] == 4.0
    assert "--" in tables.isr_comparison_latex(table)


def test_per_scale_table_mean_min_max_over_seeds():
    runs = frame(
        [
            {"run_id": f"r{seed}", "grid_width": 2.0, "grid_isr": 1.5, "grid_seed": seed}
            for seed in (0, 1)
        ]
    )
    per_scale = frame(
        [
            {"run_id": "r0", "scale": 0.5, "error": 10.0},
            {"run_id": "r0", "scale": 1.0, "error": 2.0},
            {"run_id": "r1", "scale": 0.5, "error": 30.0},
            {"run_id": "r1", "scale": 1.0, "error": 4.0},
        ]
    )
    table = tables.per_scale_table(runs, per_scale)
    assert table["scale"].tolist() == [0.5, 1.0]
    assert table["error_mean"].tolist() == [20.0, 3.0]
    assert table["error_min"].tolist() == [10.0, 2.0]
    assert table["error_max"].tolist() == [30.0, 4.0]
    assert table["n_runs"].tolist() == [2, 2]
    figure = figures.per_scale_figure(table)
    assert [ax.get_title() for ax in figure.axes] == ["b = 2"]
    bounds = [line.get_xdata()[0] for line in figure.axes[0].lines if line.get_linestyle() == "--"]
    assert bounds == [1.0, 2.0]
    with pytest.raises(ScalelearnError, match=r"no per-run file for run\(s\) \['r1'\]"):
        tables.per_scale_table(runs, per_scale[per_scale["run_id"] == "r0"])


def test_trajectory_table_means_over_seeds_per_epoch():
    runs = frame(
        [
            {"run_id": f"r{seed}", "grid_width": 8.0, "grid_isr": 3.0, "grid_seed": seed}
            for seed in (0, 1)
        ]
    )
    metrics = frame(
        [
            {
                "run_id": run,
                "epoch": epoch,
                "sigma_basis": 2.0 + k,
                "isr": 3.0 + epoch + k,
                "scale_0": 2.0,
                "scale_1": 5.0,
            }
            for k, run in enumerate(("r0", "r1"))
            for epoch in (0, 1)
        ]
    )
    table = tables.trajectory_table(runs, metrics, ["grid_width", "grid_isr"])
    assert table["epoch"].tolist() == [0, 1] and table["n_runs"].tolist() == [2, 2]
    assert table["isr"].tolist() == [3.5, 4.5] and table["sigma_basis"].tolist() == [2.5, 2.5]
    assert "init_isr" in table
    figure = figures.scale_trajectories_figure(table, ["width", "init_isr"])
    assert len(figure.axes[2].lines) == 2  # one line per internal scale of the one cell


def test_registry_runs_an_analysis_from_run_files(tmp_path, capsys):
    """`scalelearn analyse per_scale` with per-run files found by their run folders."""
    runs = frame(
        [
            {
                "experiment": "e1",
                "run_id": f"r{isr}",
                "grid_width": 2.0,
                "grid_isr": isr,
                "grid_seed": 0,
                "test_error": 1.0,
            }
            for isr in (1.5, 3.0)
        ]
    )
    runs.to_csv(tmp_path / "e1.csv", index=False)
    files = []
    for isr in (1.5, 3.0):
        folder = tmp_path / "runs/e1" / f"r{isr}"
        folder.mkdir(parents=True)
        frame([{"scale": s, "n": 10, "errors": 1, "error": 10.0} for s in (0.5, 1.0)]).to_csv(
            folder / "per_scale.csv", index=False
        )
        files.append(str(folder / "per_scale.csv"))
    stem = str(tmp_path / "fig")
    main(
        [
            "analyse",
            "per_scale",
            "--runs",
            str(tmp_path / "e1.csv"),
            "--run-files",
            *files,
            "--figure",
            stem,
        ]
    )
    assert (tmp_path / "fig.pdf").stat().st_size > 0 and (tmp_path / "fig.png").exists()


def test_every_analysis_of_a_learned_experiment_whose_runs_all_diverged_is_drawn():
    """A diverged run has no test numbers, no final scales and (diverged in its first epoch) a
    metrics.csv without rows: the tables count it, and the figures are still made, so the
    pipeline finishes and shows the failure instead of stopping in an analysis job."""
    from scalelearn.analysis import builders
    from scalelearn.analysis.registry import AnalysisInputs
    from scalelearn.nn.scales import initial_scales

    runs = pd.DataFrame(
        {
            "experiment": ["e2"],
            "run_id": ["b2_seed0"],
            "grid_width": [2.0],
            "grid_seed": [0],
            "status": ["diverged"],
            "model_name": ["toy"],
            "model_basis": ["hermite_a"],
            "model_effective_size": [5],
            "model_num_scales": [3],
            "model_sigma_basis": [1.0],
            "model_isr": [3.0],
            "model_scale_mode": ["single_ratio_squared"],
            "model_learn_sigma_basis": [True],
            "model_kernel_size_k": [4.0],
        }
    )
    metrics = pd.DataFrame({"experiment": ["e2"], "run_id": ["b2_seed0"], "epoch": [np.nan]})
    learned = builders.learned_scales(AnalysisInputs(runs=runs, cells=["grid_width"]))
    assert learned.table[["n_runs", "n_failed"]].iloc[0].tolist() == [0, 1]
    trajectories = builders.scale_trajectories(
        AnalysisInputs(runs=runs, run_files=metrics, cells=["grid_width"])
    )
    assert trajectories.figure is not None
    method = builders.method(AnalysisInputs(runs=runs))
    titles = " ".join(ax.get_title() for ax in method.figure.axes)
    assert f"{initial_scales(1.0, 3.0, 3)[-1]:.2f}" in titles
