"""Tests of scalelearn.train: a tiny run learns and writes its folder, the reported scales are the
best checkpoint's, a killed run resumes to the same numbers, the schedules, the command line."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np
import pytest
import torch

from scalelearn.data import datasets, mnist
from scalelearn.errors import ScalelearnError
from scalelearn.nn.models import build_model
from scalelearn.train import run as run_module
from scalelearn.train.cli import read_run_config
from scalelearn.train.config import TrainConfig
from scalelearn.train.module import main_lr_factor, scale_lr_factor

RUN_FILES = {"config.json", "metrics.csv", "summary.json", "best.ckpt", "last.ckpt"}


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """Real digits on a 40 px canvas, scales LogUniform[1, 1.4]: 600 / 200 / 200 images."""
    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_scale_distribution(
        images, labels, width_b=1.4, seed=0, canvas=40, split=(600, 200, 200)
    )
    path = tmp_path_factory.mktemp("data") / "b1.4.npz"
    datasets.save_dataset(path, arrays, manifest)
    return str(path)


def run_config(dataset: str, **train) -> dict:
    return {
        "experiment": "unit",
        "run_id": "tiny",
        "seed": 3,
        "grid": {},
        "dataset": dataset,
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "sigma_basis": 1.0,
            "isr": 2.0,
            "learn_sigma_basis": True,
            "implementation": "dense",
        },
        "train": {
            "epochs": 3,
            "batch_size": 40,
            "lr_milestones": [2],
            "scale_lr": 0.05,
            "scale_lr_milestones": [2],
            "scale_warmup_epochs": 1,
            "eval_batch_size": 100,
            "accelerator": "cpu",
            **train,
        },
    }


def read_metrics(folder) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    summary = run_module.train_run(run_config(tiny_dataset), folder)
    return folder, summary


def test_tiny_run_learns_and_writes_every_file(tiny_run):
    folder, summary = tiny_run
    assert RUN_FILES <= {p.name for p in folder.iterdir()}
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    assert summary["test_acc"] > 0.5, "10 classes: chance is 0.1"
    assert math.isclose(summary["test_error"], 100 * (1 - summary["test_acc"]))
    assert json.loads((folder / "summary.json").read_text()) == summary
    rows = read_metrics(folder)
    assert [row["epoch"] for row in rows] == [0, 1, 2]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "scale_lr", "isr"):
        assert all(math.isfinite(row[key]) for row in rows), key
    # Schedules as configured: scale LR warms up from 0, both decay at epoch 2.
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.01, 0.001])
    assert rows[0]["scale_lr"] == 0 and rows[1]["scale_lr"] == pytest.approx(0.05)
    assert rows[2]["scale_lr"] == pytest.approx(0.05 * 0.75)
    # The scales were learned (moved from their initialisation 1, 2).
    assert rows[-1]["scale_0"] != pytest.approx(1.0, abs=1e-4)
    config = json.loads((folder / "config.json").read_text())
    assert config["train"]["lr_gamma"] == 0.1, "the resolved config holds the defaults"


def test_reported_scales_are_those_of_the_best_checkpoint(tiny_run):
    folder, summary = tiny_run
    checkpoint = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == summary["best_epoch"]
    model = build_model(run_config("")["model"])
    state = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    model.load_state_dict(state)
    report = model.scale_report()
    assert summary["internal_scales"] == pytest.approx(report["internal_scales"], rel=1e-6)
    assert summary["isr"] == pytest.approx(report["isr"], rel=1e-6)
    row = read_metrics(folder)[summary["best_epoch"]]
    assert [row[f"scale_{i}"] for i in range(3)] == pytest.approx(summary["internal_scales"])
    assert row["val_acc"] == pytest.approx(summary["best_val_acc"])


def test_killed_run_resumes_to_the_same_numbers(tiny_dataset, tiny_run, tmp_path, kill_after_epoch):
    """Kill after the second epoch's checkpoint, start again: same metrics as an unbroken run."""
    folder, summary = tiny_run
    undo = kill_after_epoch(1)
    with pytest.raises(RuntimeError, match="killed"):
        run_module.train_run(run_config(tiny_dataset), tmp_path)
    assert not (tmp_path / "summary.json").exists()
    assert (tmp_path / "last.ckpt").exists()
    undo()
    resumed = run_module.train_run(run_config(tiny_dataset), tmp_path)
    assert read_metrics(tmp_path) == read_metrics(folder)
    for key in ("test_acc", "best_epoch", "internal_scales"):
        assert resumed[key] == summary[key], key


def test_finished_run_started_again_writes_its_metrics_again(tiny_dataset, tiny_run, tmp_path):
    """Snakemake deletes a job's outputs (metrics.csv) before running it again; a finished run
    then trains no epoch but must still leave its metrics.csv, from the checkpoint's rows."""
    import shutil

    folder, summary = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    (copy / "metrics.csv").unlink()
    (copy / "summary.json").unlink()
    again = run_module.train_run(run_config(tiny_dataset), copy)
    assert read_metrics(copy) == read_metrics(folder)
    assert again["test_acc"] == summary["test_acc"]


def test_profiled_run_reports_its_loop_with_the_same_numbers(tiny_dataset, tiny_run, tmp_path):
    """--profiler simple: Lightning's report of the loop in the run folder; nothing else changes."""
    folder, summary = tiny_run
    profiled = run_module.train_run(run_config(tiny_dataset), tmp_path, profiler="simple")
    report = (tmp_path / "fit-profile.txt").read_text()
    assert "run_training_batch" in report and "save_checkpoint" in report
    assert (tmp_path / "test-profile.txt").is_file()
    assert read_metrics(tmp_path) == read_metrics(folder)
    assert profiled["test_acc"] == summary["test_acc"]
    assert profiled["device"] == summary["device"] == "cpu"
    with pytest.raises(ScalelearnError, match="unknown profiler 'fast'"):
        run_module.train_run(run_config(tiny_dataset), tmp_path / "other", profiler="fast")
    assert not (tmp_path / "other").exists()


def test_training_skips_the_nan_fill_of_new_tensors_with_the_same_numbers(
    tiny_dataset, tmp_path, monkeypatch, fresh_determinism
):
    """Deterministic training, but without torch's NaN fill of every torch.empty tensor (a sixth
    of a CPU training step): nothing reads memory it did not write, so a run with the fill gives
    the same numbers bit for bit (with NaN in unwritten memory, it would not)."""
    config = run_config(tiny_dataset, epochs=2)
    config["model"]["implementation"] = "fast"
    summary = run_module.train_run(config, tmp_path / "without")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    monkeypatch.setattr(run_module, "FILL_UNINITIALIZED_MEMORY", True)
    filled = run_module.train_run(config, tmp_path / "with")
    assert torch.utils.deterministic.fill_uninitialized_memory is True
    assert read_metrics(tmp_path / "with") == read_metrics(tmp_path / "without")
    assert filled["test_acc"] == summary["test_acc"] and filled["test_loss"] == summary["test_loss"]


def test_training_determinism_on_a_gpu_warns_instead_of_failing(monkeypatch, fresh_determinism):
    """The GPU branch, checked on the CPU: deterministic algorithms only warn there (some CUDA
    kernels, max-pool's backward among them, have no deterministic version), cuBLAS gets its
    reproducible workspace, and new tensors are not filled with NaN."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    run_module.training_determinism(on_cpu=False)
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_non_finite_loss_marks_the_run_diverged(tiny_dataset, tmp_path):
    config = run_config(tiny_dataset, epochs=1, lr=1e30)
    summary = run_module.train_run(config, tmp_path)
    assert summary["status"] == "diverged" and "training loss became" in summary["reason"]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert "test_error" not in summary, "a diverged run reports no test numbers"


def test_schedules_step_by_real_steps_per_epoch():
    train = TrainConfig(
        lr_milestones=[20, 40],
        lr_gamma=0.1,
        scale_warmup_epochs=5,
        scale_lr_milestones=[20, 40],
        scale_lr_gamma=0.75,
    )
    steps = 79  # 10,000 images, batch 128
    main = [main_lr_factor(e * steps, steps, train) for e in (0, 19, 20, 39, 40, 59)]
    assert main == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    scale = [scale_lr_factor(s, steps, train) for s in (0, steps * 5 // 2, 5 * steps, 20 * steps)]
    assert scale == pytest.approx([0, (5 * steps // 2) / steps / 5, 1, 0.75])
    assert np.isclose(scale_lr_factor(40 * steps, steps, train), 0.75**2)


def test_bad_inputs_name_the_problem(tmp_path):
    with pytest.raises(ScalelearnError, match="neither inline JSON nor an existing file"):
        read_run_config("missing.json")
    with pytest.raises(ScalelearnError, match="no 'dataset' key"):
        read_run_config('{"model": {}}')
    config = run_config(str(tmp_path / "nowhere.npz"))
    with pytest.raises(ScalelearnError, match="does not exist; build it first"):
        run_module.train_run(config, tmp_path / "run")
    with pytest.raises(ScalelearnError, match="train.augment"):
        run_module.resolve_train_config({"augment": "flip"})


# --- a last training batch of one image ---------------------------------------------------------


def test_train_loader_leaves_out_only_a_last_batch_of_one_image():
    """Train split ≡ 1 mod batch size: the single-image last batch is left out of each epoch
    (BatchNorm1d cannot train on it), every other image is used, and the image left out changes
    with the epoch. Any other split size gives the batches of a plain loader, unchanged."""
    from scalelearn.data.loader import Batches
    from scalelearn.train.datamodule import ScaleDataModule

    def arrays(n: int) -> dict:
        # Image i holds the value i in its first pixel, so each batch says which images it has.
        images = np.zeros((n, 4, 4), np.uint8)
        images[:, 0, 0] = np.arange(n)
        split = {f"{s}_{k}": v for s in ("val", "test") for k, v in (("images", images[:2]),)}
        split |= {"val_labels": np.zeros(2, np.int64), "test_labels": np.zeros(2, np.int64)}
        return {"train_images": images, "train_labels": np.arange(n) % 10, **split}

    left_out = set()
    for epoch in range(4):
        loader = ScaleDataModule(arrays(21), batch_size=4, seed=3).train_dataloader()
        loader.set_epoch(epoch)
        batches = [images[:, 0, 0, 0].tolist() for images, _ in loader]
        assert len(loader) == len(batches) == 5 and all(len(b) == 4 for b in batches)
        used = [i for b in batches for i in b]
        assert len(set(used)) == len(used) == 20
        left_out |= set(range(21)) - set(used)
    assert len(left_out) > 1, "a different image is left out in different epochs"
    for n in (20, 22, 23):
        loader = ScaleDataModule(arrays(n), batch_size=4, seed=3).train_dataloader()
        plain = Batches(arrays(n)["train_images"], np.arange(n) % 10, 4, shuffle=True, seed=3)
        assert len(loader) == len(plain) == math.ceil(n / 4)
        for (images, labels), (expected, expected_labels) in zip(loader, plain, strict=True):
            assert torch.equal(images, expected) and torch.equal(labels, expected_labels)


def test_sesn_trains_when_the_last_batch_has_one_image(tmp_path, monkeypatch):
    """SESNNet (BatchNorm1d in its head) on a train split of 9 images in batches of 4: the run
    finishes, each epoch trains on two batches of 4 different images (8 of the 9)."""
    from scalelearn.train.module import ScaleLearner

    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_mnist_scale(images, labels, seed=0, split=(9, 4, 4))
    path = tmp_path / "seed0.npz"
    datasets.save_dataset(path, arrays, manifest)
    seen: list[torch.Tensor] = []
    training_step = ScaleLearner.training_step

    def recording_step(self, batch, batch_idx):
        seen.append(batch[0].clone())
        return training_step(self, batch, batch_idx)

    monkeypatch.setattr(ScaleLearner, "training_step", recording_step)
    config = run_config(str(path), epochs=2, batch_size=4, eval_batch_size=4)
    config["model"] = {
        "name": "sesn",
        "scale_mode": "single_ratio_squared",
        "learn_sigma_basis": True,
        "sigma_basis": 0.6,
        "isr": 1.5,
        "num_scales": 2,
        "effective_size": 3,
    }
    summary = run_module.train_run(config, tmp_path / "run")
    assert summary["status"] == "ok"
    assert [len(batch) for batch in seen] == [4, 4, 4, 4]
    train = torch.from_numpy(arrays["train_images"])
    for epoch in (seen[:2], seen[2:]):
        used = [int((train == image[0]).all((1, 2)).nonzero()) for b in epoch for image in b]
        assert len(set(used)) == 8
