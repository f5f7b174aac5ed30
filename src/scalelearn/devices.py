"""Every GPU of a box used: a training job picks a free GPU by itself.

Snakemake limits how many training jobs run at once with the `gpu` resource (the Snakefile sizes
it as visible GPUs x `resources.train.jobs_per_gpu`); this module decides *which* GPU each job
gets. The GPUs are divided into slots (`jobs_per_gpu` per GPU) and a job holds one slot as an
exclusive `flock` on a file `gpu{id}.slot{k}.lock` in a lock folder shared by the machine's jobs.
Slots are taken slot 0 of every GPU first, then slot 1, ..., so jobs spread over the GPUs before
sharing one. The kernel drops the lock when the job's process ends, however it ends (no stale
locks after a crash or `kill -9`).

`scalelearn with-gpu -- PROGRAM ARGS...` claims a slot, sets CUDA_VISIBLE_DEVICES to that GPU
only and replaces itself with PROGRAM (like `env` or `nice`; the lock's file descriptor is
inherited, so the slot stays held until the program ends). Inside a SLURM job the scheduler has
already chosen the devices, so nothing is claimed. This module imports no torch: the GPUs are
counted from CUDA_VISIBLE_DEVICES or `nvidia-smi`, so the Snakefile can size the resource while
parsing.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from scalelearn.errors import ScalelearnError


def default_lock_dir() -> Path:
    """One folder per user and machine, so two workflows on one box share the GPUs fairly."""
    return Path(tempfile.gettempdir()) / f"scalelearn-gpu-slots-{os.getuid()}"


def visible_gpus(
    environ: Mapping[str, str] | None = None, nvidia_smi: str | None = ""
) -> list[str]:
    """The GPU ids a job may use, as CUDA_VISIBLE_DEVICES entries (indices or UUIDs).

    CUDA_VISIBLE_DEVICES, when set, is the list (empty or "-1": no GPU; CUDA ignores everything
    from the first invalid entry, "-1" included). Otherwise the indices `nvidia-smi` lists; no
    nvidia-smi (or it fails): no GPU. `nvidia_smi=""` looks it up on PATH, None skips it.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("CUDA_VISIBLE_DEVICES")
    if value is not None:
        gpus = []
        for entry in value.split(","):
            entry = entry.strip()
            if not entry or entry.startswith("-"):
                break
            gpus.append(entry)
        return gpus
    program = shutil.which("nvidia-smi") if nvidia_smi == "" else nvidia_smi
    if not program:
        return []
    try:
        listed = subprocess.run(
            [program, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip().isdigit()]


def gpu_slot_count(jobs_per_gpu: int, gpus: list[str] | None = None) -> int:
    """How many GPU training jobs may run at once on this machine."""
    gpus = visible_gpus() if gpus is None else gpus
    return len(gpus) * jobs_per_gpu


@dataclass
class GpuSlot:
    """A held slot: GPU `gpu`, slot `slot` of it; the lock lives as long as `fd` is open."""

    gpu: str
    slot: int
    path: Path
    fd: int
    waited_s: float = 0.0

    def release(self) -> None:
        os.close(self.fd)


def _lock_name(gpu: str, slot: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)  # UUIDs (GPU-xxxx, MIG-xxxx) are file-safe
    return f"gpu{safe}.slot{slot}.lock"


def try_claim(lock_dir: Path, gpus: list[str], jobs_per_gpu: int) -> GpuSlot | None:
    """The first free slot, slot 0 of every GPU before slot 1; None when all are held."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(jobs_per_gpu):
        for gpu in gpus:
            path = lock_dir / _lock_name(gpu, slot)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())  # who holds it, for a curious user
            return GpuSlot(gpu, slot, path, fd)
    return None


def claim(
    lock_dir: Path, gpus: list[str], jobs_per_gpu: int, wait_s: float = 600, poll_s: float = 1
) -> GpuSlot:
    """A free slot, waiting up to `wait_s` seconds for one (Snakemake's `gpu` resource normally
    leaves one free; a wait means another workflow or a hand-started job holds the GPUs)."""
    if not gpus:
        raise ScalelearnError("no GPU to claim; CUDA_VISIBLE_DEVICES / nvidia-smi list none")
    if jobs_per_gpu < 1:
        raise ScalelearnError(f"--jobs-per-gpu must be >= 1, got {jobs_per_gpu}")
    start = time.monotonic()
    while True:
        held = try_claim(lock_dir, gpus, jobs_per_gpu)
        if held is not None:
            held.waited_s = time.monotonic() - start
            return held
        if time.monotonic() - start >= wait_s:
            raise ScalelearnError(
                f"all {len(gpus) * jobs_per_gpu} GPU slots in {lock_dir} stayed busy for "
                f"{wait_s:g} s (GPUs {', '.join(gpus)}, {jobs_per_gpu} job(s) each); run fewer "
                "jobs at once (`--resources gpu=N`) or raise resources.train.jobs_per_gpu"
            )
        time.sleep(poll_s)


# --------------------------------------------------------------------------------------------
# command line


def _with_gpu_command(args: argparse.Namespace) -> None:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ScalelearnError(
            "with-gpu needs a program to run: scalelearn with-gpu -- python -m scalelearn train ..."
        )
    if os.environ.get("SLURM_JOB_ID"):
        note = (
            f"SLURM job {os.environ['SLURM_JOB_ID']}: devices chosen by SLURM "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})"
        )
    elif args.gpus == 0:
        note = "the job asks for no GPU (resources.train.gpu: 0)"
    else:
        gpus = visible_gpus()
        if not gpus:
            note = "no GPU visible; the job runs where its accelerator setting puts it"
        else:
            held = claim(Path(args.lock_dir), gpus, args.jobs_per_gpu, wait_s=args.wait)
            os.set_inheritable(held.fd, True)  # kept open through exec: the slot stays held
            os.environ["CUDA_VISIBLE_DEVICES"] = held.gpu
            note = (
                f"GPU {held.gpu} (slot {held.slot} of {args.jobs_per_gpu}, claimed after "
                f"{held.waited_s:.1f} s; lock {held.path}); CUDA_VISIBLE_DEVICES={held.gpu}"
            )
    print(f"scalelearn with-gpu: {note}", file=sys.stderr, flush=True)
    try:
        os.execvp(command[0], command)
    except OSError as error:
        raise ScalelearnError(f"cannot run {command[0]!r}: {error}") from None


def _gpus_command(args: argparse.Namespace) -> None:
    gpus = visible_gpus()
    print(f"visible GPUs: {', '.join(gpus) if gpus else 'none'}")
    print(f"GPU training jobs at once: {gpu_slot_count(args.jobs_per_gpu, gpus)}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "with-gpu",
        help="run a verb on a free GPU of this machine (sets CUDA_VISIBLE_DEVICES)",
        description="Claim a free GPU slot (an flock in --lock-dir), set CUDA_VISIBLE_DEVICES to "
        "that GPU and run PROGRAM in this process, holding the slot until it ends. Inside a "
        "SLURM job, or with --gpus 0, or when no GPU is visible, it runs PROGRAM unchanged.",
    )
    parser.add_argument(
        "--gpus", type=int, default=1, help="GPUs the job asked for; 0 claims none (default 1)"
    )
    parser.add_argument(
        "--jobs-per-gpu", type=int, default=1, help="jobs sharing one GPU (default %(default)s)"
    )
    parser.add_argument(
        "--lock-dir", default=str(default_lock_dir()), help="slot locks (default %(default)s)"
    )
    parser.add_argument(
        "--wait", type=float, default=600, help="seconds to wait for a free slot (default 600)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM ARGS...")
    parser.set_defaults(func=_with_gpu_command)

    listing = subparsers.add_parser(
        "gpus",
        help="list the GPUs training jobs will use",
        description="The GPUs `with-gpu` chooses from (CUDA_VISIBLE_DEVICES, else nvidia-smi) "
        "and how many GPU training jobs `snakemake --cores all` runs at once.",
    )
    listing.add_argument("--jobs-per-gpu", type=int, default=1)
    listing.set_defaults(func=_gpus_command)
