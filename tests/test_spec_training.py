"""SPEC §2, §3, §6 and §7 held in real (tiny) training runs through `train_run`.

- Model selection: a run built so that its best validation epoch is neither the first nor the
  last (the main LR jumps ×30 at epoch 2 and knocks the weights about); the test metrics, the val
  metrics and the reported scales must be the best checkpoint's, evaluated here independently.
- Normalisation: train and val/test come from different scale distributions, so their pixel
  statistics differ and per-split normalisation would change every number.
- K follows σ_max in every epoch; both schedules with their own milestones and γ; the warm-up;
  the scale parameter group; the projection after every optimiser step; NaN scales fail.
- The "+" augmentation: a dataset of one blob repeated, so every training input must be that blob
  rescaled by its own factor, which is measured back from the pixels.
"""

from __future__ import annotations

import csv
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from scalelearn.data import datasets, mnist
from scalelearn.data.rescale import rescale_about_centre
from scalelearn.errors import ScalelearnError
from scalelearn.nn.models import MODEL_DEFAULTS, build_model
from scalelearn.nn.scales import MIN_SCALE, InternalScales
from scalelearn.train.config import TrainConfig
from scalelearn.train.module import ScaleLearner, main_lr_factor, scale_lr_factor
from scalelearn.train.run import train_run

CANVAS = 36


# ------------------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def pool():
    images, labels, _ = mnist.load_pool("embedded")
    return images, labels


def save(path: Path, arrays: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.save_dataset(path, arrays, {"protocol": "unit test"})
    return str(path)


@pytest.fixture(scope="module")
def shifted_dataset(pool, tmp_path_factory) -> str:
    """Train: 200 digits at scales in [1, 1.25]; val and test: 100 each at scales in [1, 1.8]
    (other digits). The larger digits hold more ink: the splits' statistics differ."""
    images, labels = pool
    small, _ = datasets.make_scale_distribution(
        images, labels, width_b=1.25, seed=0, canvas=CANVAS, split=(200, 10, 10)
    )
    large, _ = datasets.make_scale_distribution(
        images, labels, width_b=1.8, seed=1, canvas=CANVAS, split=(10, 100, 100)
    )
    arrays = {k: (small if k.startswith("train") else large)[k] for k in datasets.DATASET_KEYS}
    for split in ("val", "test"):
        assert arrays[f"{split}_images"].mean() > 1.2 * arrays["train_images"].mean()
    return save(tmp_path_factory.mktemp("data") / "shifted.npz", arrays)


def run_config(dataset: str, model: dict, **train) -> dict:
    return {
        "experiment": "spec",
        "run_id": "unit",
        "seed": 0,
        "grid": {},
        "dataset": dataset,
        "model": {"name": "toy", "sigma_basis": 1.0, "isr": 2.0, **model},
        "train": {
            "epochs": 2,
            "batch_size": 20,
            "eval_batch_size": 100,
            "accelerator": "cpu",
            **train,
        },
    }


def read_metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv") as handle:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def row_scales(row: dict) -> list[float]:
    return [row[f"scale_{i}"] for i in range(3)]


def kernel_size_rule(scales: list[float], k: float = MODEL_DEFAULTS["toy"]["kernel_size_k"]):
    """SPEC §2: K = max(3, 2·⌈k·σ_max⌉ + 1)."""
    return max(3, 2 * math.ceil(round(k * max(scales), 4)) + 1)


class Probe:
    """Records what `configure_optimizers` built: the learner and its optimiser."""

    learner = None
    optimizer = None

    def scale_modules(self) -> list[InternalScales]:
        return [m for m in self.learner.modules() if isinstance(m, InternalScales)]

    def groups(self) -> list[tuple[float, set[int]]]:
        """(initial lr, {id(param)}) of every parameter group."""
        return [
            (g.get("initial_lr", g["lr"]), {id(p) for p in g["params"]})
            for g in self.optimizer.param_groups
        ]


@contextmanager
def probed(monkeypatch=None):
    patch = monkeypatch or pytest.MonkeyPatch()
    probe = Probe()
    original = ScaleLearner.configure_optimizers

    def configure(self):
        result = original(self)
        optimizer = result["optimizer"] if isinstance(result, dict) else result
        if isinstance(optimizer, (list, tuple)):
            optimizer = optimizer[0]
        probe.learner, probe.optimizer = self, optimizer
        return result

    patch.setattr(ScaleLearner, "configure_optimizers", configure)
    try:
        yield probe
    finally:
        if monkeypatch is None:
            patch.undo()


def evaluate(folder: Path, checkpoint: str, config: dict, split: str, stats_split: str):
    """Accuracy and mean cross-entropy of a checkpoint on `split`, normalised with the pixel
    statistics of `stats_split`, computed here from the stored arrays."""
    arrays = datasets.load_dataset(config["dataset"])
    reference = arrays[f"{stats_split}_images"].astype(np.float64) / 255.0
    mean, std = reference.mean(), reference.std()
    state = torch.load(folder / checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    model = build_model(config["model"])
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if "model." in k})
    model.eval()
    images = torch.from_numpy(arrays[f"{split}_images"]).unsqueeze(1)
    labels = torch.from_numpy(arrays[f"{split}_labels"])
    with torch.no_grad():
        logits = model((images.float() / 255.0 - mean) / std)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return accuracy, float(F.cross_entropy(logits, labels))


# ------------------------------------------------------------------------------ selection run

SELECTION_TRAIN = {
    "epochs": 3,
    "lr": 0.01,
    "lr_milestones": [2],
    # Epoch 2 at lr 0.3 knocks the weights about (val accuracy drops, the loss stays below the
    # divergence bound): the best epoch is epoch 1, neither the first nor the last.
    "lr_gamma": 30.0,
    "scale_lr": 0.1,
    "scale_warmup_epochs": 0,
    "scale_lr_milestones": [1],
    "scale_lr_gamma": 0.5,
}
SELECTION_MODEL = {"scale_mode": "single_ratio_squared", "learn_sigma_basis": True}


@pytest.fixture(scope="module")
def selection_run(shifted_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("selection")
    config = run_config(shifted_dataset, SELECTION_MODEL, **SELECTION_TRAIN)
    with probed() as probe:
        summary = train_run(config, folder)
    rows = read_metrics(folder)
    best = int(np.argmax([row["val_acc"] for row in rows]))
    # The construction this file relies on: the best epoch is neither the first nor the last.
    assert 0 < best < len(rows) - 1, [row["val_acc"] for row in rows]
    return folder, config, summary, rows, best, probe


def test_best_checkpoint_is_the_best_validation_epoch(selection_run):
    folder, _, summary, rows, best, _ = selection_run
    assert summary["status"] == "ok"
    assert summary["best_epoch"] == best
    assert summary["best_val_acc"] == pytest.approx(max(row["val_acc"] for row in rows))
    checkpoint = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == best


def test_last_checkpoint_is_the_last_epoch(selection_run):
    """last.ckpt (the resume point) holds the final epoch even though it did not improve."""
    folder, _, _, rows, _, _ = selection_run
    checkpoint = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["epoch"] == len(rows) - 1


def test_test_metrics_are_the_best_checkpoint_on_train_normalised_images(selection_run):
    folder, config, summary, *_ = selection_run
    accuracy, loss = evaluate(folder, "best.ckpt", config, "test", stats_split="train")
    assert summary["test_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert summary["test_error"] == pytest.approx(100 * (1 - accuracy), abs=1e-4)
    assert summary["test_loss"] == pytest.approx(loss, rel=1e-4)
    # The checks above can tell the alternatives apart:
    last_accuracy, last_loss = evaluate(folder, "last.ckpt", config, "test", "train")
    assert last_loss != pytest.approx(loss, rel=1e-2) and last_accuracy < accuracy
    _, per_split_loss = evaluate(folder, "best.ckpt", config, "test", stats_split="test")
    assert per_split_loss != pytest.approx(loss, rel=1e-3)


def test_val_metrics_use_the_train_statistics(selection_run):
    folder, config, _, rows, best, _ = selection_run
    accuracy, loss = evaluate(folder, "best.ckpt", config, "val", stats_split="train")
    assert rows[best]["val_acc"] == pytest.approx(accuracy, abs=1e-6)
    assert rows[best]["val_loss"] == pytest.approx(loss, rel=1e-4)
    _, per_split_loss = evaluate(folder, "best.ckpt", config, "val", stats_split="val")
    assert per_split_loss != pytest.approx(loss, rel=1e-3)


def test_reported_scales_are_the_best_epochs(selection_run):
    _, _, summary, rows, best, _ = selection_run
    assert summary["internal_scales"] == pytest.approx(row_scales(rows[best]), rel=1e-6)
    assert summary["internal_scales"] != pytest.approx(row_scales(rows[-1]), rel=1e-3)
    scales = summary["internal_scales"]
    assert summary["sigma_basis"] == pytest.approx(min(scales), rel=1e-6)
    assert summary["isr"] == pytest.approx(max(scales) / min(scales), rel=1e-6)
    assert summary["kernel_size"] == kernel_size_rule(scales)


def test_kernel_size_follows_sigma_max_in_every_epoch(selection_run):
    """K is recomputed from each epoch's σ_max, and it did change during the run."""
    _, _, _, rows, _, _ = selection_run
    for row in rows:
        assert row["kernel_size"] == kernel_size_rule(row_scales(row)), row
        assert row["isr"] == pytest.approx(max(row_scales(row)) / min(row_scales(row)), 1e-6)
    assert len({row["kernel_size"] for row in rows}) >= 2


def test_each_schedule_uses_its_own_milestones_and_gamma(selection_run):
    """Main LR ×30 at epoch 2, scale LR ×0.5 at epoch 1 (no warm-up): swapping either the
    milestones or γ between the two schedules changes these rows."""
    _, _, _, rows, _, _ = selection_run
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.01, 0.3])
    assert [row["scale_lr"] for row in rows] == pytest.approx([0.1, 0.05, 0.05])


def test_scale_group_holds_theta_and_learnable_sigma_b_only(selection_run):
    *_, probe = selection_run
    (scales,) = probe.scale_modules()
    scale_ids = {id(scales.theta), id(scales.sigma_basis)}
    groups = probe.groups()
    assert sorted(lr for lr, _ in groups) == [0.01, 0.1]
    main_ids = next(ids for lr, ids in groups if lr == 0.01)
    scale_group = next(ids for lr, ids in groups if lr == 0.1)
    assert scale_group == scale_ids
    trainable = {id(p) for p in probe.learner.parameters() if p.requires_grad}
    assert main_ids == trainable - scale_ids, "every weight (conv, BN, linear) in the main group"


# ------------------------------------------------------------------------------ warm-up, frozen σ_b


def test_warm_up_is_linear_from_zero_then_steps():
    train = TrainConfig(
        lr_milestones=[2],
        lr_gamma=0.1,
        scale_warmup_epochs=4,
        scale_lr_milestones=[6, 9],
        scale_lr_gamma=0.3,
    )
    steps = 7
    ramp = [scale_lr_factor(s, steps, train) for s in range(0, 4 * steps + 1)]
    assert ramp == pytest.approx([s / (4 * steps) for s in range(0, 4 * steps + 1)])
    after = [scale_lr_factor(e * steps, steps, train) for e in (5, 6, 8, 9, 12)]
    assert after == pytest.approx([1, 0.3, 0.3, 0.09, 0.09])
    main = [main_lr_factor(e * steps, steps, train) for e in (0, 1, 2, 6, 9)]
    assert main == pytest.approx([1, 1, 0.1, 0.1, 0.1])


@pytest.fixture(scope="module")
def frozen_sigma_run(shifted_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frozen")
    model = {"scale_mode": "single_ratio_squared", "learn_sigma_basis": False}
    train = {
        "epochs": 3,
        "lr_milestones": [2],
        "lr_gamma": 0.1,
        "scale_lr": 0.05,
        "scale_warmup_epochs": 2,
        "scale_lr_milestones": [1],
        "scale_lr_gamma": 0.5,
    }
    with probed() as probe:
        summary = train_run(run_config(shifted_dataset, model, **train), folder)
    return folder, summary, probe


def test_warm_up_and_decay_in_training(frozen_sigma_run):
    """Rates at each epoch's first step (10 steps per epoch): the warm-up over 2 epochs is at 0,
    then half way; the scale decay ×0.5 at epoch 1 applies on top of it."""
    folder, _, _ = frozen_sigma_run
    rows = read_metrics(folder)
    assert [row["lr"] for row in rows] == pytest.approx([0.01, 0.01, 0.001])
    assert [row["scale_lr"] for row in rows] == pytest.approx([0.0, 0.05 * 0.5 * 0.5, 0.05 * 0.5])


def test_frozen_sigma_b_stays_out_of_every_group(frozen_sigma_run):
    folder, summary, probe = frozen_sigma_run
    (scales,) = probe.scale_modules()
    in_groups = set().union(*(ids for _, ids in probe.groups()))
    assert id(scales.sigma_basis) not in in_groups or not scales.sigma_basis.requires_grad
    scale_group = next(ids for lr, ids in probe.groups() if lr == 0.05)
    assert scale_group == {id(scales.theta)}
    rows = read_metrics(folder)
    assert all(row["scale_0"] == 1.0 and row["sigma_basis"] == 1.0 for row in rows)
    assert summary["internal_scales"][0] == 1.0
    assert rows[-1]["isr"] != pytest.approx(2.0, abs=1e-3), "θ itself was trained"


# ------------------------------------------------------------------------------ projection, NaN


def test_projection_runs_after_every_optimiser_step(shifted_dataset, tmp_path, monkeypatch):
    """Direct mode with a scale LR that pushes the scales out of order: every forward pass
    (training and evaluation) sees positive, sorted scales."""
    seen, before_projection = [], []
    projecting = []
    forward, constrain = InternalScales.forward, InternalScales.constrain_

    def recording_forward(self):
        scales = forward(self)
        if not projecting:
            seen.append(scales.detach().clone())
        return scales

    def recording_constrain(self):
        projecting.append(True)
        before_projection.append(self().detach().clone())
        projecting.clear()
        constrain(self)

    monkeypatch.setattr(InternalScales, "forward", recording_forward)
    monkeypatch.setattr(InternalScales, "constrain_", recording_constrain)
    # ISR 1: three equal scales, so the first Adam steps (±lr each) put them out of order.
    model = {"scale_mode": "direct", "isr": 1.0}
    config = run_config(shifted_dataset, model, scale_lr=0.3, scale_warmup_epochs=0)
    train_run(config, tmp_path)
    steps = 2 * math.ceil(200 / 20)
    assert len(before_projection) >= steps, "the projection runs after every optimiser step"
    invalid = [s for s in before_projection if (s < MIN_SCALE).any() or (s.diff() < 0).any()]
    assert invalid, "the construction pushes scales out of the valid set"
    assert seen and all((s >= MIN_SCALE).all() and (s.diff() >= 0).all() for s in seen)
    for row in read_metrics(tmp_path):
        scales = row_scales(row)
        assert min(scales) >= MIN_SCALE and scales == sorted(scales)


def test_nan_in_the_scales_fails_loudly(shifted_dataset, tmp_path, monkeypatch):
    """θ becomes NaN after the second optimiser step: the run must stop with a clear error (or
    a failed status), never finish as ok or crash somewhere else."""
    steps = {"n": 0}
    step = torch.optim.Adam.step

    def poisoned_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        steps["n"] += 1
        if steps["n"] == 2:
            with torch.no_grad():
                for module in probe.scale_modules():
                    module.theta.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned_step)
    config = run_config(shifted_dataset, SELECTION_MODEL, scale_warmup_epochs=0)
    with probed(monkeypatch) as probe:
        try:
            summary = train_run(config, tmp_path)
        except ScalelearnError as error:
            message = str(error)
        else:
            assert summary["status"] != "ok"
            message = summary.get("reason", "")
    assert steps["n"] >= 2
    assert "scale" in message and "nan" in message.lower(), message
    written = tmp_path / "summary.json"
    assert not written.exists() or json.loads(written.read_text())["status"] != "ok"


# ------------------------------------------------------------------------------ "+" augmentation


BLOB_TRAIN = 120  # × 2 epochs: 240 draws, enough to tell uniform from log-uniform factors


def blob(canvas: int = CANVAS, sigma: float = 2.5) -> np.ndarray:
    """A centred Gaussian blob, uint8 [canvas, canvas]."""
    x = np.arange(canvas) - (canvas - 1) / 2
    image = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return np.round(255 * image).astype(np.uint8)


@pytest.fixture(scope="module")
def blob_dataset(tmp_path_factory) -> str:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", BLOB_TRAIN), ("val", 20), ("test", 20)):
        arrays[f"{split}_images"] = np.repeat(blob()[None], n, axis=0)
        arrays[f"{split}_labels"] = rng.integers(0, 10, n).astype(np.int64)
        arrays[f"{split}_scales"] = np.ones(n, dtype=np.float32)
        arrays[f"{split}_index"] = np.arange(n, dtype=np.int64)
    arrays["test_digits"] = arrays["test_images"][:, 4:32, 4:32]
    return save(tmp_path_factory.mktemp("blob") / "blob.npz", arrays)


def measured_factor(image: torch.Tensor, original: torch.Tensor) -> tuple[float, float]:
    """The factor s for which rescale_about_centre(original, s) fits `image` best, and the
    largest pixel difference (grey levels) at that factor. image, original: [H, W] float64."""

    def spread(x):
        c = torch.arange(x.shape[-1], dtype=torch.float64) - (x.shape[-1] - 1) / 2
        weights = x / x.sum()
        return float((weights * (c[:, None] ** 2 + c[None, :] ** 2)).sum())

    guess = math.sqrt(spread(image) / spread(original))
    candidates = torch.linspace(guess * 0.93, guess * 1.07, 141, dtype=torch.float64)
    batch = original.expand(len(candidates), 1, *original.shape)
    # Stored images are grey levels: the cubic kernel's overshoot is clamped to 0..255.
    fits = rescale_about_centre(batch, candidates, original.shape[-1])[:, 0].clamp(0, 255)
    errors = (fits - image).abs().amax(dim=(1, 2))
    best = int(errors.argmin())
    return float(candidates[best]), float(errors[best])


def test_rescale_augmentation_in_training(blob_dataset, tmp_path):
    """The "+" augmentation: every training input is the stored image rescaled about the
    centre by a fresh factor in [0.5, 2] (uniform: mean 1.25, a third below 1), drawn per image
    and per epoch; validation and test inputs are the stored images."""
    config = run_config(blob_dataset, {"scale_mode": "fixed"}, augment="rescale")
    network = type(build_model(config["model"]))
    stored = datasets.load_dataset(blob_dataset)["train_images"].astype(np.float64) / 255.0
    mean, std = stored.mean(), stored.std()
    seen = []

    def record(module, inputs):
        if type(module) is network:
            seen.append((module.training, inputs[0].detach().double().clone()))

    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train_run(config, tmp_path)
    finally:
        handle.remove()
    original = torch.from_numpy(blob()).double()
    train_inputs, eval_inputs = [], []
    for training, x in seen:
        if not training and len(x) == 1 and not x.any():
            continue  # the evaluator's memory probe (one zero image), not a data batch
        grey = (x * std + mean) * 255.0
        assert (grey - grey.round()).abs().max() < 0.02, "inputs are normalised grey levels"
        (train_inputs if training else eval_inputs).append(grey.round()[:, 0])
    assert eval_inputs and all(torch.equal(x, original.expand_as(x)) for x in eval_inputs)
    batches = math.ceil(BLOB_TRAIN / config["train"]["batch_size"])
    per_epoch = [torch.cat(train_inputs[:batches]), torch.cat(train_inputs[batches:])]
    assert [len(x) for x in per_epoch] == [BLOB_TRAIN, BLOB_TRAIN]
    factors = []
    for epoch in per_epoch:
        fits = [measured_factor(image, original) for image in epoch]
        assert max(error for _, error in fits) <= 1.0, "the image is the blob rescaled"
        factors.append(np.array([factor for factor, _ in fits]))
    everything = np.concatenate(factors)
    assert everything.min() >= 0.5 - 5e-3 and everything.max() <= 2.0 + 5e-3
    # Uniform on [0.5, 2]: mean 1.25 (log-uniform: 1.08), a third below 1 (log-uniform: half).
    assert abs(everything.mean() - 1.25) < 0.09
    assert 0.23 < np.mean(everything < 1.0) < 0.43
    assert scipy.stats.kstest(everything, scipy.stats.uniform(0.5, 1.5).cdf).pvalue > 1e-3
    assert len(np.unique(everything[:20].round(3))) > 15, "one factor per image, not per batch"
    assert not np.allclose(np.sort(factors[0]), np.sort(factors[1]), atol=0.01), "fresh draws"


# ------------------------------------------------------------------------------ CNN baseline


def test_cnn_baseline_trains(pool, tmp_path):
    images, labels = pool
    arrays, manifest = datasets.make_mnist_scale(images, labels, seed=0, split=(100, 50, 50))
    path = tmp_path / "mnist_scale.npz"
    datasets.save_dataset(path, arrays, manifest)
    config = run_config(str(path), {}, epochs=1, batch_size=25)
    config["model"] = {"name": "cnn"}
    with probed() as probe:
        summary = train_run(config, tmp_path / "run")
    assert summary["status"] == "ok" and 0 <= summary["test_acc"] <= 1
    assert summary["test_error"] == pytest.approx(100 * (1 - summary["test_acc"]))
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"])
    (group,) = probe.groups()
    assert group[1] == {id(p) for p in probe.learner.parameters() if p.requires_grad}
