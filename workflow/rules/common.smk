# Config validation and the helpers the rules use. The grid expansion is the package's
# (scalelearn.experiments), so the Snakefile, `scalelearn runs` and the tests agree.

import json
import shlex

from snakemake.utils import validate

from scalelearn import experiments as sl
from scalelearn.analysis import registry


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


def per_scale_args(wildcards):
    """Options of `scalelearn evaluate` from the experiment's `per_scale` section."""
    section = CONFIG["experiments"][wildcards.experiment]["per_scale"]
    options = {
        "--test-subsample": section["test_subsample"],
        "--batch-size": section.get("batch_size"),
    }
    return " ".join(f"{flag} {value}" for flag, value in options.items() if value)


def per_scale_outputs(experiment):
    """The per_scale.csv of every run of an experiment that asks for the per-scale test."""
    if "per_scale" not in CONFIG["experiments"][experiment]:
        return []
    return [f"{run.folder}/per_scale.csv" for run in RUNS[experiment]]


# Every analysis is declared once in scalelearn.analysis.registry; these helpers turn a
# declaration into the inputs, options and outputs of its rule (workflow/rules/analysis.smk).


def analysis_inputs(analysis, wildcards):
    """Job inputs of an analysis: the aggregated runs, the compare_with experiment's, and the
    per-run files (metrics.csv, per_scale.csv) it reads."""
    experiment = wildcards.get("experiment")
    inputs = {}
    if "runs" in analysis.needs:
        inputs["runs"] = f"results/aggregate/{experiment}.csv"
    other = CONFIG["experiments"].get(experiment, {}).get("compare_with")
    if "compare_with" in analysis.needs and other:
        inputs["compare_with"] = f"results/aggregate/{other}.csv"
    for need in registry.RUN_FILES:
        if need in analysis.needs:
            inputs["run_files"] = [f"{run.folder}/{need}.csv" for run in RUNS[experiment]]
    return inputs


def analysis_args(analysis, wildcards, input):
    """Options of `scalelearn analyse NAME` for the job's inputs and declared outputs."""
    args = []
    for name, flag in (("runs", "--runs"), ("compare_with", "--compare-with")):
        if name in input.keys():
            args += [flag, input[name]]
    if "run_files" in input.keys():
        args += ["--run-files", *input.run_files]
    if "widths" in analysis.needs:
        widths = CONFIG["datasets"]["scale_distribution"]["widths_octaves"]
        args += ["--widths-octaves", *map(str, widths)]
    for kind, stem in analysis.stems(wildcards.get("experiment")).items():
        args += [f"--{kind}", stem]
    return " ".join(shlex.quote(str(arg)) for arg in args)


def analysis_rule_outputs(analysis):
    """Named outputs of an analysis rule, the PNG figure and the CSV table in the report."""
    labels = {"analysis": analysis.name}
    if analysis.per_experiment:
        labels["experiment"] = "{experiment}"
    outputs = {}
    for path in analysis.outputs("{experiment}"):
        kind = path.rsplit(".", 1)[1]
        if kind in ("png", "csv"):
            path = report(
                path,
                caption="../report/analysis.rst",
                category=analysis.category,
                labels={**labels, "file": "figure" if kind == "png" else "table"},
            )
        outputs[kind] = path
    return outputs


def analysis_caption(analysis, wildcards):
    experiment = wildcards.get("experiment", "")
    other = CONFIG["experiments"].get(experiment, {}).get("compare_with") or "(none)"
    return " ".join(analysis.caption.format(experiment=experiment, compare_with=other).split())


def experiment_outputs(experiment):
    """The aggregate and the analysis outputs made from an experiment's runs: its own analyses
    and those of the experiments that compare with it."""
    outputs = [f"results/aggregate/{experiment}.csv"]
    for analysis, name in registry.requested(CONFIG):
        other = CONFIG["experiments"][name].get("compare_with")
        if name == experiment or ("compare_with" in analysis.needs and other == experiment):
            outputs += analysis.outputs(name)
    return outputs


def all_targets():
    """Every dataset and every run's summary, not only the tables: a dataset or a run folder
    that is missing (deleted after a failure) is rebuilt by the same command, and the tables
    after it (their inputs are then newer)."""
    targets = [dataset.path for dataset in DATASETS.values()]
    for name in CONFIG["experiments"]:
        targets += [run.summary for run in RUNS[name]]
        targets += experiment_outputs(name) + per_scale_outputs(name)
    return list(dict.fromkeys(targets))


def report_failed_runs():
    """Print one line per run that diverged or has no summary (the tables count them too)."""
    lines = sl.failed_runs([run for runs in RUNS.values() for run in runs])
    if lines:
        print(f"scalelearn: {len(lines)} run(s) did not finish ok:", file=sys.stderr)
        for line in lines:
            print(f"  {line}", file=sys.stderr)


def remove_stale_analyses():
    """After a failed job: delete the aggregate, tables and figures of every experiment with a
    run that has no summary, so no table outlives the runs it summarises; the next successful
    run of the same command rebuilds them."""
    for name, runs in RUNS.items():
        missing = [run.run_id for run in runs if not os.path.exists(run.summary)]
        if not missing:
            continue
        for path in experiment_outputs(name):
            if os.path.exists(path):
                os.remove(path)
                print(
                    f"scalelearn: removed {path}: run {name}/{missing[0]} has no summary",
                    file=sys.stderr,
                )
