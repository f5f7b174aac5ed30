"""Tests of the Snakemake workflow: the paper grid's DAG, config errors before any job, the conda
environment, and the CI preset run end to end (data -> training -> aggregate -> table, figure)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tomllib
import yaml

from scalelearn.experiments import experiment_runs, load_config

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = shutil.which("snakemake", path=str(BIN)) or shutil.which("snakemake")


def snakemake(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    # Jobs run `python -m scalelearn`: the test's own Python must come first on PATH.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [SNAKEMAKE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.MULTILINE)}


def copy_workflow(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "*.egg-info")
    shutil.copytree(REPO, target, ignore=ignore)
    return target


def test_default_config_lists_the_paper_grid():
    result = snakemake("-n", "--quiet", "rules")
    assert result.returncode == 0, result.stderr
    counts = job_counts(result.stdout + result.stderr)
    assert counts["train"] == 144, "E1 135 runs + E2 9 runs"
    assert counts["dataset_scale_distribution"] == 9 and counts["mnist_pool"] == 1


def test_bad_config_stops_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["train"]["epochs"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    message = "config key train.epochs: invalid value 0; allowed: a value >= 1"
    assert message in result.stdout + result.stderr


def test_conda_env_lists_every_dependency():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["workflow"]
    names = {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in wanted}
    names = {"pytorch" if n == "torch" else n for n in names}
    env = yaml.safe_load((REPO / "envs/scalelearn.yaml").read_text())
    listed = {re.match(r"[A-Za-z0-9_.-]+", d)[0].lower() for d in env["dependencies"]}
    assert names <= listed, f"missing from envs/scalelearn.yaml: {sorted(names - listed)}"
    assert "python=3.11" in env["dependencies"]


@pytest.fixture(scope="module")
def ci_preset(tmp_path_factory) -> Path:
    """The CI preset run once in a copy of the workflow; its working directory."""
    workdir = copy_workflow(tmp_path_factory.mktemp("ci") / "workflow")
    result = snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_ci_preset_runs_end_to_end(ci_preset):
    """The whole DAG on the embedded digits: pool, datasets, 5 runs, tables and the E1 figure."""
    workdir = ci_preset
    results = workdir / "results"
    for stem in ("figures/e1_isr", "tables/e1_isr", "tables/e2_learned"):
        for suffix in (".pdf", ".png") if stem.startswith("figures") else (".csv", ".tex"):
            path = results / f"{stem}{suffix}"
            assert path.stat().st_size > 0, path
    e1 = pd.read_csv(results / "aggregate/e1.csv")
    assert len(e1) == 4 and e1["test_error"].between(0, 100).all()
    assert sorted(set(e1["isr"].round(2))) == [1.5, 3.0]
    e2 = pd.read_csv(results / "aggregate/e2.csv")
    assert len(e2) == 1 and e2["isr"].iloc[0] > 1
    table = pd.read_csv(results / "tables/e1_isr.csv")
    assert set(table["width"].round(2)) == {2.0, 4.0}
    # Nothing half-written is left behind.
    assert not list(results.rglob("*.tmp"))
    # A second call has nothing to do.
    again = snakemake("-n", "--configfile", "config/test.yaml", cwd=workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def run_summaries(workdir: Path, experiment: str) -> pd.DataFrame:
    """One row per run the config lists: its grid point and its summary.json."""
    config = load_config(workdir / "config/test.yaml")
    rows = []
    for run in experiment_runs(config, experiment):
        summary = json.loads((workdir / run.summary).read_text())
        assert summary["status"] == "ok", run.run_id
        rows.append({**{f"grid_{k}": v for k, v in run.config["grid"].items()}, **summary})
    return pd.DataFrame(rows)


def per_width(frame: pd.DataFrame, column: str = "width") -> pd.Series:
    return frame[column].round(6)


def test_ci_preset_tables_agree_with_run_summaries(ci_preset):
    """Every cell of the E1 and E2 tables recomputed from the runs' summary.json files."""
    e1 = run_summaries(ci_preset, "e1")
    expected = (
        e1.assign(width=per_width(e1, "grid_width"), isr=e1["grid_isr"])
        .groupby(["width", "isr"])["test_error"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    table = pd.read_csv(ci_preset / "results/tables/e1_isr.csv")
    table["width"] = per_width(table)
    merged = table.merge(expected, on=["width", "isr"], how="outer", validate="one_to_one")
    assert (
        len(merged) == len(table) == len(expected) == e1.groupby(["grid_width", "grid_isr"]).ngroups
    )
    assert (merged["n_runs"] == merged["count"]).all()
    assert merged["n_runs"].sum() == len(e1)
    assert np.allclose(merged["test_error_mean"], merged["mean"], rtol=1e-9)
    assert np.allclose(merged["test_error_std"], merged["std"], rtol=1e-9, equal_nan=True)
    best = expected.loc[expected.groupby("width")["mean"].idxmin(), ["width", "isr"]]
    flagged = table.loc[table["best"].astype(bool), ["width", "isr"]]
    assert sorted(map(tuple, flagged.to_numpy())) == sorted(map(tuple, best.to_numpy()))

    e2 = run_summaries(ci_preset, "e2").assign(width=lambda f: per_width(f, "grid_width"))
    learned = pd.read_csv(ci_preset / "results/tables/e2_learned.csv")
    learned["width"] = per_width(learned)
    assert sorted(learned["width"]) == sorted(e2["width"].unique())
    for _, row in learned.iterrows():
        runs = e2[e2["width"] == row["width"]]
        assert row["n_runs"] == len(runs)
        for column in ("test_error", "isr", "sigma_basis"):
            assert np.isclose(row[f"{column}_mean"], runs[column].mean(), rtol=1e-9), column
        scales = np.mean(runs["internal_scales"].tolist(), axis=0)
        assert np.allclose([row[f"scale_{i}"] for i in range(len(scales))], scales, rtol=1e-9)
        fixed = best[best["width"] == row["width"]]
        assert row["best_fixed_isr"] == fixed["isr"].item()
        reference = expected[
            (expected["width"] == row["width"]) & (expected["isr"] == row["best_fixed_isr"])
        ]
        assert np.isclose(row["best_fixed_error_mean"], reference["mean"].item(), rtol=1e-9)
