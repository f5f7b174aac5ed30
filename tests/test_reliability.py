"""No silent wrong results (issue 6): a changed config never resumes an old run, a moved results
folder resumes from its own files, the thread count of the machine does not change the numbers,
a diverged run is a visible failed run, every dataset is checked against its manifest, configs
that cannot make a meaningful run are rejected before any job, and CLI mistakes get one line.

The pipeline cases (rebuild after a failure, stale tables, --configfile, --unlock) are in
tests/test_workflow.py."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from scalelearn import cli
from scalelearn import experiments as sl
from scalelearn.analysis import tables
from scalelearn.data import datasets, mnist
from scalelearn.errors import ScalelearnError
from scalelearn.train import run as run_module
from scalelearn.train.divergence import LOSS_BOUND, Diverged, check_epoch_loss, check_scales
from scalelearn.train.fingerprint import run_fingerprint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Two tiny datasets (b 1.4 and b 2 on a 32 px canvas, 200 / 100 / 100 digits) with their
    manifests, as `scalelearn data scale-distribution` writes them."""
    folder = tmp_path_factory.mktemp("data")
    images, labels, _ = mnist.load_pool("embedded")
    for width in (1.4, 2.0):
        arrays, manifest = datasets.make_scale_distribution(
            images, labels, width_b=width, seed=0, canvas=32, split=(200, 100, 100)
        )
        datasets.save_dataset(folder / f"b{width:g}.npz", arrays, manifest)
    return folder


def run_config(dataset: Path, width: float = 1.4, **train) -> dict:
    return {
        "experiment": "unit",
        "run_id": "tiny",
        "seed": 1,
        "grid": {},
        "dataset": str(dataset),
        "dataset_params": {
            "protocol": "scale_distribution",
            "seed": 0,
            "width": width,
            "canvas": 32,
            "splits": {"train": 200, "val": 100, "test": 100},
            "antialias": False,
        },
        "model": {"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0},
        "train": {
            "epochs": 2,
            "batch_size": 50,
            "lr_milestones": [5],
            "scale_warmup_epochs": 0,
            "eval_batch_size": 100,
            "accelerator": "cpu",
            **train,
        },
    }


def metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def reference_run(data_dir, tmp_path_factory):
    """The tiny run trained once, uninterrupted."""
    folder = tmp_path_factory.mktemp("reference")
    summary = run_module.train_run(run_config(data_dir / "b1.4.npz"), folder)
    return folder, summary


# --- 1. a run folder belongs to one resolved config ------------------------------------------


def test_fingerprint_covers_what_changes_numbers_and_nothing_else():
    resolved = {
        "experiment": "e1",
        "run_id": "b2_seed0",
        "grid": {"width": 2.0},
        "dataset": "results/data/x.npz",
        "dataset_params": {"width": 2.0},
        "seed": 0,
        "model": {"name": "toy", "isr": 3.0},
        "train": {"lr": 0.01, "threads": 1},
        "dataset_sha256": "aa",
    }
    base = run_fingerprint(resolved)
    for key, value in [
        ("model", {"name": "toy", "isr": 3.5}),
        ("train", {"lr": 0.001, "threads": 1}),
        ("train", {"lr": 0.01, "threads": 2}),
        ("seed", 1),
        ("dataset_sha256", "bb"),
        ("dataset_params", {"width": 4.0}),
    ]:
        assert run_fingerprint({**resolved, key: value}) != base, key
    # Labels and the place of the files do not change what the run computes.
    for key, value in [("run_id", "x"), ("experiment", "e9"), ("dataset", "/elsewhere/x.npz")]:
        assert run_fingerprint({**resolved, key: value}) == base, key


def test_changed_config_starts_fresh_instead_of_resuming(data_dir, reference_run, tmp_path):
    """Issue case 1: a finished run folder, then the same run with another lr. The old code
    restored last.ckpt (max_epochs reached) and re-tested the old model."""
    folder, summary = reference_run
    work = tmp_path / "run"
    shutil.copytree(folder, work)
    changed = run_config(data_dir / "b1.4.npz", lr=0.002)
    new = run_module.train_run(changed, work)
    config = json.loads((work / "config.json").read_text())
    assert config["train"]["lr"] == 0.002 and new["fingerprint"] == config["fingerprint"]
    assert new["fingerprint"] != summary["fingerprint"]
    assert metrics(work) != metrics(folder), "trained again, with the new lr"
    assert [row["lr"] for row in metrics(work)] == ["0.002", "0.002"]
    for name in ("last.ckpt", "best.ckpt"):
        assert run_module.checkpoint_fingerprint(work / name) == config["fingerprint"]


def test_same_config_resumes_and_a_foreign_checkpoint_is_discarded(reference_run, tmp_path):
    folder, summary = reference_run
    work = tmp_path / "run"
    shutil.copytree(folder, work)
    run_module.discard_stale_run(work, summary["fingerprint"])
    assert {"last.ckpt", "best.ckpt", "metrics.csv", "summary.json"} <= {
        p.name for p in work.iterdir()
    }
    run_module.discard_stale_run(work, "another")
    assert not any((work / name).exists() for name in run_module.RUN_OUTPUTS)


# --- 9. relocatable run folders --------------------------------------------------------------


def test_moved_run_folder_resumes_from_its_own_files(
    data_dir, reference_run, tmp_path, kill_after_epoch
):
    """Kill a run after epoch 0, move the results folder, delete the original, resume in the
    copy: it finishes with the uninterrupted run's numbers and no file points outside it."""
    folder, summary = reference_run
    original = tmp_path / "original" / "run"
    undo = kill_after_epoch(0)
    with pytest.raises(RuntimeError, match="killed"):
        run_module.train_run(run_config(data_dir / "b1.4.npz"), original)
    undo()
    moved = tmp_path / "moved" / "run"
    shutil.copytree(original, moved)
    shutil.rmtree(tmp_path / "original")
    resumed = run_module.train_run(run_config(data_dir / "b1.4.npz"), moved)
    assert metrics(moved) == metrics(folder)
    for key in ("test_acc", "best_epoch", "best_val_acc", "internal_scales"):
        assert resumed[key] == summary[key], key
    # No absolute path, and no path of the original folder, in anything the run folder holds.
    for path in moved.iterdir():
        content = (
            repr(torch.load(path, map_location="cpu", weights_only=False))
            if path.suffix == ".ckpt"
            else path.read_text()
        )
        assert str(tmp_path) not in content, path.name
        assert "/original/" not in content, path.name


# --- 4. the thread count ---------------------------------------------------------------------


def test_numbers_do_not_depend_on_the_callers_thread_count(data_dir, reference_run, tmp_path):
    """The job uses train.threads whatever the process was given (Snakemake's --cores)."""
    folder, summary = reference_run
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        again = run_module.train_run(run_config(data_dir / "b1.4.npz"), tmp_path)
        # The run trained with its own train.threads, not with the 2 it was handed (this tiny
        # run is too small for torch to split its sums, so the check is on the setting).
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert metrics(tmp_path) == metrics(folder)
    assert again["test_loss"] == summary["test_loss"]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["threads"] == 1


def test_thread_count_is_part_of_the_resolved_config():
    resolved = run_module.resolve_run_config(run_config(Path("x.npz"), threads=2))
    assert resolved["train"]["threads"] == 2
    schema_train = sl.load_schema()["properties"]["train"]["properties"]
    assert schema_train["threads"]["default"] == run_module.TRAIN_DEFAULTS["threads"]
    assert "--threads" not in (REPO / "workflow/rules/train.smk").read_text()


# --- 5. divergence ---------------------------------------------------------------------------


def test_finite_blow_up_is_a_diverged_run(data_dir, tmp_path, capsys):
    """lr 1e6 trains to an astronomic but finite loss: status diverged, reason, exit 0."""
    config = run_config(data_dir / "b1.4.npz", lr=1e6, epochs=1)
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(config))
    cli.main(["train", "--run-config", str(config_path), "--out", str(tmp_path / "run")])
    assert "DIVERGED" in capsys.readouterr().out
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "diverged" and summary["reason"]
    assert "test_error" not in summary


def test_divergence_criterion():
    check_epoch_loss(math.log(10), 0)
    check_epoch_loss(LOSS_BOUND * 0.99, 3)
    for loss in (LOSS_BOUND * 1.01, 1e14, math.nan, math.inf):
        with pytest.raises(Diverged):
            check_epoch_loss(loss, 2)
    check_scales([0.5, 1.0, 168.0], 168, 0)
    for scales in ([0.0, 1.0], [1.0, 169.0], [1.0, math.nan]):
        with pytest.raises(Diverged):
            check_scales(scales, 168, 0)


def aggregate_rows() -> pd.DataFrame:
    rows = []
    for width in (2.0, 4.0):
        for isr, seed, status, error in [
            (1.5, 0, "ok", 10.0),
            (1.5, 1, "ok", 12.0),
            (3.0, 0, "ok", 30.0),
            (3.0, 1, "diverged", math.nan),
        ]:
            rows.append(
                {
                    "run_id": f"b{width}_isr{isr}_seed{seed}",
                    "status": status,
                    "grid_width": width,
                    "grid_isr": isr,
                    "grid_seed": seed,
                    "test_error": error,
                }
            )
    return pd.DataFrame(rows)


def test_tables_count_failed_runs_and_never_average_them():
    runs = aggregate_rows()
    # A diverged run with a (bogus) tiny error must neither be averaged nor become the best.
    runs.loc[runs["status"] == "diverged", "test_error"] = 0.1
    curve = tables.isr_curve_table(runs)
    cell = curve[(curve["width"] == 2.0) & (curve["isr"] == 3.0)].iloc[0]
    assert (cell["n_runs"], cell["n_failed"]) == (1, 1)
    assert cell["test_error_mean"] == 30.0 and not cell["best"]
    assert curve[curve["best"]]["isr"].tolist() == [1.5, 1.5]
    assert "1 of 2 failed" in tables.isr_curve_latex(curve)
    # Every run of a cell failed: the cell stays, with no numbers.
    runs.loc[runs["grid_isr"] == 3.0, "status"] = "diverged"
    curve = tables.isr_curve_table(runs)
    empty = curve[curve["isr"] == 3.0]
    assert empty["n_runs"].tolist() == [0, 0] and empty["n_failed"].tolist() == [2, 2]
    assert empty["test_error_mean"].isna().all() and not empty["best"].any()


def test_learned_scales_table_counts_failed_runs():
    runs = pd.DataFrame(
        {
            "status": ["ok", "diverged"],
            "grid_width": [2.0, 2.0],
            "test_error": [5.0, math.nan],
            "sigma_basis": [1.0, math.nan],
            "isr": [3.0, math.nan],
            "scale_0": [1.0, math.nan],
        }
    )
    table = tables.learned_scales_table(runs)
    assert table[["n_runs", "n_failed"]].iloc[0].tolist() == [1, 1]
    assert table["test_error_mean"].iloc[0] == 5.0
    # Only failed runs, so no numeric column at all in the aggregate: still a table.
    only_failed = pd.DataFrame({"status": ["diverged"], "grid_width": [2.0]})
    assert tables.learned_scales_table(only_failed)["n_failed"].tolist() == [1]


# --- 3. every dataset is checked against its manifest ------------------------------------------


def test_replaced_or_truncated_dataset_is_refused(data_dir, tmp_path):
    """Issue case 3: b4 copied over b2 trained silently. The file alone: its sha256 differs from
    the manifest; with its manifest: the manifest's width differs from the run's."""
    for name in ("b1.4.npz", "b1.4.json", "b2.npz", "b2.json"):
        shutil.copy(data_dir / name, tmp_path / name)
    config = run_config(tmp_path / "b1.4.npz")
    run_module.resolve_run_config(config)
    datasets.verify_dataset(tmp_path / "b1.4.npz", config["dataset_params"])
    shutil.copy(tmp_path / "b2.npz", tmp_path / "b1.4.npz")
    with pytest.raises(ScalelearnError, match=r"does not match its manifest .* delete .*b1\.4"):
        run_module.train_run(config, tmp_path / "run")
    shutil.copy(tmp_path / "b2.json", tmp_path / "b1.4.json")
    with pytest.raises(ScalelearnError, match="made with width = 2.0, but the run expects 1.4"):
        run_module.train_run(config, tmp_path / "run")
    data = (data_dir / "b2.npz").read_bytes()
    (tmp_path / "b2.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScalelearnError, match="corrupt or was replaced"):
        datasets.verify_dataset(tmp_path / "b2.npz")
    assert not (tmp_path / "run/summary.json").exists()


@pytest.mark.parametrize(
    "key, value",
    [("seed", 1), ("canvas", 40), ("splits", {"train": 100, "val": 100, "test": 100})],
)
def test_dataset_parameters_must_match_the_run(data_dir, key, value):
    expected = {**run_config(data_dir / "b1.4.npz")["dataset_params"], key: value}
    with pytest.raises(ScalelearnError, match=f"made with {key} = .* run expects"):
        datasets.verify_dataset(data_dir / "b1.4.npz", expected)


def test_run_configs_carry_their_dataset_parameters():
    config = sl.load_config(REPO / "config/test.yaml")
    run = sl.experiment_runs(config, "e1")[0]
    params = run.config["dataset_params"]
    assert params["protocol"] == "scale_distribution" and params["seed"] == run.dataset.seed
    assert params["canvas"] == 56 and params["width"] == run.config["grid"]["width"]


# --- 7. configs rejected before any job starts ---------------------------------------------


def preset() -> dict:
    return yaml.safe_load((REPO / "config/test.yaml").read_text())


def edit(config: dict, path: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


BAD_CONFIGS = [
    ("experiments.e1.grid.isr", [math.inf], "experiments.e1.grid.isr[0]: invalid value inf"),
    ("experiments.e1.grid.isr", [math.nan], "experiments.e1.grid.isr[0]: invalid value nan"),
    ("train.lr", math.inf, "train.lr: invalid value inf; allowed: a finite number"),
    (
        "experiments.e1.grid.isr",
        {"start": 1.5, "steps_per_octave": 1e-9, "num": 2},
        "experiments.e1.grid.isr: the geometric series",
    ),
    (
        "experiments.e1.grid.isr",
        {"start": 0.5, "steps_per_octave": 2, "num": 2},
        "reaches 0.5; allowed: finite values with value >= 1",
    ),
    ("experiments.e1.model.name", "sesn", "model 'sesn' needs 28x28 input"),
    ("experiments.e1.model.kernel_size", 5, "e1.model.kernel_size: does not apply to model 'toy'"),
    ("experiments.e1.model.basis_mult", 1.2, "only used by basis hermite_b"),
    (
        "experiments.e2.compare_with",
        "e2",
        "compare_with: invalid value 'e2' (the experiment itself)",
    ),
    ("experiments.e1.compare_with", "e2", "compare_with is not used by any analysis"),
    ("experiments.e1.grid.sigma_basis", [1.0, 2.0], "also varies sigma_basis, which this analysis"),
    (
        "experiments.e2.model",
        {"name": "toy"},
        "learned_scales does not fit experiment e2: it needs learnable scales",
    ),
    ("experiments.e2.model.scale_mode", "direct", "no effect with scale_mode direct"),
    ("datasets.scale_distribution.widths_octaves", [0.5, 2.0], "leaves the 56 px canvas"),
    ("datasets.mnist_scale.scale_max", 2.0, "leave the 28 px canvas"),
    ("datasets.mnist_scale.scale_min", 1.0, "allowed: a value <= scale_max"),
    ("experiments.e1.model.sigma_basis", 30.0, "more than the 56 px input"),
    ("train.batch_size", 1, "batch_size 1 cannot train model 'sesn'"),
    (
        "experiments.e1.model.sigma_basis",
        0.2,
        "sigma_basis 0.2 px is below 0.4 px, the smallest internal scale at which the Hermite "
        "basis is defined with kernel_size_k 4",
    ),
    (
        "experiments.e1.model.kernel_size_k",
        0.5,
        "with kernel_size_k 0.5 (max(0.4, 1/k): below it the smallest scale's support can be 1 px",
    ),
]


@pytest.mark.parametrize("path, value, message", BAD_CONFIGS)
def test_meaningless_configs_are_rejected(path, value, message):
    if path == "datasets.mnist_scale.scale_min":
        config = edit(preset(), "datasets.mnist_scale.scale_max", 0.5)
        config = edit(config, path, value)
    else:
        config = edit(preset(), path, value)
    with pytest.raises(ScalelearnError) as error:
        sl.validate_config(config)
    assert message in str(error.value)


def test_model_keys_that_do_not_apply_in_a_grid_or_to_cnn():
    config = edit(preset(), "experiments.e3", {"dataset": "mnist_scale", "model": {"name": "cnn"}})
    sl.validate_config(config)
    bad = edit(config, "experiments.e3.model.isr", 2.0)
    with pytest.raises(ScalelearnError, match="e3.model.isr: does not apply to model 'cnn'"):
        sl.validate_config(bad)
    bad = edit(preset(), "experiments.e2.grid.kernel_size", [3])
    with pytest.raises(ScalelearnError, match="e2.grid.kernel_size: does not apply to model"):
        sl.validate_config(bad)


def test_yaml_infinity_is_rejected_from_a_file(tmp_path):
    text = (REPO / "config/test.yaml").read_text().replace("isr: [1.5, 3.0]", "isr: [.inf]")
    path = tmp_path / "inf.yaml"
    path.write_text(text)
    with pytest.raises(ScalelearnError, match=r"grid.isr\[0\]: invalid value inf"):
        sl.load_config(path)


# --- 8. command-line mistakes: one line, non-zero exit --------------------------------------


def cli_error(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    captured = capsys.readouterr()
    return stop.value.code, captured.err


def test_cli_mistakes_give_one_line(tmp_path, capsys, data_dir):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.json").write_bytes(b"\x00\xff\xfe\x01")
    (tmp_path / "empty.csv").write_text("")
    pool = ["--pool", str(tmp_path / "pool.npz"), "--width", "2"]

    def inline(**changes):
        config = run_config(data_dir / "b1.4.npz")
        for key, value in changes.items():
            section, _, name = key.partition("__")
            if name:
                config[section][name] = value
            else:
                config[section] = value
        return json.dumps(config)

    out = ["--out", str(tmp_path / "run")]
    cases = [
        (["data", "pool", "--source", "embedded", "--out", str(tmp_path / "afile/p.npz")], "afile"),
        (["data", "scale-distribution", *pool, "--seed", "-1", "--out", "x.npz"], "--seed"),
        (
            [
                "data",
                "scale-distribution",
                *pool,
                "--seed",
                "0",
                "--split",
                "10",
                "0",
                "10",
                "--out",
                "x.npz",
            ],
            "--split",
        ),
        (["bench", "--threads", "-2"], "--threads"),
        (["train", "--run-config", inline(model__scale_mode="log"), *out], "model.scale_mode"),
        (["train", "--run-config", inline(colour=1), *out], "unknown key(s) colour"),
        (["train", "--run-config", inline(train__threads=0), *out], "train.threads"),
        (["train", "--run-config", inline(seed=-1), *out], "seed"),
        (["train", "--run-config", str(tmp_path / "binary.json"), *out], "not a text"),
        (["train", "--run-config", "[1]", *out], "neither inline JSON"),
        (["analyse", "isr_curve", "--runs", str(tmp_path / "empty.csv"), "--table", "t"], "empty"),
        (["runs", "--config", str(tmp_path / "binary.json")], "not valid YAML"),
        (["aggregate", "--out", str(tmp_path / "a.csv"), str(tmp_path / "afile")], "afile"),
    ]
    for argv, fragment in cases:
        code, err = cli_error(argv, capsys)
        assert code != 0, argv
        assert len(err.strip().splitlines()) == 1, (argv, err)
        assert fragment in err and "Traceback" not in err, (argv, err)


def test_unwritable_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code, err = cli_error(
        ["data", "pool", "--source", "embedded", "--out", str(tmp_path / "ro/pool.npz")], capsys
    )
    assert code == 1 and "Permission denied" in err and len(err.strip().splitlines()) == 1


# --- 6. the README says what to do after a kill, a corrupt dataset, a divergence ------------


def test_readme_troubleshooting_names_the_fixes():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    for phrase in ("LockException", "snakemake --unlock", "diverged", "sha256", "starting fresh"):
        assert phrase in section, phrase


def test_replaced_pool_is_refused(tmp_path):
    images, labels, info = mnist.load_pool("embedded")
    mnist.save_pool(tmp_path / "pool.npz", images, labels, info)
    mnist.read_pool(tmp_path / "pool.npz")
    mnist.save_pool(tmp_path / "other.npz", images[:100], labels[:100], info)
    shutil.copy(tmp_path / "other.npz", tmp_path / "pool.npz")
    with pytest.raises(ScalelearnError, match="does not match the sha256 of its manifest"):
        mnist.read_pool(tmp_path / "pool.npz")
