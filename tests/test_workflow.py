"""Tests of the Snakemake workflow: the paper grid's DAG, config errors before any job, the conda
environment, and the CI preset run end to end (data -> training -> per-scale test -> aggregate ->
every table and figure -> report)."""

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
    assert counts["train"] == 135 + 9 + 81 + 18, "E1 135, E2 9, E3 81, E4 18 runs (SPEC §8)"
    assert counts["evaluate"] == 135, "the per-scale test of every E1 run"
    assert counts["dataset_scale_distribution"] == 9 and counts["mnist_pool"] == 1
    listed = subprocess.run(
        [sys.executable, "-m", "scalelearn", "runs", "--config", "config/config.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    per_experiment = {
        e: sum(r.startswith(f"{e}/") for r in listed) for e in ("e1", "e2", "e3", "e4")
    }
    assert per_experiment == {"e1": 135, "e2": 9, "e3": 81, "e4": 18}


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


# Every output of SPEC §10 items 1-8 and 10 that the CI preset asks for (figure: PDF + PNG,
# table: CSV + TeX).
CI_FIGURES = [
    "e1_isr",  # 3. E1 error vs ISR
    "e1_per_scale",  # 4. E1 error per scale
    "tolerance",  # 2. tolerance model
    "e2_method",  # 1. method figure
    "e2_scale_trajectories",  # 10. learned scales over epochs
    "e3_scale_trajectories",
    "e4_scale_trajectories",
]
CI_TABLES = [
    "e1_isr",  # 3.
    "tolerance",  # 2.
    "e2_isr_comparison",  # 5. predicted / best fixed / learned ISR
    "e2_learned",  # 6. E2 table
    "e3_learned",  # 7. E3 table
    "e4_parameterisations",  # 8. E4 table
]


def test_ci_preset_runs_end_to_end(tmp_path):
    """The whole DAG on the embedded digits: pool, datasets, 9 runs, 4 per-scale tests, every
    table and figure, and the report holding each of them with its caption."""
    workdir = copy_workflow(tmp_path / "workflow")
    # About two minutes of CPU; the generous limit only guards against a hang on a busy machine.
    result = snakemake(
        "--cores", "2", "--configfile", "config/test.yaml", cwd=workdir, timeout=1800
    )
    assert result.returncode == 0, result.stderr[-5000:]
    results = workdir / "results"
    expected = [f"figures/{s}{x}" for s in CI_FIGURES for x in (".pdf", ".png")]
    expected += [f"tables/{s}{x}" for s in CI_TABLES for x in (".csv", ".tex")]
    for name in expected:
        assert (results / name).stat().st_size > 0, name
    made = sorted(str(p.relative_to(results)) for p in results.glob("[ft][ia]*/*.*"))
    assert made == sorted(expected), "an output of the registry that the test does not expect"
    e1 = pd.read_csv(results / "aggregate/e1.csv")
    assert len(e1) == 4 and e1["test_error"].between(0, 100).all()
    assert sorted(set(e1["isr"].round(2))) == [1.5, 3.0]
    e2 = pd.read_csv(results / "aggregate/e2.csv")
    assert len(e2) == 1 and e2["isr"].iloc[0] > 1
    table = pd.read_csv(results / "tables/e1_isr.csv")
    assert set(table["width"].round(2)) == {2.0, 4.0}
    for run in e1["run_id"]:
        per_scale = pd.read_csv(results / "runs/e1" / run / "per_scale.csv")
        assert len(per_scale) == 45 and (per_scale["n"] == 10).all()
    e3 = pd.read_csv(results / "tables/e3_learned.csv")
    assert e3[["init_isr", "init_sigma_basis"]].values.tolist() == [[1.5, 1.0], [3.0, 1.0]]
    e4 = pd.read_csv(results / "tables/e4_parameterisations.csv")
    assert e4["scale_mode"].tolist() == ["direct", "ratio_squared", "single_ratio_squared"]
    # Nothing half-written is left behind.
    assert not list(results.rglob("*.tmp"))
    # A second call has nothing to do.
    again = snakemake("-n", "--configfile", "config/test.yaml", cwd=workdir)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # The report holds every figure (PNG) and table (CSV), each with its caption.
    report = snakemake("--report", "report.html", "--configfile", "config/test.yaml", cwd=workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    for name in [f"{s}.png" for s in CI_FIGURES] + [f"{s}.csv" for s in CI_TABLES]:
        assert name in html, name
    assert "best ISR 2.38 / 4.76 / 5.35" in html and "{{" not in html
