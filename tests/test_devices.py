"""Every GPU of a box: which GPU a training job gets (scalelearn.devices), tested without a GPU.

The GPUs are faked with CUDA_VISIBLE_DEVICES (the variable CUDA itself reads); the slots are real
flocks, which conflict between two open() of one file even inside one process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scalelearn import devices
from scalelearn.errors import ScalelearnError

REPO = Path(__file__).resolve().parents[1]


def test_visible_gpus_follow_cuda_visible_devices():
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == ["0", "1", "2", "3"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "2, 5"}) == ["2", "5"]
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    # CUDA stops at the first invalid entry.
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ["1"]
    uuid = "GPU-8e2c5d0a-1b2c-3d4e-5f60-718293a4b5c6"
    assert devices.visible_gpus({"CUDA_VISIBLE_DEVICES": uuid}) == [uuid]


def test_visible_gpus_without_variable_ask_nvidia_smi(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nprintf '0\\n1\\n2\\n'\n")
    fake.chmod(0o755)
    assert devices.visible_gpus({}, nvidia_smi=str(fake)) == ["0", "1", "2"]
    assert devices.visible_gpus({}, nvidia_smi=None) == []
    broken = tmp_path / "broken-smi"
    broken.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2; exit 9\n")
    broken.chmod(0o755)
    assert devices.visible_gpus({}, nvidia_smi=str(broken)) == []


def test_one_job_per_gpu_each_on_its_own_device(tmp_path):
    gpus = ["0", "1", "2", "3"]
    held = [devices.try_claim(tmp_path, gpus, 1) for _ in gpus]
    assert [slot.gpu for slot in held] == gpus  # four jobs, four different GPUs
    assert devices.try_claim(tmp_path, gpus, 1) is None  # a fifth waits
    held[2].release()  # the job on GPU 2 ends
    again = devices.try_claim(tmp_path, gpus, 1)
    assert again is not None and again.gpu == "2"


def test_several_jobs_per_gpu_spread_before_sharing(tmp_path):
    held = [devices.try_claim(tmp_path, ["0", "1"], 2) for _ in range(4)]
    assert [(s.gpu, s.slot) for s in held] == [("0", 0), ("1", 0), ("0", 1), ("1", 1)]
    assert devices.try_claim(tmp_path, ["0", "1"], 2) is None


def test_claim_waits_then_names_the_fix(tmp_path):
    devices.try_claim(tmp_path, ["0"], 1)
    with pytest.raises(ScalelearnError, match="--resources gpu=N"):
        devices.claim(tmp_path, ["0"], 1, wait_s=0.2, poll_s=0.05)
    with pytest.raises(ScalelearnError, match="no GPU"):
        devices.claim(tmp_path, [], 1)


def test_gpu_slot_count():
    assert devices.gpu_slot_count(1, ["0", "1", "2", "3"]) == 4
    assert devices.gpu_slot_count(3, ["0", "1"]) == 6
    assert devices.gpu_slot_count(2, []) == 0


def _with_gpu(tmp_path, env_extra, *program, gpus="1"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(env_extra)
    command = [sys.executable, "-m", "scalelearn", "with-gpu", "--gpus", gpus, "--wait", "0"]
    command += ["--lock-dir", str(tmp_path), "--", *program]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)


PRINT_DEVICES = (sys.executable, "-c", "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])")


def test_with_gpu_runs_the_program_on_a_free_gpu_and_holds_it(tmp_path):
    """GPU 3 is busy (held here): the job gets 5; while it runs, its slot is held."""
    busy = devices.try_claim(tmp_path, ["3"], 1)
    result = _with_gpu(tmp_path, {"CUDA_VISIBLE_DEVICES": "3,5"}, *PRINT_DEVICES)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "5"
    assert "GPU 5 (slot 0 of 1" in result.stderr
    busy.release()
    # The program inherits the lock: a second claim fails while it runs.
    holder = subprocess.Popen(
        [sys.executable, "-m", "scalelearn", "with-gpu", "--lock-dir", str(tmp_path), "--"]
        + [sys.executable, "-c", "import sys; sys.stdin.read()"],
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "7"},
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "GPU 7" in holder.stderr.readline()  # claimed, now running the program
        assert devices.try_claim(tmp_path, ["7"], 1) is None
    finally:
        holder.communicate("", timeout=60)
    assert devices.try_claim(tmp_path, ["7"], 1) is not None  # freed when it ended


def test_with_gpu_leaves_slurm_and_cpu_jobs_alone(tmp_path):
    slurm = _with_gpu(
        tmp_path, {"CUDA_VISIBLE_DEVICES": "1", "SLURM_JOB_ID": "4242"}, *PRINT_DEVICES
    )
    assert slurm.returncode == 0 and slurm.stdout.strip() == "1"
    assert "SLURM job 4242" in slurm.stderr
    cpu = _with_gpu(tmp_path, {"CUDA_VISIBLE_DEVICES": "0,1"}, *PRINT_DEVICES, gpus="0")
    assert cpu.returncode == 0 and cpu.stdout.strip() == "0,1"
    assert not list(tmp_path.glob("*.lock"))  # nothing claimed


def test_with_gpu_busy_is_a_one_line_error(tmp_path):
    devices.try_claim(tmp_path, ["0"], 1)
    result = _with_gpu(tmp_path, {"CUDA_VISIBLE_DEVICES": "0"}, *PRINT_DEVICES)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("scalelearn with-gpu: error: all 1 GPU slots")


def test_workflow_runs_one_training_job_per_gpu(tmp_path):
    """`snakemake --cores 4` with two (fake) GPUs and three training runs: the Snakefile offers
    gpu=2, so two training jobs run at once, each on a GPU no running job holds (none waited)."""
    workdir = tmp_path / "workflow"
    ignore = shutil.ignore_patterns(".venv", ".git", "results", ".snakemake")
    shutil.copytree(REPO, workdir, ignore=ignore)
    config = yaml.safe_load((REPO / "config/test.yaml").read_text())
    config["resources"]["train"]["gpu"] = 1  # training still on the CPU: accelerator cpu
    # Three training runs on one dataset: one more than the two GPUs.
    config["datasets"]["scale_distribution"]["widths_octaves"] = [1.0]
    config["experiments"] = {"e1": config["experiments"]["e1"]}
    config["experiments"]["e1"]["grid"] = {"isr": [1.5, 2.0, 3.0]}
    config["experiments"]["e1"]["analyses"] = []
    (workdir / "gpus.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(CUDA_VISIBLE_DEVICES="0,1", TMPDIR=str(tmp_path))  # TMPDIR: our own lock folder
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(
        ["snakemake", "--cores", "4", "--configfile", "gpus.yaml"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    logs = sorted((workdir / "results/logs/train/e1").glob("*.log"))
    assert len(logs) == 3
    claims = [
        re.search(r"with-gpu: GPU (\d) \(slot 0 of 1, claimed after ([\d.]+) s", p.read_text())
        for p in logs
    ]
    assert all(claims), [p.read_text()[:300] for p in logs]
    assert {c[1] for c in claims} == {"0", "1"}
    # --cores 4 would start all three (1 thread each); a third job at once would have found both
    # GPUs held and waited at least one poll (1 s).
    assert all(float(c[2]) == 0.0 for c in claims), "a job waited: more jobs than GPUs ran"
    assert len(pd.read_csv(workdir / "results/aggregate/e1.csv")) == 3
