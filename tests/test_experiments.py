"""Tests of scalelearn.experiments: the presets validate, the paper grid expands to the runs of
SPEC §8, and a wrong value stops with a message naming key, value and what is allowed."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import yaml

from scalelearn import experiments as sl
from scalelearn.errors import ScalelearnError

CONFIGS = Path(__file__).resolve().parents[1] / "config"


def raw(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "quick.yaml", "test.yaml"])
def test_presets_validate(name):
    config = sl.load_config(CONFIGS / name)
    assert sl.all_runs(config)


def test_paper_grid_is_e1_and_e2_of_spec():
    config = sl.load_config(CONFIGS / "config.yaml")
    runs = sl.all_runs(config)
    assert len(runs["e1"]) == 15 * 3 * 3 and len(runs["e2"]) == 3 * 3
    isrs = sorted({run.config["model"]["isr"] for run in runs["e1"]})
    assert isrs == pytest.approx([1.5 * 2 ** (i / 6) for i in range(15)])
    assert isrs[-1] == pytest.approx(7.56, abs=0.01)
    widths = sorted({run.config["grid"]["width"] for run in runs["e1"]})
    assert widths == pytest.approx([2**1.5, 2**2.25, 2**3])
    for run in runs["e1"]:
        model, train = run.config["model"], run.config["train"]
        assert model["name"] == "toy" and model["scale_mode"] == "fixed"
        assert model["sigma_basis"] == 2.0 and model["num_scales"] == 3
        assert model["effective_size"] == 5 and model["kernel_size_k"] == 4.0
        assert train["epochs"] == 60 and train["batch_size"] == 128
        assert train["lr_milestones"] == [20, 40] and train["scale_warmup_epochs"] == 5
    for run in runs["e2"]:
        model = run.config["model"]
        assert model["scale_mode"] == "single_ratio_squared" and model["learn_sigma_basis"]
        assert (model["isr"], model["sigma_basis"]) == (3.0, 2.0)
    ids = [run.run_id for run in runs["e1"] + runs["e2"]]
    assert len(set(ids)) == len(ids)
    assert "b2.83_isr1.5_seed0" in ids
    datasets = [d for d in sl.datasets_needed(config) if d.protocol == "scale_distribution"]
    assert len(datasets) == 9
    assert {d.params["splits"]["train"] for d in datasets} == {10000}
    assert {d.params["canvas"] for d in datasets} == {168}


def test_grid_lists_and_geometric_series():
    assert sl.geometric_values({"start": 1.5, "steps_per_octave": 2, "num": 3}) == [
        1.5,
        1.5 * math.sqrt(2),
        3.0,
    ]
    config = sl.load_config(CONFIGS / "test.yaml")
    config["experiments"]["e5"] = {
        "dataset": "mnist_scale",
        "model": {"name": "sesn"},
        "grid": [
            {"augment": ["none", "rescale"], "scale_mode": ["direct"], "seed": [0]},
            {
                "augment": ["rescale"],
                "scale_mode": ["ratio_squared"],
                "learn_sigma_basis": [True],
                "seed": [0],
            },
        ],
    }
    config = sl.validate_config(config)
    runs = sl.experiment_runs(config, "e5")
    assert [r.run_id for r in runs] == [
        "aug-none_direct_seed0",
        "aug-rescale_direct_seed0",
        "aug-rescale_ratio_squared_lsb1_seed0",
    ]
    assert runs[1].config["train"]["augment"] == "rescale"
    assert runs[2].config["model"]["learn_sigma_basis"] is True
    assert runs[0].dataset.path == "results/data/mnist_scale/sesn/seed0.npz"


@pytest.mark.parametrize(
    "path, value, expected",
    [
        (("train", "augment"), "flip", "train.augment: invalid value 'flip'; allowed: one of"),
        (("train", "epochs"), 0, "train.epochs: invalid value 0; allowed: a value >= 1"),
        (("mnist", "source"), "web", "mnist.source: invalid value 'web'; allowed: one of"),
        (
            ("experiments", "e1", "model", "scale_mode"),
            "log",
            "experiments.e1.model.scale_mode: invalid value 'log'",
        ),
        (("experiments", "e1", "model", "colour"), 1, "unknown key(s) colour"),
        (
            ("experiments", "e2", "compare_with"),
            "e9",
            "experiments.e2.compare_with: invalid value 'e9'",
        ),
    ],
)
def test_bad_values_name_key_value_and_allowed(path, value, expected):
    config = copy.deepcopy(raw("test.yaml"))
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ScalelearnError) as error:
        sl.validate_config(config)
    assert expected in str(error.value)


def test_run_config_lookup_and_unknown_run():
    config = sl.load_config(CONFIGS / "test.yaml")
    run = sl.find_run(config, "b2_seed0", "e2")
    assert run.config["dataset"] == "results/data/scale_distribution/b2/seed0.npz"
    with pytest.raises(ScalelearnError, match="scalelearn runs --config"):
        sl.find_run(config, "nope")
