"""Tests of `scalelearn evaluate`, the in-depth per-scale test (SPEC §7 last paragraph, §10.4):
45 log-spaced scales 2^-1 ... 2^3.5, a seeded subsample of the test digits, the train
normalisation, one row per scale."""

from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch

from scalelearn import allocator
from scalelearn.cli import main
from scalelearn.data import datasets, mnist
from scalelearn.data.in_depth import select_digits
from scalelearn.data.loader import train_statistics
from scalelearn.data.rescale import rescale_uint8
from scalelearn.errors import ScalelearnError
from scalelearn.train import evaluate as evaluate_command
from scalelearn.train.evaluate import evaluate_per_scale
from scalelearn.train.module import ScaleLearner
from scalelearn.train.run import train_run


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A one-epoch toy run on real digits (32 px canvas, LogUniform[1, 2])."""
    root = tmp_path_factory.mktemp("evaluate")
    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_scale_distribution(
        images, labels, width_b=2.0, seed=0, canvas=32, split=(300, 100, 60)
    )
    dataset = root / "b2.npz"
    datasets.save_dataset(dataset, arrays, manifest)
    config = {
        "experiment": "e1",
        "run_id": "b2_isr2_seed5",
        "seed": 5,
        "grid": {"width": 2.0, "isr": 2.0, "seed": 5},
        "dataset": str(dataset),
        "model": {"name": "toy", "scale_mode": "fixed", "sigma_basis": 1.0, "isr": 2.0},
        "train": {"epochs": 1, "batch_size": 50, "lr_milestones": [1], "accelerator": "cpu"},
    }
    folder = root / "runs/e1/b2_isr2_seed5"
    train_run(config, folder)
    return folder, arrays


def test_command_writes_one_row_per_scale_at_the_papers_45_scales(trained_run, capsys):
    folder, _ = trained_run
    main(["evaluate", "--run", str(folder), "--test-subsample", "7", "--batch-size", "4"])
    with open(folder / "per_scale.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["scale_index", "scale", "n", "errors", "error"]
    assert len(rows) == 45
    scales = np.array([float(row["scale"]) for row in rows])
    assert scales[0] == pytest.approx(0.5) and scales[-1] == pytest.approx(2**3.5)
    assert np.diff(np.log2(scales)) == pytest.approx(np.full(44, 4.5 / 44))
    for row in rows:
        assert int(row["n"]) == 7 and 0 <= int(row["errors"]) <= 7
        assert float(row["error"]) == pytest.approx(100 * int(row["errors"]) / 7)
    assert "45 scales x 7 digits" in capsys.readouterr().out


def test_command_lets_malloc_reuse_freed_memory_first(trained_run, monkeypatch, tmp_path):
    """The 45 scales' forward passes allocate and free the same large blocks; with glibc's
    defaults each is mapped afresh, and the quick preset's per-scale test took twice as long
    (issue #9). The command sets the allocator as training does, before it evaluates."""
    calls = []
    monkeypatch.setattr(allocator, "reuse_freed_memory", lambda: calls.append("reuse"))
    evaluate = evaluate_command.evaluate_per_scale
    monkeypatch.setattr(
        evaluate_command,
        "evaluate_per_scale",
        lambda *args, **kwargs: calls.append("evaluate") or evaluate(*args, **kwargs),
    )
    folder, _ = trained_run
    out = tmp_path / "per_scale.csv"
    main(["evaluate", "--run", str(folder), "--test-subsample", "3", "--out", str(out)])
    assert calls == ["reuse", "evaluate"] and out.is_file()


def test_command_runs_without_importing_lightning(trained_run, tmp_path):
    """Importing Lightning took about 3 of the 9 s of each quick-preset per-scale test (issue #9):
    the command loads the network from the checkpoint without it (its counts are checked against
    ScaleLearner's own loading below)."""
    folder, _ = trained_run
    out = tmp_path / "per_scale.csv"
    argv = ["evaluate", "--run", str(folder), "--test-subsample", "2", "--out", str(out)]
    script = (
        "import sys\n"
        "from scalelearn.cli import main\n"
        f"main({argv!r})\n"
        "assert 'pytorch_lightning' not in sys.modules, 'Lightning was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file()


def test_counts_equal_an_independent_evaluation_with_train_statistics(trained_run):
    """Render the subsampled digits at a few scales by hand, normalise with the train split's
    statistics and count the model's mistakes: the same numbers as the per-scale test, whatever
    the batch size."""
    folder, arrays = trained_run
    rows = evaluate_per_scale(folder, test_subsample=12, batch_size=5)
    module = ScaleLearner.load_from_checkpoint(folder / "best.ckpt", map_location="cpu").eval()
    mean, std = train_statistics(arrays["train_images"])
    index = select_digits(len(arrays["test_digits"]), 12, seed=5)
    digits = torch.from_numpy(arrays["test_digits"][index])
    labels = torch.from_numpy(arrays["test_labels"][index])
    for scale_index in (0, 12, 44):
        scale = rows[scale_index]["scale"]
        factors = torch.full((12,), scale, dtype=torch.float64)
        images = rescale_uint8(digits, factors, 32).unsqueeze(1).float() / 255.0
        with torch.no_grad():
            predicted = module.model((images - mean) / std).argmax(1)
        assert rows[scale_index]["errors"] == int((predicted != labels).sum()), scale
    assert evaluate_per_scale(folder, test_subsample=12, batch_size=12) == rows


def test_a_run_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ScalelearnError, match="best.ckpt not found; train the run first"):
        evaluate_per_scale(tmp_path)


def test_a_failed_run_gets_no_numbers(tmp_path):
    (tmp_path / "summary.json").write_text('{"status": "diverged", "reason": "loss nan"}')
    rows = evaluate_per_scale(tmp_path)
    assert len(rows) == 45 and all(row["n"] == 0 and np.isnan(row["error"]) for row in rows)
