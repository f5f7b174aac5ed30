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

# The package is imported here (validation, grid expansion) and by every job as
# `python -m scalelearn` with src/ on PYTHONPATH, which also works inside a conda env that holds
# only the dependencies, and on cluster nodes (the prefix is part of each job's command).
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
# A prefix replaces Snakemake's default bash strict mode, so it is restated; the prefix is
# formatted like a shell command, hence the doubled braces.
shell.prefix(
    "set -euo pipefail; export PYTHONPATH=%s${{PYTHONPATH:+:$PYTHONPATH}}; " % shlex.quote(SRC)
)


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/analysis.smk"


rule all:
    input:
        all_targets(),
    default_target: True
