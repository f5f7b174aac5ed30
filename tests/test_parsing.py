"""Parsing needs no torch: `snakemake -n` (and `--use-conda`, whose jobs get torch from the conda
env) works from a bare Snakemake. The heavy packages are made unimportable by shadowing them with
modules that raise ImportError, first on the Snakemake process's PYTHONPATH."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "config").glob("*.yaml"))
# An overlay is given after the preset it changes (README "Presets").
WITH_OVERLAYS = [[preset] for preset in PRESETS] + [
    ["config/quick.yaml", "config/overlays/quick_one_seed.yaml"]
]
# What the jobs need but parsing must not: the job environment's packages beyond Snakemake's own.
HEAVY = (
    "torch",
    "torchvision",
    "pytorch_lightning",
    "lightning",
    "scipy",
    "matplotlib",
    "mlxtend",
    "numba",
)


@pytest.fixture(scope="module")
def no_heavy_packages(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("no_torch")
    for name in HEAVY:
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not installed (test_parsing shadows it)')\n"
        )
    return folder


def _snakemake(shadow: Path, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(shadow), "PATH": path or os.environ["PATH"]}
    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent))
    return subprocess.run(
        [snakemake or "snakemake", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_shadow_works(no_heavy_packages):
    env = {**os.environ, "PYTHONPATH": str(no_heavy_packages)}
    result = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and "torch is not installed" in result.stderr


@pytest.mark.parametrize("files", WITH_OVERLAYS, ids=" ".join)
def test_dry_run_parses_without_torch(no_heavy_packages, files):
    result = _snakemake(no_heavy_packages, "-n", "--quiet", "rules", "--configfile", *files)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train" in result.stdout + result.stderr


# Answers the three questions Snakemake asks conda before a dry run; a dry run builds no env.
FAKE_CONDA = """#!/bin/sh
case "$*" in
  "--version") echo "conda 24.11.3" ;;
  "info --json") echo '{"conda_prefix": "/nonexistent/conda", "platform": "linux-64"}' ;;
  "config --get channel_priority --json") echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "fake conda: unexpected call: $*" >&2; exit 3 ;;
esac
"""


def test_use_conda_dry_run_parses_without_torch(no_heavy_packages, tmp_path):
    """The README's `snakemake --use-conda` from a bare Snakemake: the Snakefile, the config
    validation and the DAG need no torch (conda itself, faked here, is only asked questions)."""
    conda = tmp_path / "bin" / "conda"
    conda.parent.mkdir()
    conda.write_text(FAKE_CONDA)
    conda.chmod(0o755)
    env_path = f"{conda.parent}{os.pathsep}{os.environ['PATH']}"
    result = _snakemake(
        no_heavy_packages,
        "-n",
        "--use-conda",
        "--configfile",
        "config/test.yaml",
        path=env_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train" in result.stdout + result.stderr
