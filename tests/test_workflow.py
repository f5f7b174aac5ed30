"""Tests of the Snakemake workflow: the paper grid's DAG, config errors before any job, the conda
environment, and the CI preset run end to end (data -> training -> aggregate -> table, figure)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import tomllib
import yaml

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
    assert counts["train"] == 144 + 60 + 24, "E1 135 + E2 9 + E5 60 + E5 baselines 24 runs"
    assert counts["dataset_scale_distribution"] == 9 and counts["mnist_pool"] == 1


def test_default_config_plans_e5_runs_baselines_and_mnist_scale_datasets():
    """SPEC §8 E5: 10 configurations x 6 realisations, the baselines (fixed SESN and CNN, both
    augmentations, 6 realisations), the 6 MNIST-Scale realisations and the E5 table."""
    result = snakemake("-n")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    runs = set(re.findall(r"results/runs/(\w+)/([^/\s]+)/summary\.json", output))
    per_experiment = {
        name: sum(1 for experiment, _ in runs if experiment == name)
        for name in ("e5", "e5_baselines")
    }
    assert per_experiment == {"e5": 60, "e5_baselines": 24}
    datasets = set(re.findall(r"results/data/mnist_scale/sesn/seed(\d+)\.npz", output))
    assert datasets == {str(k) for k in range(6)}
    assert "results/tables/e5_table.csv" in output and "results/tables/e5_table.tex" in output


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


def test_ci_preset_runs_end_to_end(tmp_path):
    """The whole DAG on the embedded digits: pool, datasets, 8 runs, tables and the E1 figure."""
    workdir = copy_workflow(tmp_path / "workflow")
    result = snakemake("--cores", "2", "--configfile", "config/test.yaml", cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
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
    # E5: learn ISR with and without "+", and the CNN baseline row.
    e5 = pd.read_csv(results / "tables/e5_table.csv")
    assert list(zip(e5["augment"], e5["model"], strict=True)) == [
        ("none", "cnn"),
        ("none", "sesn"),
        ("rescale", "sesn"),
    ]
    assert (e5["n_runs"] == 1).all() and e5["test_error_mean"].between(0, 100).all()
    assert (results / "tables/e5_table.tex").stat().st_size > 0
    # Nothing half-written is left behind.
    assert not list(results.rglob("*.tmp"))
    # A second call has nothing to do.
    again = snakemake("-n", "--configfile", "config/test.yaml", cwd=workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
