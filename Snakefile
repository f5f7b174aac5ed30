"""scalelearn: Scale Learning in Scale-Equivariant Convolutional Networks (VISAPP 2024), as a
Snakemake pipeline: MNIST pool -> datasets -> training runs -> aggregate -> tables and figures.

Every rule is a thin shell call of one `scalelearn` verb, so each step can be run by hand; the
logic (config validation, grid expansion, training, analysis) lives in the package in src/.

    snakemake -n                                  # the full paper grid (config/config.yaml)
    snakemake --cores all --configfile config/quick.yaml
"""

import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version
from snakemake_interface_executor_plugins.settings import DeploymentMethod

min_version("9.0")

# Parsing needs only Snakemake: the config validation and grid expansion below import the light
# part of the package (scalelearn.settings, scalelearn.experiments: PyYAML and jsonschema, both
# Snakemake dependencies) from src/, never torch.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)

# Every job calls the package's command line, `scalelearn VERB ...`, a shell function of the
# prefix. Under --use-conda it is the conda env's python, and the env has the package installed
# (envs/scalelearn.yaml: `pip install -e ${SCALELEARN_WORKFLOW_DIR}`, which conda's pip step
# expands from this variable). Otherwise it is the Python that runs Snakemake (its environment
# has every dependency, activated or not) with src/ on PYTHONPATH, so a checkout runs its own
# code without an install.
os.environ.update(SCALELEARN_WORKFLOW_DIR=str(Path(workflow.basedir).resolve()))
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
# A prefix replaces Snakemake's default bash strict mode, so it is restated; the prefix is
# formatted like a shell command, hence the doubled braces.
# $SCALELEARN_PYTHON is that python, for commands that wrap a verb (scalelearn with-gpu).
if USE_CONDA:
    shell.prefix(
        "set -euo pipefail; SCALELEARN_PYTHON=python; "
        'scalelearn() {{ python -m scalelearn "$@"; }}; '
    )
else:
    shell.prefix(
        "set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; "
        'SCALELEARN_PYTHON=%s; scalelearn() {{ "$SCALELEARN_PYTHON" -m scalelearn "$@"; }}; '
        % (shlex.quote(SRC), shlex.quote(sys.executable))
    )


# The paper grid unless a --configfile is given: a preset replaces it, it is not merged into it
# (merged, a config with only e3 would gain e1 and e2). The workflow profile's
# replace-workflow-config does the same; this holds without the profile too.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/analysis.smk"


onsuccess:
    report_failed_runs()


onerror:
    remove_stale_analyses()
    report_failed_runs()


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True
