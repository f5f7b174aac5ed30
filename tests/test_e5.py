"""Tests of E5 (MNIST-Scale, SPEC §5 second model, §6, §8 E5, §10.9, §11): the head's bias-free
Linear, the experiment grid of the presets, the E5 table, and the "+" augmentation in training."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from scalelearn import experiments as sl
from scalelearn.analysis import registry
from scalelearn.analysis.e5 import e5_latex, e5_table
from scalelearn.cli import main as cli_main
from scalelearn.data import datasets, mnist
from scalelearn.errors import ScalelearnError
from scalelearn.nn.models import build_model
from scalelearn.settings import MODEL_DEFAULTS
from scalelearn.train import module as train_module
from scalelearn.train import run as run_module

CONFIGS = Path(__file__).resolve().parents[1] / "config"

# SPEC §8 E5: {no aug, "+"} x {direct, learn spacing, learn ISR} x learnable σ_b {yes, no},
# direct only with a frozen σ_b.
E5_CONFIGURATIONS = {
    (augment, mode, learn)
    for augment in ("none", "rescale")
    for mode, learn in [
        ("direct", False),
        ("ratio_squared", True),
        ("ratio_squared", False),
        ("single_ratio_squared", True),
        ("single_ratio_squared", False),
    ]
}


# --- the network ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sesn", "cnn"])
def test_head_linear_380_to_256_has_no_bias(name):
    """SESN's MNIST models and the authors' code: Linear(4·95 → 256, bias=False) before BN1d."""
    model = build_model({"name": name})
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(380, 256), (256, 10)]
    assert linears[0].bias is None
    assert linears[1].bias is not None
    model.eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


# --- the experiments --------------------------------------------------------------------------


def configuration(run: sl.Run) -> tuple:
    return (
        run.config["train"]["augment"],
        run.config["model"]["scale_mode"],
        run.config["model"]["learn_sigma_basis"],
    )


def test_paper_grid_e5_is_ten_configurations_times_six_realisations():
    config = sl.load_config(CONFIGS / "config.yaml")
    runs = sl.experiment_runs(config, "e5")
    assert len(runs) == 60
    assert {configuration(run) for run in runs} == E5_CONFIGURATIONS
    for config_key in E5_CONFIGURATIONS:
        seeds = sorted(run.config["seed"] for run in runs if configuration(run) == config_key)
        assert seeds == [0, 1, 2, 3, 4, 5], config_key
    for run in runs:
        model, train = run.config["model"], run.config["train"]
        assert run.dataset.path == f"results/data/mnist_scale/sesn/seed{run.config['seed']}.npz"
        # SPEC §5: hermite_b, eff 7, N 4, ISR 2, σ_b 1.5, k 4, mult 1.4, max order 4.
        assert model["name"] == "sesn" and model["basis"] == "hermite_b"
        assert (model["effective_size"], model["num_scales"]) == (7, 4)
        assert (model["isr"], model["sigma_basis"], model["kernel_size_k"]) == (2.0, 1.5, 4.0)
        assert (model["basis_mult"], model["basis_max_order"]) == (1.4, 4)
        assert set(model) == set(MODEL_DEFAULTS["sesn"])
        # SPEC §6: Adam 0.01, 60 epochs, batch 128; E5 scale LR 0.005, warm-up 10, γ_s 0.1.
        assert (train["lr"], train["epochs"], train["batch_size"]) == (0.01, 60, 128)
        assert train["lr_milestones"] == [20, 40] and train["lr_gamma"] == 0.1
        assert (train["scale_lr"], train["scale_warmup_epochs"]) == (0.005, 10)
        assert train["scale_lr_gamma"] == 0.1 and train["scale_lr_milestones"] == [20, 40]
    datasets_needed = [d for d in sl.datasets_needed(config) if d.protocol == "mnist_scale"]
    assert [d.seed for d in datasets_needed] == [0, 1, 2, 3, 4, 5]
    params = datasets_needed[0].params
    assert params["splits"] == {"train": 10000, "val": 2000, "test": 50000}
    assert (params["scale_min"], params["scale_max"]) == (0.3, 1.0)


def test_paper_grid_baselines_are_clean_fixed_sesn_and_cnn_configs():
    config = sl.load_config(CONFIGS / "config.yaml")
    runs = sl.experiment_runs(config, "e5_baselines")
    assert len(runs) == 24
    kinds = {}
    for run in runs:
        model = run.config["model"]
        kinds.setdefault((model["name"], run.config["train"]["augment"]), []).append(
            run.config["seed"]
        )
        # Only keys that apply to the model: the CNN gets no scale keys.
        assert set(model) == set(MODEL_DEFAULTS[model["name"]]), run.run_id
        if model["name"] == "sesn":
            assert model["scale_mode"] == "fixed" and not model["learn_sigma_basis"]
            assert (model["isr"], model["sigma_basis"]) == (2.0, 1.5)
        else:
            assert model == {"name": "cnn", "kernel_size": 7}
        # Same protocol as E5.
        e5_train = sl.experiment_runs(config, "e5")[0].config["train"]
        assert {k: v for k, v in run.config["train"].items() if k != "augment"} == {
            k: v for k, v in e5_train.items() if k != "augment"
        }
    assert {k: sorted(v) for k, v in kinds.items()} == {
        (name, augment): [0, 1, 2, 3, 4, 5]
        for name in ("sesn", "cnn")
        for augment in ("none", "rescale")
    }
    assert config["experiments"]["e5"]["compare_with"] == "e5_baselines"


def test_quick_preset_runs_every_e5_configuration_once():
    config = sl.load_config(CONFIGS / "quick.yaml")
    runs = sl.experiment_runs(config, "e5")
    assert sorted(configuration(run) for run in runs) == sorted(E5_CONFIGURATIONS)
    assert "e5" in config["experiments"]["e5"]["analyses"]
    baselines = sl.experiment_runs(config, config["experiments"]["e5"]["compare_with"])
    assert {run.config["model"]["name"] for run in baselines} == {"sesn", "cnn"}


def test_ci_preset_runs_a_tiny_e5_with_and_without_plus():
    config = sl.load_config(CONFIGS / "test.yaml")
    runs = sl.experiment_runs(config, "e5")
    assert len({configuration(run) for run in runs}) >= 2
    assert {run.config["train"]["augment"] for run in runs} == {"none", "rescale"}
    assert "e5" in config["experiments"]["e5"]["analyses"]


def test_model_keys_are_checked_per_grid():
    """A list of grids may train a CNN beside a SESN; a scale key in the CNN's grid, or in the
    model section that every grid shares, does not apply to the CNN."""
    config = sl.load_config(CONFIGS / "test.yaml")
    config["experiments"]["e5_baselines"]["model"] = {"name": "sesn"}
    config["experiments"]["e5_baselines"]["grid"] = [
        {"name": ["sesn"], "scale_mode": ["fixed"], "isr": [2.0]},
        {"name": ["cnn"], "kernel_size": [5]},
    ]
    sl.validate_config(config)
    bad = copy.deepcopy(config)
    bad["experiments"]["e5_baselines"]["grid"][1]["scale_mode"] = ["fixed"]
    with pytest.raises(
        ScalelearnError, match=r"grid\[1\]\.scale_mode: does not apply to model 'cnn'"
    ):
        sl.validate_config(bad)
    bad = copy.deepcopy(config)
    bad["experiments"]["e5_baselines"]["model"]["isr"] = 2.0
    with pytest.raises(ScalelearnError, match="model.isr: does not apply to model 'cnn'"):
        sl.validate_config(bad)
    bad = copy.deepcopy(config)
    bad["experiments"]["e5_baselines"]["grid"][0]["kernel_size"] = [5]
    with pytest.raises(
        ScalelearnError, match=r"grid\[0\]\.kernel_size: does not apply to model 'sesn'"
    ):
        sl.validate_config(bad)


def test_e5_analysis_needs_mnist_scale():
    raw = sl.load_config(CONFIGS / "test.yaml")
    raw["experiments"]["e1"]["analyses"] = ["e5"]
    with pytest.raises(ScalelearnError, match="e5 does not fit experiment e1: it needs dataset"):
        sl.validate_config(raw)


# --- the table --------------------------------------------------------------------------------


def aggregated(rows: list[dict]) -> pd.DataFrame:
    """Rows in the layout of `scalelearn aggregate` (resolved config columns + summary)."""
    frame = pd.DataFrame(rows)
    frame["experiment"] = "e5"
    frame["run_id"] = [f"run{i}" for i in range(len(frame))]
    return frame


def sesn_run(augment, mode, learn, error, isr=2.0, sigma_basis=1.5, status="ok"):
    return {
        "train_augment": augment,
        "model_name": "sesn",
        "model_scale_mode": mode,
        "model_learn_sigma_basis": learn,
        "test_error": error,
        "isr": isr,
        "sigma_basis": sigma_basis,
        "scale_0": sigma_basis,
        "scale_3": sigma_basis * isr,
        "status": status,
    }


@pytest.fixture
def e5_runs() -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = aggregated(
        [
            sesn_run("rescale", "single_ratio_squared", True, 1.0, isr=3.0, sigma_basis=1.2),
            sesn_run("rescale", "single_ratio_squared", True, 2.0, isr=4.0, sigma_basis=1.4),
            sesn_run("rescale", "single_ratio_squared", True, 3.0, isr=5.0, sigma_basis=1.6),
            # A failed run (even one that wrote a test error) is not counted.
            sesn_run("rescale", "single_ratio_squared", True, 90.0, status="failed"),
            sesn_run("rescale", "single_ratio_squared", False, 1.5, isr=2.5),
            sesn_run("rescale", "single_ratio_squared", False, 2.5, isr=3.5),
            sesn_run("none", "direct", False, 4.0, isr=2.2, sigma_basis=1.3),
            sesn_run("none", "direct", False, 5.0, isr=2.4, sigma_basis=1.5),
            sesn_run("rescale", "direct", False, 1.75, isr=2.1, sigma_basis=1.45),
        ]
    )
    baselines = aggregated(
        [
            sesn_run("none", "fixed", False, 6.0),
            sesn_run("none", "fixed", False, 8.0),
            {"train_augment": "none", "model_name": "cnn", "test_error": 9.0, "status": "ok"},
            {"train_augment": "rescale", "model_name": "cnn", "test_error": 7.0, "status": "ok"},
        ]
    )
    return runs, baselines


def row(table: pd.DataFrame, augment, model, mode, learn) -> pd.Series:
    match = table[
        (table["augment"] == augment)
        & (table["model"] == model)
        & (table["scale_mode"] == mode)
        & (table["learn_sigma_basis"] == learn)
    ]
    assert len(match) == 1, (augment, model, mode, learn)
    return match.iloc[0]


def test_e5_table_means_stds_counts_and_learned_values(e5_runs):
    table = e5_table(*e5_runs)
    assert len(table) == 7
    learn_isr = row(table, "rescale", "sesn", "single_ratio_squared", True)
    assert (learn_isr["n_runs"], learn_isr["n_failed"]) == (3, 1)
    assert learn_isr["test_error_mean"] == pytest.approx(2.0)
    assert learn_isr["test_error_std"] == pytest.approx(1.0)  # sample std (ddof 1)
    assert learn_isr["isr_mean"] == pytest.approx(4.0)
    assert learn_isr["sigma_basis_mean"] == pytest.approx(1.4)
    assert learn_isr["sigma_basis_std"] == pytest.approx(0.2)
    assert learn_isr["scale_3_mean"] == pytest.approx((1.2 * 3 + 1.4 * 4 + 1.6 * 5) / 3)
    frozen = row(table, "rescale", "sesn", "single_ratio_squared", False)
    assert frozen["n_runs"] == 2 and frozen["test_error_mean"] == pytest.approx(2.0)
    assert frozen["isr_mean"] == pytest.approx(3.0)
    assert np.isnan(frozen["sigma_basis_mean"]), "σ_b frozen: not a learned value"
    direct = row(table, "none", "sesn", "direct", False)
    assert direct["test_error_std"] == pytest.approx(np.std([4.0, 5.0], ddof=1))
    assert direct["sigma_basis_mean"] == pytest.approx(1.4), "direct: every scale is free"
    fixed = row(table, "none", "sesn", "fixed", False)
    assert fixed["test_error_mean"] == pytest.approx(7.0) and fixed["n_runs"] == 2
    assert np.isnan(fixed["isr_mean"]) and np.isnan(fixed["sigma_basis_mean"])
    cnn = row(table, "rescale", "cnn", "", False)
    assert cnn["test_error_mean"] == pytest.approx(7.0) and np.isnan(cnn["test_error_std"])
    assert cnn["label"] == "CNN, +"
    assert learn_isr["label"] == "SESN, learn ISR, learnable sigma_b, +"
    # No augmentation first; within it the baselines, then the learnable modes (σ_b learnable
    # first).
    order = list(
        zip(
            table["augment"],
            table["model"],
            table["scale_mode"],
            table["learn_sigma_basis"],
            strict=True,
        )
    )
    assert order == [
        ("none", "cnn", "", False),
        ("none", "sesn", "fixed", False),
        ("none", "sesn", "direct", False),
        ("rescale", "cnn", "", False),
        ("rescale", "sesn", "direct", False),
        ("rescale", "sesn", "single_ratio_squared", True),
        ("rescale", "sesn", "single_ratio_squared", False),
    ]


def test_e5_table_quotes_the_authors_numbers_of_spec_11(e5_runs):
    """SPEC §11, E5 (5 seeds): "+" direct 1.50 ± 0.08, "+" learn ISR + learnable σ_b
    1.44 ± 0.09, other "+" ≈ 1.50, no aug 1.70–1.74; nothing for the baselines."""
    table = e5_table(*e5_runs)
    learn_isr = row(table, "rescale", "sesn", "single_ratio_squared", True)
    assert (learn_isr["authors_error_mean"], learn_isr["authors_error_std"]) == (1.44, 0.09)
    assert learn_isr["authors_error"] == "1.44 ± 0.09" and learn_isr["authors_n_runs"] == 5
    direct_plus = row(table, "rescale", "sesn", "direct", False)
    assert (direct_plus["authors_error_mean"], direct_plus["authors_error_std"]) == (1.50, 0.08)
    other_plus = row(table, "rescale", "sesn", "single_ratio_squared", False)
    assert other_plus["authors_error"] == "≈ 1.50" and np.isnan(other_plus["authors_error_mean"])
    no_aug = row(table, "none", "sesn", "direct", False)
    assert no_aug["authors_error"] == "1.70–1.74" and np.isnan(no_aug["authors_error_mean"])
    for baseline in (
        row(table, "none", "sesn", "fixed", False),
        row(table, "none", "cnn", "", False),
    ):
        assert pd.isna(baseline["authors_error"]) and pd.isna(baseline["authors_n_runs"])


def test_e5_latex_has_our_and_the_authors_columns(e5_runs):
    latex = e5_latex(e5_table(*e5_runs))
    assert "authors (\\%)" in latex and "learned ISR" in latex
    body = latex.split("\\midrule")[1].split("\\bottomrule")[0].strip().splitlines()
    assert len(body) == 7
    learn_isr = next(line for line in body if "learn ISR & learned" in line)
    assert learn_isr.startswith("+ & SESN")
    assert "$2.00 \\pm 1.00$ & $1.44 \\pm 0.09$ & $4.00 \\pm 1.00$ & $1.40 \\pm 0.20$" in learn_isr
    no_aug = next(line for line in body if "direct" in line and line.startswith("--"))
    assert "$1.70$--$1.74$" in no_aug


def test_e5_analysis_command_writes_csv_and_tex(e5_runs, tmp_path, capsys):
    runs, baselines = e5_runs
    runs.to_csv(tmp_path / "e5.csv", index=False)
    baselines.to_csv(tmp_path / "e5_baselines.csv", index=False)
    stem = tmp_path / "tables" / "e5_table"
    cli_main(
        [
            "analyse", "e5", "--runs", str(tmp_path / "e5.csv"),
            "--compare-with", str(tmp_path / "e5_baselines.csv"), "--table", str(stem),
        ]
    )  # fmt: skip
    written = pd.read_csv(stem.with_suffix(".csv"))
    assert len(written) == 7 and set(written["n_runs"]) == {1, 2, 3}
    assert stem.with_suffix(".tex").read_text().startswith("\\begin{table}")
    assert "results/tables/e5_table" == registry.get("e5").stems("e5")["table"]


def test_e5_table_counts_failed_runs_and_names_missing_columns():
    failed = aggregated([sesn_run("none", "direct", False, np.nan, status="failed")])
    table = e5_table(failed)
    assert (table["n_runs"].iloc[0], table["n_failed"].iloc[0]) == (0, 1)
    assert np.isnan(table["test_error_mean"].iloc[0])
    assert "0 (1 failed)" in e5_latex(table)
    with pytest.raises(ScalelearnError, match="train_augment"):
        e5_table(failed.drop(columns="train_augment"))


# --- the "+" augmentation in training ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_mnist_scale(tmp_path_factory):
    """A tiny MNIST-Scale realisation (28×28): 120 train / 40 val / 40 test images."""
    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_mnist_scale(images, labels, seed=0, split=(120, 40, 40))
    path = tmp_path_factory.mktemp("mnist_scale") / "seed0.npz"
    datasets.save_dataset(path, arrays, manifest)
    return str(path)


def test_plus_augmentation_is_seeded_fresh_per_batch_and_train_only(
    tiny_mnist_scale, tmp_path, monkeypatch
):
    """'+' (SPEC §7): a fresh rescale U[0.5, 2] per load of a training image, train split only,
    seeded: the same run config draws the same factors again."""
    calls: list[tuple[tuple, torch.Tensor]] = []
    original = train_module.random_rescale

    def spy(images, scale_range, generator, **kwargs):
        out, factors = original(images, scale_range, generator, **kwargs)
        calls.append((tuple(images.shape), factors.clone()))
        return out, factors

    monkeypatch.setattr(train_module, "random_rescale", spy)
    config = {
        "experiment": "unit",
        "run_id": "plus",
        "seed": 5,
        "grid": {},
        "dataset": tiny_mnist_scale,
        "model": {"name": "toy", "sigma_basis": 1.0, "isr": 2.0, "scale_mode": "fixed"},
        "train": {"epochs": 2, "batch_size": 40, "eval_batch_size": 40, "augment": "rescale",
                  "accelerator": "cpu"},
    }  # fmt: skip
    run_module.train_run(config, tmp_path / "a")
    first = list(calls)
    # 2 epochs x 3 train batches of 40; no call for the 1 val batch per epoch or the test batch.
    assert [shape for shape, _ in first] == [(40, 1, 28, 28)] * 6
    factors = torch.stack([f for _, f in first])
    assert float(factors.min()) >= 0.5 and float(factors.max()) <= 2.0
    assert len({tuple(f.tolist()) for f in factors}) == 6, "fresh factors for every batch"
    calls.clear()
    run_module.train_run(config, tmp_path / "b")
    assert torch.equal(torch.stack([f for _, f in calls]), factors), "seeded"
    calls.clear()
    run_module.train_run({**config, "seed": 6}, tmp_path / "c")
    assert not torch.equal(torch.stack([f for _, f in calls]), factors), "seed-dependent"
