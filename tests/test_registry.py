"""Tests of the analysis registry: each analysis is one declaration from which the schema's
names, the config check and the Snakefile's targets derive, and an analysis asked of an
experiment it does not fit is an error naming the key before any job runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import yaml

from scalelearn import experiments as sl
from scalelearn.analysis import registry
from scalelearn.errors import ScalelearnError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def config():
    return yaml.safe_load((REPO / "config/test.yaml").read_text())


def test_schema_names_are_the_registry():
    experiment = sl.config_schema()["properties"]["experiments"]["additionalProperties"]
    assert experiment["properties"]["analyses"]["items"]["enum"] == list(registry.ANALYSES)


def test_every_declaration_is_complete():
    for analysis in registry.ANALYSES.values():
        assert callable(registry.build_function(analysis)), analysis.name
        assert analysis.caption.strip() and analysis.outputs("e9")
        for path in analysis.outputs("e9"):
            assert path.startswith("results/") and ("e9" in path) == analysis.per_experiment


def test_unknown_analysis_names_the_allowed_ones(config):
    config["experiments"]["e1"]["analyses"] = ["isr_curves"]
    with pytest.raises(
        ScalelearnError,
        match=r"e1.analyses\[0\]: invalid value 'isr_curves'; allowed: one of 'isr_curve'",
    ):
        sl.validate_config(config)


@pytest.mark.parametrize(
    ("experiment", "change", "message"),
    [
        # E1 runs have fixed scales: there is nothing learned to tabulate.
        (
            "e1",
            {"analyses": ["learned_scales"]},
            "learned_scales does not fit experiment e1: it needs learnable scales",
        ),
        # An ISR curve over a grid that also varies sigma_b would average over sigma_b.
        (
            "e1",
            {"grid": {"isr": [1.5, 3.0], "sigma_basis": [1.0, 2.0]}},
            "isr_curve does not fit experiment e1: its grid also varies sigma_basis",
        ),
        # E2 has no ISR sweep.
        (
            "e2",
            {"analyses": ["isr_curve"]},
            "isr_curve does not fit experiment e2: it needs fixed scales",
        ),
        (
            "e1",
            {"per_scale": None},
            "per_scale does not fit experiment e1: it needs the per-scale test",
        ),
        ("e2", {"compare_with": None}, "isr_comparison needs `compare_with: <experiment>`"),
        # E4's extra row must be learned-ISR runs per width, not a fixed sweep.
        (
            "e4",
            {"compare_with": "e1"},
            "experiments.e4.compare_with: parameterisations cannot "
            "compare with experiment e1: it needs learnable scales",
        ),
        # learned_scales compares with a fixed-ISR sweep, E2 is not one.
        ("e3", {"compare_with": "e2"}, "learned_scales cannot compare with experiment e2"),
        (
            "e2",
            {"analyses": ["tolerance"]},
            "tolerance does not depend on the experiment and is already asked by e1",
        ),
        (
            "e4",
            {"grid": {"isr": [2.0, 3.0]}, "model": {"name": "toy", "scale_mode": "direct"}},
            "parameterisations does not fit experiment e4: its grid has no scale_mode key",
        ),
    ],
)
def test_unfit_analysis_is_rejected_before_any_job(config, experiment, change, message):
    spec = config["experiments"][experiment]
    for key, value in change.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    with pytest.raises(ScalelearnError, match="config key experiments") as error:
        sl.validate_config(config)
    assert message in str(error.value)


def test_learned_scales_groups_by_every_varied_key(config):
    spec = sl.validate_config(config)["experiments"]["e3"]
    analysis = registry.get("learned_scales")
    keys = registry.cell_keys(registry.experiment_grid_keys(spec), analysis.fits)
    assert keys == ["width", "isr", "sigma_basis"]
    assert registry.cell_keys(["width", "isr", "seed"], registry.get("isr_curve").fits) == [
        "width",
        "isr",
    ]


def test_hand_run_analysis_rejects_runs_it_does_not_fit(tmp_path):
    """The command checks the runs too: an ISR curve of runs that also vary sigma_b."""
    runs = pd.DataFrame(
        {
            "experiment": "x",
            "run_id": ["a", "b"],
            "grid_width": 2.0,
            "grid_isr": 2.0,
            "grid_sigma_basis": [1.0, 2.0],
            "grid_seed": 0,
            "test_error": [1.0, 2.0],
        }
    )
    inputs = registry.AnalysisInputs(runs=runs)
    with pytest.raises(ScalelearnError, match="isr_curve does not fit these runs: its grid also"):
        registry.run(registry.get("isr_curve"), inputs, {"table": str(tmp_path / "t")})


def test_a_new_analysis_is_one_declaration(config, monkeypatch):
    """Declared once, it is an allowed name, a target with its outputs and a fit check."""
    new = registry.Analysis(
        name="error_by_width",
        build="scalelearn.analysis.builders:learned_scales",
        caption="x",
        fits=registry.Fits(scales="learnable"),
        table="results/tables/{experiment}_by_width",
    )
    monkeypatch.setitem(registry.ANALYSES, new.name, new)
    sl.config_schema.cache_clear()
    try:
        config = copy.deepcopy(config)
        config["experiments"]["e2"]["analyses"].append("error_by_width")
        validated = sl.validate_config(config)
        assert (new, "e2") in registry.requested(validated)
        assert new.outputs("e2") == [
            "results/tables/e2_by_width.csv",
            "results/tables/e2_by_width.tex",
        ]
        config["experiments"]["e1"]["analyses"].append("error_by_width")
        with pytest.raises(ScalelearnError, match="error_by_width does not fit experiment e1"):
            sl.validate_config(config)
    finally:
        monkeypatch.undo()
        sl.config_schema.cache_clear()
