"""SLURM in CI: the test preset through `snakemake --workflow-profile profiles/slurm` on a real
single-node Slurm cluster started here, against a local run of the same preset.

Needs root and Debian's slurm-wlm + munge (installed with apt-get when missing) and
snakemake-executor-plugin-slurm (the `dev` extra). Not part of `make test`: run it with
`make test-slurm` (= `pytest -m slurm tests/test_slurm.py`; .ci/run does). Takes about 4 min here.

The cluster is private to the test: its own munge key and socket, its own ports, config, state
and log folder under a fresh temporary folder, accounting off (job states from `squeue`), one
node (this machine) in two partitions `cpu` and `gpu` (no GPUs: the preset trains on the CPU with
gpu: 0). The daemons are started as children of the test and stopped by it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from scalelearn import experiments

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "srun", "scancel")
PRESET = "config/test.yaml"
# The flags README "Running on a cluster" gives for a cluster without accounting, with the first
# status poll early (the preset's jobs take seconds).
SLURM_FLAGS = (
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "5",
)


def _which(name: str) -> str | None:
    return shutil.which(name, path=SBIN_PATH)


def _install_slurm() -> None:
    """Debian's slurm-wlm and munge, when a daemon or client is missing."""
    if all(_which(name) for name in DAEMONS + CLIENTS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("SLURM is not installed and cannot be: needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "slurm-wlm", "munge"],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _memory_mb() -> int:
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"MemTotal:\s+(\d+) kB", meminfo)[1]) // 1024


def _slurm_conf(folder: Path, node: str, ports: list[int]) -> str:
    return f"""\
ClusterName=sltest{os.getpid()}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.sock
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/log/slurmctld.log
SlurmdLogFile={folder}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={_memory_mb() * 9 // 10} \
State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
"""


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0:
        pytest.fail("the SLURM test starts slurmd, which needs root")
    pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[dev]'")
    _install_slurm()
    # A short path: the munge socket path must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="scalelearn-slurm-"))
    folder.chmod(0o700)
    for name in ("munge", "state", "spool", "log", "bin"):
        (folder / name).mkdir(mode=0o700)
    key = folder / "munge/munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(_slurm_conf(folder, node, _free_ports(2)))
    # The SLURM jobstep plugin drops SLURM_* variables (SLURM_CONF too) before its nested srun;
    # a real cluster has /etc/slurm/slurm.conf, this one points srun at its config instead.
    srun = folder / "bin/srun"
    srun.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_which("srun")} "$@"\n')
    srun.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(SLURM_CONF=str(conf))
    env["PATH"] = os.pathsep.join([str(folder / "bin"), str(BIN), SBIN_PATH])
    processes, logs = [], []
    try:
        munged = [_which("munged"), "--foreground", "--force", f"--key-file={key}"]
        munged += [f"--socket={folder}/munge/munge.sock", f"--pid-file={folder}/munge/pid"]
        munged += [f"--log-file={folder}/log/munged.log", f"--seed-file={folder}/munge/seed"]
        for command in (
            munged,
            [_which("slurmctld"), "-D", "-f", str(conf)],
            [_which("slurmd"), "-D", "-f", str(conf), "-N", node],
        ):
            logs.append(open(folder / "log" / f"{Path(command[0]).name}.out", "w"))
            processes.append(
                subprocess.Popen(command, env=env, stdout=logs[-1], stderr=subprocess.STDOUT)
            )
            time.sleep(1)
        deadline = time.monotonic() + 90
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True
            ).stdout
            if "idle" in state:
                break
            time.sleep(1)
        else:
            text = "\n".join(p.read_text()[-1500:] for p in (folder / "log").iterdir())
            pytest.fail(f"the SLURM node did not become idle ({state!r}):\n{text}")
        yield SimpleNamespace(folder=folder, env=env)
    finally:
        subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True)
        for process in reversed(processes):
            _stop(process)
        for log in logs:
            log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _copy_workflow(target: Path) -> Path:
    ignore = shutil.ignore_patterns(".venv", ".git", "results", ".snakemake", "*.egg-info")
    shutil.copytree(REPO, target, ignore=ignore)
    return target


def _snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """Everything but the wall-clock times, rows in a fixed order."""
    frame = frame.drop(columns=[c for c in frame.columns if "time" in c])
    return frame.sort_values(list(frame.columns[:2])).reset_index(drop=True)


def test_test_preset_on_slurm_equals_a_local_run(cluster, tmp_path):
    local_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    local_env["PATH"] = f"{BIN}{os.pathsep}{local_env['PATH']}"
    local = _copy_workflow(tmp_path / "local")
    started = time.monotonic()
    result = _snakemake(local, local_env, "--cores", "2", "--configfile", PRESET)
    assert result.returncode == 0, result.stderr[-4000:]
    local_s = time.monotonic() - started

    on_slurm = _copy_workflow(tmp_path / "slurm")
    started = time.monotonic()
    result = _snakemake(
        on_slurm,
        cluster.env,
        "--workflow-profile",
        "profiles/slurm",
        "--configfile",
        PRESET,
        *SLURM_FLAGS,
    )
    slurm_s = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    print(f"local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s")

    # Every training job was a SLURM job: the plugin reports its id, and the job itself logged
    # the same id (`scalelearn with-gpu` prints SLURM_JOB_ID into the rule's log).
    submitted = re.findall(
        r"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", output
    )
    by_rule: dict[str, set[str]] = {}
    for job_id, rule in submitted:
        by_rule.setdefault(rule, set()).add(job_id)
    runs = experiments.all_runs(experiments.load_config(REPO / PRESET))
    run_list = [run for runs_of in runs.values() for run in runs_of]
    assert len(by_rule.get("train", ())) == len(run_list), by_rule
    # The GPU jobs (training, the per-scale test) logged the id SLURM gave them.
    for rule in ("train", "evaluate"):
        logged = set()
        for log in sorted((on_slurm / "results/logs" / rule).rglob("*.log")):
            found = re.search(r"scalelearn with-gpu: SLURM job (\d+)", log.read_text())
            assert found, f"{log} names no SLURM job"
            logged.add(found[1])
        assert logged == by_rule.get(rule, set()), rule
    # Only datasets and GPU jobs went to SLURM; the small rules ran on the submit host.
    assert set(by_rule) <= {
        "dataset_scale_distribution",
        "dataset_mnist_scale",
        "train",
        "evaluate",
    }
    queue = subprocess.run(["squeue", "-h"], env=cluster.env, capture_output=True, text=True)
    assert queue.stdout.strip() == "", "jobs left in the queue"

    # The outputs equal the local run's (same seeds, same thread count: the same numbers).
    for name in runs:
        csv = f"results/aggregate/{name}.csv"
        pd.testing.assert_frame_equal(
            _comparable(pd.read_csv(on_slurm / csv)), _comparable(pd.read_csv(local / csv))
        )
    tables = sorted(p.relative_to(local) for p in (local / "results/tables").glob("*.csv"))
    assert tables
    for table in tables:
        pd.testing.assert_frame_equal(pd.read_csv(on_slurm / table), pd.read_csv(local / table))
    datasets = sorted(p.relative_to(local) for p in (local / "results/data").rglob("seed*.npz"))
    assert len(datasets) == len({run.dataset.path for run in run_list})
    for dataset in datasets:
        with np.load(local / dataset) as ours, np.load(on_slurm / dataset) as theirs:
            assert sorted(ours.files) == sorted(theirs.files)
            for array in ours.files:
                np.testing.assert_array_equal(ours[array], theirs[array], err_msg=str(dataset))
