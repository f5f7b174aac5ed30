"""Tests of scalelearn.analysis on small hand-made run folders: aggregation, the E1 table (mean ±
std over seeds, best ISR per width), the learned-scales table and the figure files."""

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
    main(["table", "isr-curve", "--runs", str(runs_csv), "--out", str(tmp_path / "out/e1_isr")])
    main(["plot", "isr-curve", "--runs", str(runs_csv), "--out", str(tmp_path / "out/e1_isr")])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["e1.csv", "e1_isr.csv", "e1_isr.pdf", "e1_isr.png", "e1_isr.tex"]
    assert pd.read_csv(tmp_path / "out/e1_isr.csv")["best"].sum() == 2
    assert (tmp_path / "out/e1_isr.png").read_bytes()[:4] == b"\x89PNG"


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
