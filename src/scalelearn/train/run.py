"""Train one run: read its dataset, fit with Lightning, select the best-validation checkpoint,
test it, and write the run folder (config.json, metrics.csv, summary.json, best.ckpt, last.ckpt).

A run killed half-way resumes from `last.ckpt` when started again with the same folder.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.plugins.io import TorchCheckpointIO

from scalelearn.allocator import reuse_freed_memory
from scalelearn.atomic import atomic_path, write_text
from scalelearn.data.datasets import load_dataset
from scalelearn.data.loader import Batches, train_statistics
from scalelearn.data.store import write_json
from scalelearn.errors import ScalelearnError
from scalelearn.settings import AUGMENTS, TRAIN_DEFAULTS
from scalelearn.train.module import ScaleLearner


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary name and renamed, so a killed job never leaves a
    truncated `last.ckpt` that would break the resume."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


class EpochRecorder(Callback):
    """Writes metrics.csv: one row per epoch with losses, accuracies, both learning rates and the
    internal scales. The rows live in the checkpoint, so a resumed run keeps its history."""

    state_key = "EpochRecorder"

    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []
        self.epoch_learning_rates: dict[str, float] = {}

    def on_train_epoch_start(self, trainer, module) -> None:
        # The rates of the epoch's first step: the schedules move per step, and the value after
        # the last step of an epoch already belongs to the next one.
        self.epoch_learning_rates = module.learning_rates()

    def on_train_epoch_end(self, trainer, module) -> None:
        # In Lightning 2 this runs after the epoch's validation, so every metric is there.
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            row[key] = float(metrics[key]) if key in metrics else float("nan")
        row.update(self.epoch_learning_rates)
        report = module.model.scale_report()
        for key in ("sigma_basis", "isr", "kernel_size"):
            row[key] = report.get(key, float("nan"))
        for i, scale in enumerate(report.get("internal_scales", [])):
            row[f"scale_{i}"] = scale
        self.rows.append(row)
        write_csv(self.path, self.rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])


def write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def resolve_train_config(train: dict) -> dict:
    """TRAIN_DEFAULTS updated with `train`, with the values checked."""
    unknown = set(train) - set(TRAIN_DEFAULTS)
    if unknown:
        raise ScalelearnError(
            f"unknown train keys {sorted(unknown)}; allowed: {', '.join(TRAIN_DEFAULTS)}"
        )
    cfg = {**TRAIN_DEFAULTS, **train}
    if cfg["augment"] not in AUGMENTS:
        raise ScalelearnError(
            f"train.augment is {cfg['augment']!r}; allowed: {', '.join(AUGMENTS)}"
        )
    if cfg["epochs"] < 1 or cfg["batch_size"] < 1:
        raise ScalelearnError(
            f"train.epochs and train.batch_size must be >= 1, got {cfg['epochs']}, "
            f"{cfg['batch_size']}"
        )
    return cfg


def make_loaders(dataset: dict, train: dict, seed: int) -> dict[str, Batches]:
    """uint8 tensors in memory; shuffled (seeded per epoch) for training only."""
    loaders = {}
    for split in ("train", "val", "test"):
        images = torch.from_numpy(dataset[f"{split}_images"])
        labels = torch.from_numpy(dataset[f"{split}_labels"])
        if split == "train":
            loaders[split] = Batches(images, labels, train["batch_size"], shuffle=True, seed=seed)
        else:
            loaders[split] = Batches(images, labels, train["eval_batch_size"])
    return loaders


class _EpochShuffle(Callback):
    """Tells the train loader which epoch it is, so its order depends on (seed, epoch) only."""

    def __init__(self, loader: Batches):
        self.loader = loader

    def on_train_epoch_start(self, trainer, module) -> None:
        self.loader.set_epoch(trainer.current_epoch)


def train_run(run_config: dict, out_dir: str | os.PathLike, *, threads: int | None = None) -> dict:
    """Train the run described by `run_config` (as `scalelearn runs --show` prints it) into
    `out_dir`.

    Returns the summary (also written to out_dir/summary.json, last, as the completion marker).
    """
    started = time.time()
    reuse_freed_memory()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    train = resolve_train_config(run_config.get("train", {}))
    seed = int(run_config.get("seed", 0))
    resolved = {**run_config, "train": train}
    write_json(out / "config.json", resolved)

    dataset_path = run_config["dataset"]
    if not Path(dataset_path).exists():
        raise ScalelearnError(f"dataset {dataset_path} does not exist; build it first")
    dataset = load_dataset(dataset_path)
    mean, std = train_statistics(dataset["train_images"])
    loaders = make_loaders(dataset, train, seed)

    pl.seed_everything(seed, workers=True, verbose=False)
    module = ScaleLearner(run_config["model"], train, seed, mean, std)
    best = ModelCheckpoint(
        dirpath=out,
        filename="best",
        monitor="val_acc",
        mode="max",
        save_top_k=1,
        save_last=True,
        enable_version_counter=False,
    )
    recorder = EpochRecorder(out / "metrics.csv")
    on_cpu = train["accelerator"] == "cpu" or not torch.cuda.is_available()
    trainer = pl.Trainer(
        max_epochs=train["epochs"],
        accelerator=train["accelerator"],
        devices=1,
        callbacks=[best, recorder, _EpochShuffle(loaders["train"])],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        default_root_dir=out,
        num_sanity_val_steps=0,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
        # Deterministic kernels on the CPU; on GPUs some (max-pool backward) have no
        # deterministic version, so only warn there.
        deterministic=True if on_cpu else "warn",
    )
    # The run folder is also the checkpoint folder: it already holds config.json.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    last = out / "last.ckpt"
    trainer.fit(
        module,
        train_dataloaders=loaders["train"],
        val_dataloaders=loaders["val"],
        ckpt_path=last if last.exists() else None,
    )
    best_path = Path(best.best_model_path)
    test = trainer.test(module, dataloaders=loaders["test"], ckpt_path=best_path, verbose=False)[0]
    # trainer.test loaded the best weights into `module`: its scales are the reported ones.
    report = module.model.scale_report()
    best_epoch = int(torch.load(best_path, map_location="cpu", weights_only=False)["epoch"])
    summary = {
        "experiment": run_config.get("experiment"),
        "run_id": run_config.get("run_id"),
        "grid": run_config.get("grid", {}),
        "best_epoch": best_epoch,
        "best_val_acc": float(best.best_model_score),
        "test_acc": float(test["test_acc"]),
        "test_error": 100.0 * (1.0 - float(test["test_acc"])),
        "test_loss": float(test["test_loss"]),
        **report,
        "epochs": train["epochs"],
        "wall_time_s": time.time() - started,
        "device": str(module.device),
        "status": "ok",
    }
    write_json(out / "summary.json", summary)
    return summary
