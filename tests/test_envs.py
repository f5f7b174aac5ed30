"""The conda environment of `--use-conda` jobs (envs/scalelearn.yaml) builds the package with the
dependencies of pyproject.toml. No conda channel is reachable here, so the two lists are held
equal, and pip's part (the editable install of the workflow folder) is run as a dry run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
ENV_FILES = sorted((REPO / "envs").glob("*.yaml"))
# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch"}


def _conda_specs(env: dict) -> dict[str, SpecifierSet]:
    specs = {}
    for entry in env["dependencies"]:
        if isinstance(entry, str):
            name, spec = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", entry).groups()
            specs[name.lower()] = SpecifierSet(spec.replace(" ", ""))
    return specs


def _project():
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_there_is_an_env_file():
    assert ENV_FILES, "envs/*.yaml"


def test_env_dependencies_equal_pyproject():
    project = _project()
    wanted = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        wanted[CONDA_NAME.get(requirement.name, requirement.name).lower()] = requirement.specifier
    wanted["python"] = SpecifierSet(project["requires-python"])
    wanted["pip"] = SpecifierSet()  # installs the package itself
    for path in ENV_FILES:
        listed = _conda_specs(yaml.safe_load(path.read_text()))
        assert listed == wanted, (
            f"{path.name} and pyproject.toml differ: only in the env "
            f"{ {k: str(v) for k, v in listed.items() if wanted.get(k) != v} }, only in "
            f"pyproject { ({k: str(v) for k, v in wanted.items() if listed.get(k) != v}) }"
        )


def test_env_uses_conda_forge_only_and_installs_the_package():
    for path in ENV_FILES:
        env = yaml.safe_load(path.read_text())
        assert env["channels"] == ["conda-forge", "nodefaults"], path.name
        pip = [entry["pip"] for entry in env["dependencies"] if isinstance(entry, dict)]
        assert pip == [['-e "${SCALELEARN_WORKFLOW_DIR}"']], path.name


def test_every_rule_uses_an_env_file():
    rules = [REPO / "Snakefile", *sorted((REPO / "workflow/rules").glob("*.smk"))]
    text = "\n".join(path.read_text() for path in rules)
    count_shell = len(re.findall(r"^\s+shell:", text, re.MULTILINE))
    envs = re.findall(r'^\s+conda:\s*\n\s+"([^"]+)"', text, re.MULTILINE)
    assert len(envs) == count_shell, "every shell rule runs in a conda env under --use-conda"
    for env in envs:
        assert (REPO / "workflow/rules" / env).resolve() in [p.resolve() for p in ENV_FILES]


def test_pip_part_installs_this_workflow_folder(tmp_path):
    """What conda's pip step runs: `pip install -r` on the env's pip lines, with the variable the
    Snakefile sets. A dry run in a copy of the package, with no index: pip expands the variable
    and finds the project `scalelearn` at that folder."""
    workflow = tmp_path / "some workflow folder"
    workflow.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, workflow / name)
    shutil.copytree(REPO / "src", workflow / "src", ignore=shutil.ignore_patterns("__pycache__"))
    env = yaml.safe_load(ENV_FILES[0].read_text())
    pip_lines = next(e["pip"] for e in env["dependencies"] if isinstance(e, dict))
    requirements = tmp_path / "condaenv.requirements.txt"
    requirements.write_text("\n".join(pip_lines) + "\n")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps"]
    command += ["--no-build-isolation", "--no-index", "--quiet", "--report", "-"]
    command += ["-r", str(requirements)]
    result = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, "SCALELEARN_WORKFLOW_DIR": str(workflow)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    installs = json.loads(result.stdout)["install"]
    assert [item["metadata"]["name"] for item in installs] == ["scalelearn"]
    assert installs[0]["download_info"]["url"] == workflow.as_uri()
    assert installs[0]["download_info"]["dir_info"] == {"editable": True}


def test_snakefile_sets_the_variable_the_env_needs():
    text = (REPO / "Snakefile").read_text()
    assert "SCALELEARN_WORKFLOW_DIR=str(Path(workflow.basedir).resolve())" in text


def test_license_file_matches_pyproject():
    license_text = (REPO / "LICENSE").read_text()
    assert _project()["license"] == {"text": "MIT"}
    assert license_text.startswith("MIT License")
    assert "Permission is hereby granted, free of charge" in license_text
