"""Tests of the Snakemake workflow: the paper grid's DAG, config errors before any job, the CI
preset run end to end (data -> training -> per-scale test -> aggregate -> every
table and figure -> report) after a kill and `--unlock`, and the same command recovering from
failures (issue 6)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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
    assert counts["train"] == 135 + 9 + 81 + 18 + 60 + 24, "E1-E4; E5 60 + 24 baselines (SPEC §8)"
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


@pytest.mark.parametrize("overlay", [None, "config/overlays/quick_one_seed.yaml"])
def test_quick_preset_runs_e1_on_two_seeds_and_the_overlay_on_one(overlay):
    """config/quick.yaml: E1 (and its per-scale test) on seeds 0 and 1, E2-E4 on seed 0 only;
    config/overlays/quick_one_seed.yaml after it: E1 on seed 0 too, everything else the same."""
    files = ("config/quick.yaml",) + ((overlay,) if overlay else ())
    result = snakemake("-n", "--configfile", *files, "--forceall")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    runs = set(re.findall(r"results/runs/(\w+)/([^/\s]+)/summary\.json", output))
    seeds = {}
    for experiment, run_id in runs:
        seeds.setdefault(experiment, []).append(run_id.rsplit("_", 1)[1])
    e1_seeds = [0] if overlay else [0, 1]
    assert sorted(seeds["e1"]) == [f"seed{k}" for k in e1_seeds for _ in range(15)]
    for experiment, count in (("e2", 3), ("e3", 4), ("e4", 2)):
        assert seeds[experiment] == ["seed0"] * count, experiment
    assert len(seeds["e5"]) == 10 and len(seeds["e5_baselines"]) == 4
    counts = job_counts(output)
    assert counts["evaluate"] == 15 * len(e1_seeds)
    assert counts["dataset_scale_distribution"] == 3 * len(e1_seeds)


def test_bad_config_stops_before_any_job(tmp_path):
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["train"]["epochs"] = 0
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--configfile", str(bad))
    assert result.returncode != 0
    message = "config key train.epochs: invalid value 0; allowed: a value >= 1"
    assert message in result.stdout + result.stderr


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
    "e5_table",  # 9. E5 table
]


def test_configfile_replaces_the_default_config_without_the_profile(tmp_path):
    """Issue case 10: a --configfile with one experiment must not gain config.yaml's e1 and e2."""
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["experiments"] = {"solo": config["experiments"]["e1"]}
    path = tmp_path / "solo.yaml"
    path.write_text(yaml.safe_dump(config))
    for profile in (["--workflow-profile", "none"], []):
        result = snakemake("-n", *profile, "--configfile", str(path), "--quiet", "rules")
        assert result.returncode == 0, result.stderr
        counts = job_counts(result.stdout + result.stderr)
        assert counts["train"] == 4 and counts["aggregate"] == 1, (profile, counts)


def run_killed_then_unlocked(workdir: Path) -> subprocess.CompletedProcess:
    """Start the CI preset, SIGKILL Snakemake and its jobs once training has started (a kill
    leaves Snakemake's lock behind), check that the same command then names the lock, and
    finish with `snakemake --unlock` and the same command, as README "Troubleshooting" says."""
    command = [SNAKEMAKE, "--cores", "2", "--configfile", "config/test.yaml"]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    process = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not list((workdir / "results/logs").glob("train/*/*.log")) and time.time() < deadline:
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    locked = snakemake(*command[1:], cwd=workdir)
    assert locked.returncode != 0 and "LockException" in locked.stdout + locked.stderr
    unlock = snakemake("--unlock", "--configfile", "config/test.yaml", cwd=workdir)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    return snakemake(*command[1:], cwd=workdir)


@pytest.fixture(scope="module")
def finished_preset(tmp_path_factory):
    workdir = copy_workflow(tmp_path_factory.mktemp("preset") / "workflow")
    result = run_killed_then_unlocked(workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return workdir


def test_ci_preset_runs_end_to_end(finished_preset):
    """The whole DAG on the embedded digits: pool, datasets, 12 runs, 4 per-scale tests, every
    table and figure, and the report holding each of them with its caption, finished by the
    same command after a kill and `--unlock`."""
    workdir = finished_preset
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
    assert set(table["width"].round(2)) == {1.41, 2.0}
    for run in e1["run_id"]:
        per_scale = pd.read_csv(results / "runs/e1" / run / "per_scale.csv")
        assert len(per_scale) == 45 and (per_scale["n"] == 10).all()
    e3 = pd.read_csv(results / "tables/e3_learned.csv")
    assert e3[["init_isr", "init_sigma_basis"]].values.tolist() == [[1.5, 1.0], [3.0, 1.0]]
    e4 = pd.read_csv(results / "tables/e4_parameterisations.csv")
    assert e4["scale_mode"].tolist() == ["direct", "ratio_squared", "single_ratio_squared"]
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
    # The report holds every figure (PNG) and table (CSV), each with its caption.
    report = snakemake("--report", "report.html", "--configfile", "config/test.yaml", cwd=workdir)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (workdir / "report.html").read_text()
    for name in [f"{s}.png" for s in CI_FIGURES] + [f"{s}.csv" for s in CI_TABLES]:
        assert name in html, name
    assert "best ISR 2.38 / 4.76 / 5.35" in html and "{{" not in html


@pytest.mark.slow  # reruns parts of the preset four times: make test-slow
def test_same_command_recovers_from_failures(finished_preset, tmp_path):
    """Issue cases 2, 3, 5, 1 in the pipeline: what is missing is rebuilt; a replaced dataset
    stops its runs and removes the tables they fed, and after deleting it as the message says
    the same command rebuilds everything; a diverged run (changed config) shows in the tables."""
    workdir = tmp_path / "workflow"
    shutil.copytree(finished_preset, workdir, symlinks=True)
    results = workdir / "results"
    data = results / "data/scale_distribution"
    e1_table = results / "tables/e1_isr.csv"
    before = pd.read_csv(e1_table)
    run = lambda *args: snakemake("--cores", "2", "--configfile", *args, cwd=workdir)  # noqa: E731

    # A deleted dataset and a deleted run summary are made again by the same command.
    digest = (data / "b2/seed0.json").read_text()
    (data / "b2/seed0.npz").unlink()
    summary = results / "runs/e1/b1.41_isr3_seed0/summary.json"
    summary.unlink()
    result = run("config/test.yaml")
    assert result.returncode == 0, result.stderr[-5000:]
    assert (data / "b2/seed0.npz").exists() and summary.exists()
    assert (data / "b2/seed0.json").read_text() == digest, "regenerated bit for bit"
    pd.testing.assert_frame_equal(pd.read_csv(e1_table), before)

    # Another dataset's file copied over b2 (issue case 3): its runs stop, the tables go.
    shutil.copy(data / "b1.41/seed0.npz", data / "b2/seed0.npz")
    result = run("config/test.yaml")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "does not match its manifest" in output and "run snakemake again" in output
    assert not e1_table.exists() and not (results / "tables/e2_learned.csv").exists()
    (data / "b2/seed0.npz").unlink()  # what the message says to do
    result = run("config/test.yaml")
    assert result.returncode == 0, result.stderr[-5000:]
    pd.testing.assert_frame_equal(pd.read_csv(e1_table), before)

    # A changed config trains afresh; this one blows up (lr 1e6): a visible failed run.
    config = yaml.safe_load((workdir / "config/test.yaml").read_text())
    config["experiments"]["e2"]["train"] = {"lr": 1.0e6}
    (workdir / "blowup.yaml").write_text(yaml.safe_dump(config))
    result = run("blowup.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "e2/b2_seed0: diverged" in output
    log = (results / "logs/train/e2/b2_seed0.log").read_text()
    assert "starting fresh" in log and "DIVERGED" in log
    e2 = pd.read_csv(results / "aggregate/e2.csv")
    assert e2["status"].tolist() == ["diverged"]
    learned = pd.read_csv(results / "tables/e2_learned.csv")
    assert learned[["n_runs", "n_failed"]].iloc[0].tolist() == [0, 1]


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


def test_finished_preset_tables_agree_with_run_summaries(finished_preset):
    """Every cell of the E1 and E2 tables recomputed from the runs' summary.json files."""
    e1 = run_summaries(finished_preset, "e1")
    expected = (
        e1.assign(width=per_width(e1, "grid_width"), isr=e1["grid_isr"])
        .groupby(["width", "isr"])["test_error"]
        .agg(["mean", "std", "count"])
        .reset_index()
    )
    table = pd.read_csv(finished_preset / "results/tables/e1_isr.csv")
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

    e2 = run_summaries(finished_preset, "e2").assign(width=lambda f: per_width(f, "grid_width"))
    learned = pd.read_csv(finished_preset / "results/tables/e2_learned.csv")
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
