# Config validation and the helpers the rules use. The grid expansion is the package's
# (scalelearn.experiments), so the Snakefile, `scalelearn runs` and the tests agree.

import json

from snakemake.utils import validate

from scalelearn import experiments as sl


# A clear message first (key, value, what is allowed), then Snakemake's own check against the
# same schema file; both fill in the schema's defaults.
CONFIG = sl.validate_config(config)
validate(config, schema=str(sl.SCHEMA_PATH))

RUNS = sl.all_runs(CONFIG)  # experiment -> [Run]
RUN_BY_ID = {(run.experiment, run.run_id): run for runs in RUNS.values() for run in runs}
DATASETS = {dataset.path: dataset for dataset in sl.datasets_needed(CONFIG)}


wildcard_constraints:
    experiment=r"[a-z][a-z0-9_]*",
    run_id=r"[^/]+",
    name=r"[^/]+",
    seed=r"\d+",


def lookup_run(wildcards):
    key = (wildcards.experiment, wildcards.run_id)
    if key not in RUN_BY_ID:
        raise ValueError(
            f"no run {wildcards.run_id!r} in experiment {wildcards.experiment!r} of the config; "
            "list the runs with `python -m scalelearn runs --config <config file>`"
        )
    return RUN_BY_ID[key]


def lookup_dataset(protocol, wildcards):
    path = f"{sl.RESULTS}/data/{protocol}/{wildcards.name}/seed{wildcards.seed}.npz"
    if path not in DATASETS:
        raise ValueError(f"{path} is not a dataset of the config; known: {sorted(DATASETS)}")
    return DATASETS[path]


def mnist_source_args():
    """Command-line arguments of `scalelearn data pool` for the configured MNIST source."""
    mnist = CONFIG["mnist"]
    if mnist["source"] == "torchvision":
        return f"--source torchvision --root {mnist['root']}"
    if mnist["source"] == "idx_dir":
        return f"--source idx_dir --idx-dir {mnist['idx_dir']}"
    return "--source embedded"


def split_args(dataset):
    splits = dataset.params["splits"]
    return f"{splits['train']} {splits['val']} {splits['test']}"


def experiment_summaries(wildcards):
    return [run.summary for run in RUNS[wildcards.experiment]]


def learned_scales_inputs(wildcards):
    """The runs of a learned-scale experiment and, with `compare_with`, the fixed-ISR sweep."""
    inputs = {"runs": f"results/aggregate/{wildcards.experiment}.csv"}
    reference = CONFIG["experiments"][wildcards.experiment].get("compare_with")
    if reference:
        inputs["reference"] = f"results/aggregate/{reference}.csv"
    return inputs


def e5_table_inputs(wildcards):
    """The E5 runs and, with `compare_with`, the baseline runs shown as extra rows."""
    inputs = {"runs": f"results/aggregate/{wildcards.experiment}.csv"}
    baselines = CONFIG["experiments"][wildcards.experiment].get("compare_with")
    if baselines:
        inputs["baselines"] = f"results/aggregate/{baselines}.csv"
    return inputs


def output_stem(output):
    """results/tables/e1_isr from results/tables/e1_isr.csv (the verbs take a stem)."""
    return os.path.splitext(output[0])[0]


# Outputs of each analysis named in an experiment's `analyses`, as path templates.
ANALYSIS_OUTPUTS = {
    "isr_curve": [
        "results/tables/{experiment}_isr.csv",
        "results/tables/{experiment}_isr.tex",
        "results/figures/{experiment}_isr.pdf",
        "results/figures/{experiment}_isr.png",
    ],
    "learned_scales": [
        "results/tables/{experiment}_learned.csv",
        "results/tables/{experiment}_learned.tex",
    ],
    "e5": [
        "results/tables/{experiment}_table.csv",
        "results/tables/{experiment}_table.tex",
    ],
}


def all_targets():
    targets = []
    for name, spec in CONFIG["experiments"].items():
        targets.append(f"results/aggregate/{name}.csv")
        for analysis in spec.get("analyses", []):
            targets += [t.format(experiment=name) for t in ANALYSIS_OUTPUTS[analysis]]
    return targets
