"""The analyses (tables and figures) of the study, each ONE declaration: its build function, the
runs it fits (dataset, fixed or learnable scales, the grid keys its cells are defined by), what it
reads (the experiment's aggregated runs, a `compare_with` experiment, per-run files such as
metrics.csv or per_scale.csv, the configured widths), its outputs and its report caption.

Everything else derives from `ANALYSES`: the schema's allowed names in `experiments.<name>.
analyses`, the config check that rejects an analysis asked of an experiment it does not fit
(before any job runs), the Snakefile's targets and its one rule pattern
(workflow/rules/analysis.smk), and the `scalelearn analyse NAME` command. To add an analysis,
write its build function (`inputs -> Built`) and add one `Analysis(...)` below.

This module imports neither pandas nor torch: the Snakefile reads it while parsing.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from scalelearn.errors import ScalelearnError

# What an analysis can read; the rule pattern turns each into job inputs.
#   runs:        results/aggregate/{experiment}.csv (one row per run)
#   compare_with: the aggregated runs of the experiment named by `compare_with`
#   metrics:     every run's metrics.csv (one row per epoch)
#   per_scale:   every run's per_scale.csv (the in-depth test, `scalelearn evaluate`)
#   widths:      the configured widths, datasets.scale_distribution.widths_octaves (no runs)
NEEDS = ("runs", "compare_with", "metrics", "per_scale", "widths")
RUN_FILES = ("metrics", "per_scale")  # per-run files, named <need>.csv in each run folder


@dataclass(frozen=True)
class Fits:
    """Which experiments an analysis (or its compare_with experiment) fits.

    dataset: the dataset protocol the runs must use (None: any).
    scales: "fixed" (every run has scale_mode fixed), "learnable" (none has) or None (any).
    group_by: grid keys that define a cell of the table (besides the seed, which is averaged
        over); the experiment's grid must have them.
    other_grid_keys: what to do with further grid keys: "reject" (the analysis would silently
        average over them) or "group" (they become more cell columns).
    per_scale: the experiment must run the per-scale test (`experiments.<name>.per_scale`).
    """

    dataset: str | None = "scale_distribution"
    scales: str | None = None
    group_by: tuple[str, ...] = ("width",)
    other_grid_keys: str = "reject"
    per_scale: bool = False


FIXED_ISR_SWEEP = Fits(scales="fixed", group_by=("width", "isr"))
LEARNED_PER_WIDTH = Fits(scales="learnable")


@dataclass(frozen=True)
class Analysis:
    """One table and/or figure. `build` is "module:function", a function of AnalysisInputs
    returning Built; `table`/`figure` are output stems (STEM.csv + STEM.tex, STEM.pdf +
    STEM.png), with `{experiment}` for per-experiment analyses (an analysis without it may be
    asked by one experiment only). `caption` is reStructuredText for the report, formatted with
    `experiment` and `compare_with`."""

    name: str
    build: str
    caption: str
    fits: Fits = Fits()
    needs: tuple[str, ...] = ("runs",)
    compare_with: Fits | None = None  # what the compare_with experiment must fit
    compare_required: bool = False
    table: str | None = None
    figure: str | None = None
    category: str = "Tables and figures"

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown or not (self.table or self.figure):
            raise ValueError(f"analysis {self.name}: unknown needs {unknown} or no output")
        if ("compare_with" in self.needs) != (self.compare_with is not None):
            raise ValueError(f"analysis {self.name}: declare compare_with and its need together")

    @property
    def per_experiment(self) -> bool:
        return "{experiment}" in (self.table or self.figure)

    def stems(self, experiment: str | None = None) -> dict[str, str]:
        """{"table": stem, "figure": stem} of the declared outputs."""
        stems = {"table": self.table, "figure": self.figure}
        return {k: v.format(experiment=experiment) for k, v in stems.items() if v}

    def outputs(self, experiment: str | None = None) -> list[str]:
        """Every file the analysis writes."""
        suffixes = {"table": (".csv", ".tex"), "figure": (".pdf", ".png")}
        return [
            stem + suffix
            for kind, stem in self.stems(experiment).items()
            for suffix in suffixes[kind]
        ]


_ANALYSES = [
    Analysis(
        name="isr_curve",
        build="scalelearn.analysis.builders:isr_curve",
        fits=FIXED_ISR_SWEEP,
        table="results/tables/{experiment}_isr",
        figure="results/figures/{experiment}_isr",
        category="E1: fixed internal scales",
        caption="""Test error (%) of the toy network with **fixed** internal scales against the
internal scale range (ISR = sigma_max / sigma_min, log2 axis), one line per width b of the scale
distribution LogUniform[1, b], from the runs of experiment ``{experiment}``. Lines: mean over
seeds; bands: ± one standard deviation; stars: the best ISR per width. The table holds mean ± std
and the number of runs of every (width, ISR). Authors (SPEC §11): best ISR 2.38 / 4.76 / 5.35 for
b = 2.83 / 4.76 / 8 with 2.24 ± 0.06 / 2.50 ± 0.05 / 2.81 ± 0.03 % error; worst (ISR 1.5)
2.55 / 3.39 / 3.91 %.""",
    ),
    Analysis(
        name="per_scale",
        build="scalelearn.analysis.builders:per_scale",
        fits=Fits(scales="fixed", group_by=("width", "isr"), per_scale=True),
        needs=("runs", "per_scale"),
        figure="results/figures/{experiment}_per_scale",
        category="E1: fixed internal scales",
        caption="""In-depth per-scale test of experiment ``{experiment}``: every run's
best-validation checkpoint evaluated on its test digits rendered at 45 scales 2^-1 ... 2^3.5
(train normalisation). One panel per width b, one line per ISR (every other ISR of the sweep),
mean over seeds with a band from the lowest to the highest seed; dashed lines: the bounds 1 and b
of the training scale distribution. Error on a log axis.""",
    ),
    Analysis(
        name="learned_scales",
        build="scalelearn.analysis.builders:learned_scales",
        fits=Fits(scales="learnable", other_grid_keys="group"),
        needs=("runs", "compare_with"),
        compare_with=FIXED_ISR_SWEEP,
        table="results/tables/{experiment}_learned",
        category="Learned internal scales",
        caption="""Learned internal scales, experiment ``{experiment}``: test error, learned
sigma_b and learned ISR at the best-validation checkpoint (mean ± std over seeds, n = runs per
cell) per width b and per initialisation where the experiment varies it, next to the best fixed
ISR of ``{compare_with}`` when it is given. Authors (SPEC §11), E2 (learn ISR): 2.29 ± 0.07 /
2.51 ± 0.08 / 2.87 ± 0.07 % for b = 2.83 / 4.76 / 8, learned scales on b = 8 about
[1.94, 3.98, 8.15]; E3 (b = 8): learned sigma_b 1.3-2.6, learned ISR 3.4-5.4, error
2.75-3.13 %.""",
    ),
    Analysis(
        name="parameterisations",
        build="scalelearn.analysis.builders:parameterisations",
        fits=Fits(scales="learnable", group_by=("width", "scale_mode")),
        needs=("runs", "compare_with"),
        compare_with=LEARNED_PER_WIDTH,
        table="results/tables/{experiment}_parameterisations",
        category="Learned internal scales",
        caption="""Parameterisations of the learnable scales, experiment ``{experiment}`` (and
the runs of ``{compare_with}`` as one more parameterisation, not retrained): test error and
final internal scales, sigma_b and ISR per (width, scale_mode), mean ± std over seeds, n = runs
per cell. Authors (SPEC §11), direct / ratio_squared / learn ISR: 2.32 / 2.29 / 2.29 (b 2.83),
2.55 / 2.57 / 2.51 (b 4.76), 3.06 / 3.01 / 2.87 % (b 8).""",
    ),
    Analysis(
        name="scale_trajectories",
        build="scalelearn.analysis.builders:scale_trajectories",
        fits=Fits(scales="learnable", other_grid_keys="group"),
        needs=("runs", "metrics"),
        figure="results/figures/{experiment}_scale_trajectories",
        category="Learned internal scales",
        caption="""Not in the paper: the learnable internal scales of experiment
``{experiment}`` over the epochs (from each run's metrics.csv): sigma_b, ISR and every internal
scale, mean over seeds, one colour per width b (line style per further grid value).""",
    ),
    Analysis(
        name="isr_comparison",
        build="scalelearn.analysis.builders:isr_comparison",
        fits=LEARNED_PER_WIDTH,
        needs=("runs", "compare_with", "widths"),
        compare_with=FIXED_ISR_SWEEP,
        compare_required=True,
        table="results/tables/{experiment}_isr_comparison",
        category="Tolerance model",
        caption="""ISR per width b: predicted by the tolerance model (fitted jointly over the
configured widths, no training), the best fixed ISR of ``{compare_with}`` (lowest mean test
error) and the ISR learned by ``{experiment}`` (mean ± std over seeds, n = runs). Authors
(SPEC §9, §11): predicted 2.89 / 4.32 / 6.32, best fixed 2.38 / 4.76 / 5.35 for
b = 2.83 / 4.76 / 8.""",
    ),
    Analysis(
        name="tolerance",
        build="scalelearn.analysis.builders:tolerance",
        fits=Fits(group_by=(), other_grid_keys="group"),  # reads no runs
        needs=("widths",),
        table="results/tables/tolerance",
        figure="results/figures/tolerance",
        category="Tolerance model",
        caption="""Tolerance model (SPEC §9), fitted jointly over the configured widths, no
training: per width the model's coverage P(x) over x = log2(data scale), the predicted internal
scales (dashed) and the bounds of the scale distribution; the table holds ref, the predicted ISR
and scales and the shared tolerance T. Authors: T = 0.459, predicted ISR 2.89 / 4.32 / 6.32 for
b = 2.83 / 4.76 / 8.""",
    ),
    Analysis(
        name="method",
        build="scalelearn.analysis.builders:method",
        fits=Fits(scales="learnable", other_grid_keys="group"),
        figure="results/figures/{experiment}_method",
        category="Method",
        caption="""Method figure, rendered from the code: the Hermite basis functions at the
internal scales learned by one run of ``{experiment}`` (the widest distribution, first seed) and
one multi-scale kernel built from them.""",
    ),
    Analysis(
        name="e5",
        build="scalelearn.analysis.builders:e5",
        # One row per configuration (augmentation, network, scale mode, learnable sigma_b), read
        # from the resolved config: every grid key of E5 and of its baselines is a cell key.
        fits=Fits(dataset="mnist_scale", group_by=(), other_grid_keys="group"),
        needs=("runs", "compare_with"),
        compare_with=Fits(dataset="mnist_scale", group_by=(), other_grid_keys="group"),
        table="results/tables/{experiment}_table",
        category="MNIST-Scale (E5)",
        caption="""MNIST-Scale (E5, SESN protocol), experiment ``{experiment}``: test error (%)
of the SESN network per configuration, mean ± sample std over the dataset realisations, n = runs
per row. Configurations: without augmentation and with "+" (a fresh random rescale U[0.5, 2] of
every training image per load); internal scales ``direct``, ``ratio_squared`` ("learn spacing")
and ``single_ratio_squared`` ("learn ISR"), each with a learnable or a frozen sigma_b
(``direct`` has no sigma_b: all its scales are free). Learned ISR and sigma_b at the
best-validation checkpoint, shown only where learned. Baseline rows (``{compare_with}``): this
project's fixed-scale SESN and plain CNN under the same protocol. The ``authors_*`` columns quote
the authors (5 seeds, SPEC §11): "+" direct 1.50 ± 0.08, "+" learn ISR with learnable sigma_b
1.44 ± 0.09 (their best), the other "+" rows about 1.50, no augmentation 1.70-1.74; empty where
they give no number.""",
    ),
]

ANALYSES: dict[str, Analysis] = {analysis.name: analysis for analysis in _ANALYSES}


def get(name: str) -> Analysis:
    if name not in ANALYSES:
        raise ScalelearnError(
            f"unknown analysis {name!r}; allowed: {', '.join(ANALYSES)} (scalelearn.analysis."
            "registry)"
        )
    return ANALYSES[name]


# --------------------------------------------------------------------------------------------
# which experiments an analysis fits (checked on the config, before any job runs)


def cell_keys(grid_keys: list[str], fits: Fits) -> list[str]:
    """The grid keys that define a cell of the analysis: `fits.group_by`, then (for
    other_grid_keys "group") every other grid key but the seed, in grid order. Raises
    ScalelearnError naming the missing or the extra keys."""
    keys = [key for key in grid_keys if key != "seed"]
    missing = [key for key in fits.group_by if key not in keys]
    if missing:
        raise ScalelearnError(f"its grid has no {', '.join(missing)} key, which the cells need")
    others = [key for key in keys if key not in fits.group_by]
    if others and fits.other_grid_keys == "reject":
        raise ScalelearnError(
            f"its grid also varies {', '.join(others)}, which this analysis would average over"
        )
    return list(fits.group_by) + others


def experiment_grid_keys(spec: dict) -> list[str]:
    """The grid keys of an experiment's runs as the aggregated runs show them (`width` for a
    scale-distribution dataset, `seed` always), from the config alone."""
    keys = ["width"] if spec["dataset"] == "scale_distribution" else []
    grids = spec.get("grid", {})
    for grid in grids if isinstance(grids, list) else [grids]:
        for key in grid:
            key = "width" if key == "width_octaves" else key
            if key not in keys and key != "seed":
                keys.append(key)
    return keys + ["seed"]


def experiment_scale_modes(spec: dict) -> set[str | None]:
    """The scale_mode values of an experiment's runs (the model's default where the config
    leaves it; None for a model without internal scales)."""
    from scalelearn.settings import MODEL_DEFAULTS  # torch-free

    default = spec["model"].get(
        "scale_mode", MODEL_DEFAULTS.get(spec["model"]["name"], {}).get("scale_mode")
    )
    grids = spec.get("grid", {})
    modes: set[str | None] = set()
    for grid in grids if isinstance(grids, list) else [grids]:
        modes.update(grid.get("scale_mode", [default]))
    return modes or {default}


def check_fits(fits: Fits, spec: dict) -> None:
    """Raise ScalelearnError (the reason, no key) when an experiment's config does not fit."""
    if fits.dataset and spec["dataset"] != fits.dataset:
        raise ScalelearnError(f"it needs dataset {fits.dataset}, not {spec['dataset']}")
    modes = experiment_scale_modes(spec)
    if fits.scales == "fixed" and modes != {"fixed"}:
        raise ScalelearnError(
            f"it needs fixed scales (scale_mode fixed), not {sorted(modes, key=str)}"
        )
    if fits.scales == "learnable" and (None in modes or "fixed" in modes):
        raise ScalelearnError(
            "it needs learnable scales (model.scale_mode or the grid's scale_mode not fixed), "
            f"not {sorted(modes, key=str)}"
        )
    if fits.per_scale and "per_scale" not in spec:
        raise ScalelearnError("it needs the per-scale test: add `per_scale: {}` to the experiment")
    cell_keys(experiment_grid_keys(spec), fits)


def check_config(config: dict) -> None:
    """Check every experiment's `analyses` against the registry: known names, fitting runs, a
    fitting `compare_with` that some analysis uses, run-free analyses asked once. Raises
    ScalelearnError naming the key."""
    asked_by: dict[str, str] = {}
    for name, spec in config["experiments"].items():
        for analysis_name in spec.get("analyses", []):
            key = f"config key experiments.{name}.analyses"
            analysis = get(analysis_name)
            try:
                check_fits(analysis.fits, spec)
            except ScalelearnError as error:
                raise ScalelearnError(
                    f"{key}: {analysis_name} does not fit experiment {name}: {error}"
                ) from None
            other = spec.get("compare_with")
            if analysis.compare_with is not None and other is not None:
                try:
                    check_fits(analysis.compare_with, config["experiments"][other])
                except ScalelearnError as error:
                    raise ScalelearnError(
                        f"config key experiments.{name}.compare_with: {analysis_name} cannot "
                        f"compare with experiment {other}: {error}"
                    ) from None
            elif analysis.compare_required:
                raise ScalelearnError(
                    f"{key}: {analysis_name} needs `compare_with: <experiment>` in experiment "
                    f"{name}"
                )
            if not analysis.per_experiment:
                if analysis_name in asked_by:
                    raise ScalelearnError(
                        f"{key}: {analysis_name} does not depend on the experiment and is "
                        f"already asked by {asked_by[analysis_name]}; ask it once"
                    )
                asked_by[analysis_name] = name
        other = spec.get("compare_with")
        if other is not None and not any(get(a).compare_with for a in spec.get("analyses", [])):
            raise ScalelearnError(
                f"config key experiments.{name}.compare_with: invalid value {other!r}: "
                "compare_with is not used by any analysis of this experiment; remove it or add "
                "one that compares: " + ", ".join(n for n, a in ANALYSES.items() if a.compare_with)
            )


def requested(config: dict) -> list[tuple[Analysis, str]]:
    """(analysis, experiment) for every analysis the config asks for."""
    return [
        (get(analysis_name), name)
        for name, spec in config["experiments"].items()
        for analysis_name in spec.get("analyses", [])
    ]


# --------------------------------------------------------------------------------------------
# running one analysis


@dataclass
class AnalysisInputs:
    """What a build function reads (pandas frames; None where the analysis does not need it).

    runs: aggregated runs (one row per run); reference: the compare_with experiment's runs;
    run_files: the per-run files (metrics.csv or per_scale.csv) stacked, with `experiment` and
    `run_id` columns; widths_octaves: the configured widths; cells: the grid columns
    (`grid_<key>`) that define the cells, from `cell_keys`.
    """

    runs: Any = None
    reference: Any = None
    run_files: Any = None
    widths_octaves: list[float] | None = None
    cells: list[str] = field(default_factory=list)


@dataclass
class Built:
    """What a build function returns: a table (tidy frame + its LaTeX) and/or a figure."""

    table: Any = None
    latex: str | None = None
    figure: Any = None


def build_function(analysis: Analysis):
    module, function = analysis.build.split(":")
    return getattr(importlib.import_module(module), function)


def run(analysis: Analysis, inputs: AnalysisInputs, stems: dict[str, str]) -> list:
    """Build the analysis and write the outputs named in `stems` ({"table": ..., "figure": ...});
    returns the paths written."""
    if inputs.runs is not None:
        grid_keys = [c[len("grid_") :] for c in inputs.runs.columns if c.startswith("grid_")]
        try:
            inputs.cells = ["grid_" + key for key in cell_keys(grid_keys, analysis.fits)]
        except ScalelearnError as error:
            raise ScalelearnError(f"{analysis.name} does not fit these runs: {error}") from None
    built = build_function(analysis)(inputs)
    paths = []
    if "table" in stems:
        from scalelearn.analysis.tables import write_table

        paths += write_table(built.table, built.latex, stems["table"])
    if "figure" in stems:
        from scalelearn.analysis.figures import save_figure

        paths += save_figure(built.figure, stems["figure"])
    return paths
