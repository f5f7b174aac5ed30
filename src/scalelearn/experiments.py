"""Experiments as declarative grids: load and validate the workflow config, expand every
experiment's grid into training runs with readable ids, and resolve each run's config.

The config schema (`config.schema.yaml` beside this file) is the single source of truth: the
Snakefile validates against the same file with `snakemake.utils.validate`, the tests and
`scalelearn runs` go through `load_config` here.

A grid is the cartesian product of its keys. `width_octaves` and `seed` select the dataset (they
default to all widths / seeds of the dataset section); every other key overrides a model key
(`isr`, `sigma_basis`, `scale_mode`, ...) or a train key (`augment`, ...). A grid may also be a
list of grids whose runs are joined, for designs with exclusions. Numeric keys accept a geometric
series `{start, steps_per_octave, num}` = start * 2^(i / steps_per_octave), i = 0..num-1.

Resolved run config (`scalelearn runs --show RUN_ID` prints one): model = MODEL_DEFAULTS[name]
(scalelearn.settings)
<- experiment model <- grid values; train = top-level `train` <- experiment `train` <- grid values.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from scalelearn.analysis import registry
from scalelearn.errors import ScalelearnError
from scalelearn.settings import (
    MIN_SCALE,
    SCHEMA_PATH,  # noqa: F401 (re-exported for the Snakefile: sl.SCHEMA_PATH)
    load_schema,
    min_scale,
    model_defaults,
)

RESULTS = "results"

# Grid keys that pick the dataset rather than override the model or the training.
DATASET_KEYS = ("width_octaves", "seed")

# How a grid key shows in a run id: prefix + value (strings: prefix-value, or the bare value).
RUN_ID_PREFIX = {
    "width": "b",
    "seed": "seed",
    "isr": "isr",
    "sigma_basis": "sb",
    "learn_sigma_basis": "lsb",
    "num_scales": "n",
    "effective_size": "eff",
    "kernel_size_k": "k",
    "kernel_size": "ks",
    "augment": "aug",
    "epochs": "ep",
    "lr": "lr",
    "scale_lr": "slr",
    "scale_mode": "",
    "name": "",
    "basis": "",
    "implementation": "",
}


# --------------------------------------------------------------------------------------------
# config loading and validation


@cache
def config_schema() -> dict:
    """The schema, with the analysis names of scalelearn.analysis.registry as the enum of
    `experiments.<name>.analyses` (the registry is their one source)."""

    schema = copy.deepcopy(load_schema())
    experiment = schema["properties"]["experiments"]["additionalProperties"]
    experiment["properties"]["analyses"]["items"] = {"enum": list(registry.ANALYSES)}
    return schema


def _validator_with_defaults():
    """A Draft 2020-12 validator that fills `default` values into the instance while validating
    (the same rule `snakemake.utils.validate(..., set_default=True)` applies)."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, subschema in properties.items():
                if "default" in subschema:
                    # Copy: the nested defaults filled in later must not mutate the schema.
                    instance.setdefault(key, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(Draft202012Validator, {"properties": set_defaults})


def _key_path(parts) -> str:
    """experiments.e1.grid.isr[0] from the parts of a JSON path."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<top level>"


def _describe(error) -> str:
    """One line naming the key, the value and what is allowed."""
    from jsonschema.exceptions import best_match

    # oneOf/anyOf: report the alternative that came closest instead of "not valid under any".
    while error.context:
        error = best_match(error.context)
    key = _key_path(error.absolute_path)
    value = error.instance
    if error.validator == "enum":
        allowed = "one of " + ", ".join(repr(v) for v in error.validator_value)
    elif error.validator == "additionalProperties":
        unexpected = sorted(set(value) - set(error.schema.get("properties", {})))
        allowed = "the keys " + ", ".join(sorted(error.schema.get("properties", {})))
        return f"config key {key}: unknown key(s) {', '.join(unexpected)}; allowed are {allowed}"
    elif error.validator == "required":
        return f"config key {key}: {error.message}"
    elif error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        sign = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        allowed = f"a value {sign[error.validator]} {error.validator_value}"
    elif error.validator == "type":
        allowed = f"a value of type {error.validator_value}"
    else:
        allowed = error.message
    description = error.schema.get("description")
    hint = f" ({' '.join(description.split())})" if description else ""
    return f"config key {key}: invalid value {value!r}; allowed: {allowed}{hint}"


def validate_config(config: dict) -> dict:
    """Validate a config mapping against the schema and return a copy with defaults filled in.
    Raises ScalelearnError naming the key, the value and what is allowed."""
    from jsonschema.exceptions import best_match

    config = copy.deepcopy(config if config is not None else {})
    if not isinstance(config, dict):
        raise ScalelearnError(f"the config must be a mapping, got {type(config).__name__}")
    _check_finite(config)
    error = best_match(_validator_with_defaults()(config_schema()).iter_errors(config))
    if error is not None:
        raise ScalelearnError(_describe(error) + ". Fix the config file and run again.")
    _check_semantics(config)
    return config


def load_config(path: str | Path) -> dict:
    """Read a workflow config YAML, validate it and fill in the defaults."""
    path = Path(path)
    if not path.is_file():
        raise ScalelearnError(f"config file {path} not found")
    with open(path) as handle:
        try:
            raw = yaml.safe_load(handle)
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            first_line = str(error).splitlines()[0]
            raise ScalelearnError(f"config file {path} is not valid YAML: {first_line}") from None
    try:
        return validate_config(raw)
    except ScalelearnError as error:
        raise ScalelearnError(f"{path}: {error}") from None


def _check_finite(node, parts: tuple = ()) -> None:
    """Reject .inf / .nan anywhere: YAML reads them as floats and the schema's number type
    accepts them."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, (*parts, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            _check_finite(value, (*parts, index))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ScalelearnError(
            f"config key {_key_path(parts)}: invalid value {node!r}; allowed: a finite number"
        )


# MNIST digits are size-normalised into a 20 x 20 box inside their 28 x 28 frame (LeCun et al.).
# A digit rescaled by s spans about 20 s px: at the largest scale b of a distribution it must fit
# the canvas (SPEC §7 accepts digits that touch the edge: b = 8 on 168 px, 160 px <= 168).
DIGIT_EXTENT = 20
MNIST_FRAME = 28

# hermite_b's sub-sigma keys; meaningless with hermite_a.
HERMITE_B_KEYS = ("basis_mult", "basis_max_order")


def _check_semantics(config: dict) -> None:
    """Checks the schema cannot express; each error names the key, the value and what is
    allowed. Every config value that cannot make a meaningful run stops here, before any job."""
    _check_datasets(config)
    experiments = config["experiments"]
    for name, experiment in experiments.items():
        dataset = experiment["dataset"]
        section = config["datasets"][dataset]
        for index, grid in enumerate(_grids(experiment)):
            where = f"experiments.{name}.grid" + (
                f"[{index}]" if isinstance(experiment.get("grid"), list) else ""
            )
            if "width_octaves" in grid:
                if dataset != "scale_distribution":
                    raise ScalelearnError(
                        f"config key {where}.width_octaves: dataset {dataset!r} has no widths; "
                        "remove the key or use dataset scale_distribution"
                    )
                _check_subset(
                    f"{where}.width_octaves",
                    grid["width_octaves"],
                    section["widths_octaves"],
                    "datasets.scale_distribution.widths_octaves",
                )
            if "seed" in grid:
                _check_subset(
                    f"{where}.seed", grid["seed"], section["seeds"], f"datasets.{dataset}.seeds"
                )
            _check_geometric(where, grid)
        _check_model_keys(name, experiment)
        other = experiment.get("compare_with")
        if other is not None and (other == name or other not in experiments):
            why = "the experiment itself" if other == name else "not an experiment of the config"
            raise ScalelearnError(
                f"config key experiments.{name}.compare_with: invalid value {other!r} ({why}); "
                f"allowed: one of {', '.join(repr(e) for e in experiments if e != name)}"
            )
    # Each analysis fits the experiments that ask for it, and a compare_with is used by one.
    registry.check_config(config)
    names = [
        scale_distribution_name(2.0**o)
        for o in config["datasets"]["scale_distribution"]["widths_octaves"]
    ]
    if len(set(names)) != len(names):
        raise ScalelearnError(
            "config key datasets.scale_distribution.widths_octaves: widths "
            f"{names} are not distinct at 3 significant digits; choose widths further apart"
        )
    for name in experiments:
        for run in experiment_runs(config, name):
            _check_run_model(run)


def _check_datasets(config: dict) -> None:
    section = config["datasets"]["scale_distribution"]
    canvas = section["canvas"]
    if canvas < section["digit_size"]:
        raise ScalelearnError(
            f"config key datasets.scale_distribution.canvas: invalid value {canvas}; "
            f"allowed: at least digit_size ({section['digit_size']})"
        )
    # digit_size shrinks the 28 px frame, and the digit inside it, before it is placed.
    extent = DIGIT_EXTENT * section["digit_size"] / MNIST_FRAME
    for index, octaves in enumerate(section["widths_octaves"]):
        width = 2.0**octaves
        if extent * width > canvas:
            raise ScalelearnError(
                f"config key datasets.scale_distribution.widths_octaves[{index}]: invalid value "
                f"{octaves} (b = {width:.3g}): a digit of {extent:.3g} px at scale b spans "
                f"{extent * width:.0f} px and leaves the {canvas} px canvas; allowed: "
                f"{extent:.3g} * 2^octaves <= canvas, i.e. octaves <= "
                f"{math.log2(canvas / extent):.3f} (or a larger canvas)"
            )
    scale = config["datasets"]["mnist_scale"]
    if scale["scale_min"] > scale["scale_max"]:
        raise ScalelearnError(
            f"config key datasets.mnist_scale.scale_min: invalid value {scale['scale_min']}; "
            f"allowed: a value <= scale_max ({scale['scale_max']})"
        )
    if DIGIT_EXTENT * scale["scale_max"] > MNIST_FRAME:
        raise ScalelearnError(
            f"config key datasets.mnist_scale.scale_max: invalid value {scale['scale_max']}: "
            f"digits of {DIGIT_EXTENT} px leave the {MNIST_FRAME} px canvas; allowed: a value "
            f"<= {MNIST_FRAME / DIGIT_EXTENT}"
        )


def _check_geometric(where: str, grid: dict) -> None:
    """Every value of a geometric series must be finite and a valid value of its key."""
    from jsonschema import Draft202012Validator

    item_schemas = load_schema()["$defs"]["model"]["properties"]
    for key, spec in grid.items():
        if not isinstance(spec, dict):
            continue
        try:
            values = geometric_values(spec)
        except OverflowError:
            values = [math.inf]
        bad = [v for v in values if not math.isfinite(v)]
        bad += [
            v
            for v in values
            if math.isfinite(v) and not Draft202012Validator(item_schemas[key]).is_valid(v)
        ]
        if bad:
            raise ScalelearnError(
                f"config key {where}.{key}: the geometric series {spec} reaches {bad[0]!r}; "
                f"allowed: finite values with {_schema_words(item_schemas[key])} (fewer steps, "
                "more steps_per_octave or another start)"
            )


def _schema_words(schema: dict) -> str:
    if "minimum" in schema:
        return f"value >= {schema['minimum']}"
    return "value > 0"


def _check_model_keys(name: str, experiment: dict) -> None:
    """Every model key set by the experiment (model section or grid) must belong to every model
    it is applied to (MODEL_DEFAULTS lists each model's keys): the model section's keys to the
    models of every grid, a grid's keys to the models of that grid (its `name` values, else the
    model section's name), so a list of grids can train a CNN beside a scale-equivariant net."""
    model_keys = set(load_schema()["$defs"]["model"]["properties"])
    section = [(f"experiments.{name}.model.{key}", key) for key in experiment["model"]]
    checks = []  # (model name, [(where, key)])
    for index, grid in enumerate(_grids(experiment)):
        where = f"experiments.{name}.grid" + (
            f"[{index}]" if isinstance(experiment.get("grid"), list) else ""
        )
        given = section + [(f"{where}.{key}", key) for key in grid if key in model_keys]
        for model_name in grid.get("name", [experiment["model"]["name"]]):
            checks.append((model_name, given))
    for model_name, given in checks:
        allowed = model_defaults(model_name)
        for where, key in given:
            if key not in allowed:
                raise ScalelearnError(
                    f"config key {where}: does not apply to model {model_name!r}; allowed: "
                    f"its keys {', '.join(sorted(allowed))}"
                )
            if (
                key in HERMITE_B_KEYS
                and experiment["model"].get("basis", allowed.get("basis")) == "hermite_a"
            ):
                raise ScalelearnError(
                    f"config key {where}: only used by basis hermite_b, but {model_name!r} uses "
                    "hermite_a; remove the key or set basis: hermite_b"
                )


def _check_run_model(run: Run) -> None:
    """Checks of one resolved run: the input fits the network, its batches can train it, the
    initial scales fit the input and are not below the smallest scale of the basis, and no key
    is set that the scale parameterisation ignores."""
    model = run.config["model"]
    where = f"experiments.{run.experiment} (run {run.run_id})"
    side = run.dataset.params.get("canvas", MNIST_FRAME)
    if model["name"] in ("sesn", "cnn") and side != MNIST_FRAME:
        raise ScalelearnError(
            f"config key {where}: model {model['name']!r} needs {MNIST_FRAME}x{MNIST_FRAME} "
            f"input (its head is sized for it), but the dataset canvas is {side}; allowed: "
            "dataset mnist_scale, or datasets.scale_distribution.canvas: 28, or model toy"
        )
    if model["name"] in ("sesn", "cnn") and run.config["train"]["batch_size"] < 2:
        raise ScalelearnError(
            f"config key {where}: batch_size 1 cannot train model {model['name']!r} (the "
            "BatchNorm1d of its head needs more than one image per batch); allowed: "
            "train.batch_size >= 2"
        )
    if "sigma_basis" in model:
        smallest = min_scale(model["kernel_size_k"])
        if model["sigma_basis"] < smallest:
            raise ScalelearnError(
                f"config key {where}: sigma_basis {model['sigma_basis']:.3g} px is below "
                f"{smallest:.3g} px, the smallest internal scale at which the Hermite basis is "
                f"defined with kernel_size_k {model['kernel_size_k']:.3g} (max({MIN_SCALE}, 1/k): "
                "below it the smallest scale's support can be 1 px, where the odd-order "
                f"functions vanish); allowed: sigma_basis >= {smallest:.3g}"
            )
        largest = model["sigma_basis"] * model["isr"]
        if largest > side:
            raise ScalelearnError(
                f"config key {where}: the initial internal scales reach sigma_basis * isr = "
                f"{model['sigma_basis']:.3g} * {model['isr']:.3g} = {largest:.3g} px, more than "
                f"the {side} px input; allowed: sigma_basis * isr <= {side}"
            )
        # In a grid over scale_mode (E4) the shared learn_sigma_basis is meant for the other
        # modes; asked of direct alone it is a mistake.
        direct_alone = "scale_mode" not in run.config["grid"]
        if model["scale_mode"] == "direct" and model["learn_sigma_basis"] and direct_alone:
            raise ScalelearnError(
                f"config key {where}: learn_sigma_basis true has no effect with scale_mode "
                "direct (its scales are the parameters; sigma_b is unused); allowed: "
                "learn_sigma_basis false"
            )


def _check_subset(key: str, values: list, allowed: list, source: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise ScalelearnError(
            f"config key {key}: invalid value(s) {unknown}; allowed: the values of {source}, "
            f"{allowed}"
        )


# --------------------------------------------------------------------------------------------
# datasets and runs


@dataclass(frozen=True)
class Dataset:
    """One dataset file: results/data/{protocol}/{name}/seed{seed}.npz, made from `params`."""

    protocol: str
    name: str
    seed: int
    params: dict = field(compare=False, hash=False)

    @property
    def path(self) -> str:
        return f"{RESULTS}/data/{self.protocol}/{self.name}/seed{self.seed}.npz"


@dataclass(frozen=True)
class Run:
    """One training run of an experiment; `config` is the resolved run config (JSON-ready)."""

    experiment: str
    run_id: str
    dataset: Dataset
    config: dict = field(compare=False, hash=False)

    @property
    def folder(self) -> str:
        return f"{RESULTS}/runs/{self.experiment}/{self.run_id}"

    @property
    def summary(self) -> str:
        return f"{self.folder}/summary.json"


def scale_distribution_name(width: float) -> str:
    """Dataset name of a scale distribution of width b, e.g. b2.83, b4.76, b8."""
    return f"b{width:.3g}"


def geometric_values(spec: dict) -> list[float]:
    """start * 2^(i / steps_per_octave) for i = 0..num-1."""
    return [spec["start"] * 2.0 ** (i / spec["steps_per_octave"]) for i in range(spec["num"])]


def _grids(experiment: dict) -> list[dict]:
    grid = experiment.get("grid", {})
    return grid if isinstance(grid, list) else [grid]


def expand_grid(grid: dict) -> list[dict]:
    """All points of one grid (cartesian product, first key slowest), geometric specs
    expanded. An empty grid has one point, {}."""
    keys = list(grid)
    values = [geometric_values(v) if isinstance(v, dict) else list(v) for v in grid.values()]
    return [dict(zip(keys, point, strict=True)) for point in itertools.product(*values)]


def _format_value(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def make_run_id(grid: dict) -> str:
    """Readable id of a grid point, e.g. b2.83_isr1.68_seed0."""
    parts = []
    for key, value in grid.items():
        prefix = RUN_ID_PREFIX.get(key, key)
        if isinstance(value, str):
            parts.append(f"{prefix}-{value}" if prefix else value)
        else:
            parts.append(f"{prefix}{_format_value(value)}")
    return "_".join(parts) or "run"


def _dataset(config: dict, protocol: str, seed: int, width_octaves: float | None) -> Dataset:
    section = config["datasets"][protocol]
    if protocol == "scale_distribution":
        width = 2.0**width_octaves
        params = {
            "width": width,
            "width_octaves": width_octaves,
            "canvas": section["canvas"],
            "digit_size": section["digit_size"],
            "splits": dict(section["splits"]),
            "antialias": section["antialias"],
        }
        return Dataset(protocol, scale_distribution_name(width), seed, params)
    params = {
        "scale_min": section["scale_min"],
        "scale_max": section["scale_max"],
        "splits": dict(section["splits"]),
        "antialias": section["antialias"],
    }
    return Dataset(protocol, "sesn", seed, params)


def experiment_runs(config: dict, experiment: str) -> list[Run]:
    """The runs of one experiment of a validated config, in grid order."""
    if experiment not in config["experiments"]:
        raise ScalelearnError(
            f"unknown experiment {experiment!r}; the config defines "
            f"{', '.join(config['experiments'])}"
        )
    spec = config["experiments"][experiment]
    protocol = spec["dataset"]
    section = config["datasets"][protocol]
    train_keys = set(load_schema()["$defs"]["train"]["properties"])
    runs: dict[str, Run] = {}
    for grid in _grids(spec):
        grid = dict(grid)
        # The dataset keys frame the other grid keys: width first, seed last in the run id.
        widths = grid.pop("width_octaves", None)
        if protocol == "scale_distribution":
            widths = widths or section["widths_octaves"]
        seeds = grid.pop("seed", None) or section["seeds"]
        for width_octaves, point, seed in itertools.product(
            widths or [None], expand_grid(grid), seeds
        ):
            dataset = _dataset(config, protocol, seed, width_octaves)
            full_grid = {} if width_octaves is None else {"width": dataset.params["width"]}
            full_grid.update(point)
            full_grid["seed"] = seed
            run_id = make_run_id(full_grid)
            if run_id in runs:
                raise ScalelearnError(
                    f"config key experiments.{experiment}.grid: two grid points get the run id "
                    f"{run_id!r} ({runs[run_id].config['grid']} and {full_grid}); grid values "
                    "must differ at 3 significant digits"
                )
            model_over = {k: v for k, v in point.items() if k not in train_keys}
            train_over = {k: v for k, v in point.items() if k in train_keys}
            name = model_over.get("name", spec["model"]["name"])
            model = {**model_defaults(name), **spec["model"], **model_over, "name": name}
            train = {**config["train"], **spec.get("train", {}), **train_over}
            run_config = {
                "experiment": experiment,
                "run_id": run_id,
                "seed": seed,
                "grid": full_grid,
                "dataset": dataset.path,
                # What the dataset file must have been made with (checked against its manifest
                # before training).
                "dataset_params": {"protocol": protocol, "seed": seed, **dataset.params},
                "model": model,
                "train": train,
            }
            runs[run_id] = Run(experiment, run_id, dataset, copy.deepcopy(run_config))
    return list(runs.values())


def all_runs(config: dict) -> dict[str, list[Run]]:
    """Experiment name -> its runs, for every experiment of the config."""
    return {name: experiment_runs(config, name) for name in config["experiments"]}


def datasets_needed(config: dict) -> list[Dataset]:
    """Every dataset some run trains on, each once, sorted by path."""
    found = {run.dataset.path: run.dataset for runs in all_runs(config).values() for run in runs}
    return [found[path] for path in sorted(found)]


def find_run(config: dict, run_id: str, experiment: str | None = None) -> Run:
    names = [experiment] if experiment else list(config["experiments"])
    for name in names:
        for run in experiment_runs(config, name):
            if run.run_id == run_id:
                return run
    raise ScalelearnError(
        f"no run {run_id!r} in experiment(s) {', '.join(names)}; list them with "
        "`scalelearn runs --config FILE`"
    )


def run_status(run: Run) -> str:
    """ "ok", a failure status ("diverged", ...) from the run's summary.json, or "missing"."""
    try:
        return json.loads(Path(run.summary).read_text()).get("status", "missing")
    except (OSError, ValueError):
        return "missing"


def failed_runs(runs: list[Run]) -> list[str]:
    """One line per run whose summary is missing or not ok, e.g.
    'e2/b2_seed0: diverged (mean training loss 1e+14 at epoch 0 exceeds ...)'."""
    lines = []
    for run in runs:
        status = run_status(run)
        if status == "ok":
            continue
        if status == "missing":
            lines.append(
                f"{run.experiment}/{run.run_id}: no summary (the job failed or did not run)"
            )
            continue
        reason = json.loads(Path(run.summary).read_text()).get("reason", "")
        lines.append(f"{run.experiment}/{run.run_id}: {status} ({reason})")
    return lines


# --------------------------------------------------------------------------------------------
# run configs (what `scalelearn train` reads)

# Keys a run config may have: those `experiment_runs` writes, plus the two that `train` adds to
# config.json (so a run folder's config.json is itself a valid run config).
RUN_CONFIG_KEYS = (
    "experiment",
    "run_id",
    "seed",
    "grid",
    "dataset",
    "dataset_params",
    "model",
    "train",
    "dataset_sha256",
    "fingerprint",
)


def check_run_config(run_config) -> None:
    """Validate a run config (as `scalelearn runs --show` prints it) with the workflow schema's
    model and train definitions: unknown keys, invalid values and model keys that do not apply
    to the model are errors naming the key, the value and what is allowed."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    if not isinstance(run_config, dict):
        raise ScalelearnError(
            f"a run config must be a JSON object, got {type(run_config).__name__}"
        )
    schema = {
        "$defs": load_schema()["$defs"],
        "type": "object",
        "additionalProperties": False,
        "required": ["dataset", "model"],
        "properties": {
            "experiment": {"type": "string"},
            "run_id": {"type": "string"},
            "seed": {"$ref": "#/$defs/non_negative_int"},
            "grid": {"type": "object"},
            "dataset": {"type": "string", "minLength": 1},
            "dataset_params": {"type": "object"},
            "model": {"$ref": "#/$defs/model", "required": ["name"]},
            "train": {"$ref": "#/$defs/train"},
            "dataset_sha256": {"type": "string"},
            "fingerprint": {"type": "string"},
        },
    }
    try:
        _check_finite(run_config)
        error = best_match(Draft202012Validator(schema).iter_errors(run_config))
        if error is not None:
            raise ScalelearnError(_describe(error))
    except ScalelearnError as error:
        raise ScalelearnError(str(error).replace("config key", "run config key", 1)) from None
    name = run_config["model"]["name"]
    allowed = model_defaults(name)
    for key in run_config["model"]:
        if key not in allowed:
            raise ScalelearnError(
                f"run config key model.{key}: does not apply to model {name!r}; allowed: its "
                f"keys {', '.join(sorted(allowed))}"
            )


# --------------------------------------------------------------------------------------------
# command line


def _runs_command(args: argparse.Namespace) -> None:
    config = load_config(args.config)
    if args.show:
        run = find_run(config, args.show, args.experiment)
        print(json.dumps(run.config, indent=2))
        return
    if args.datasets:
        for dataset in datasets_needed(config):
            print(dataset.path)
        return
    names = [args.experiment] if args.experiment else list(config["experiments"])
    for name in names:
        for run in experiment_runs(config, name):
            print(f"{name}/{run.run_id}")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="list the training runs a workflow config expands to",
        description="Validate a workflow config and list its runs as EXPERIMENT/RUN_ID, one per "
        "line; --show prints one run's resolved run config (the JSON `scalelearn train` reads).",
    )
    parser.add_argument("--config", required=True, help="workflow config YAML (config/*.yaml)")
    parser.add_argument("--experiment", help="only this experiment")
    parser.add_argument("--show", metavar="RUN_ID", help="print this run's resolved config")
    parser.add_argument(
        "--datasets", action="store_true", help="list the dataset files the runs need instead"
    )
    parser.set_defaults(func=_runs_command)
