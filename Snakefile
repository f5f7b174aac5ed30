"""scalelearn: Scale Learning in Scale-Equivariant Convolutional Networks (VISAPP 2024), as a
Snakemake pipeline: MNIST pool -> datasets -> training runs -> aggregate -> tables and figures.

Every rule is a thin shell call of one `scalelearn` verb, so each step can be run by hand; the
logic (config validation, grid expansion, training, analysis) lives in the package in src/.

    snakemake -n                                  # the full paper grid (config/config.yaml)
    snakemake --cores all --configfile config/quick.yaml
"""

import shlex
import sys
from pathlib import Path

from snakemake_interface_executor_plugins.settings import DeploymentMethod

# Every job calls the package's command line, `scalelearn VERB ...`, defined in the shell prefix
# as a function that runs the Python that runs Snakemake (its environment has every dependency,
# activated or not), or the conda env's python under --use-conda. src/ goes on PYTHONPATH, so
# a conda env needs only the dependencies, and cluster nodes need no install of the package.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)  # for the config validation and grid expansion below
USE_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PYTHON = "python" if USE_CONDA else shlex.quote(sys.executable)
# A prefix replaces Snakemake's default bash strict mode, so it is restated; the prefix is
# formatted like a shell command, hence the doubled braces.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; "
    'scalelearn() {{ %s -m scalelearn "$@"; }}; ' % (shlex.quote(SRC), PYTHON)
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
    input:
        all_targets(),
    default_target: True
