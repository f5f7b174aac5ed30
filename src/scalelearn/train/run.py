"""Train one run: check its dataset, fit with Lightning, select the best-validation checkpoint,
test it, and write the run folder (config.json, metrics.csv, summary.json, best.ckpt, last.ckpt).

A run folder belongs to one resolved run config (its fingerprint, scalelearn.train.fingerprint):
a run killed half-way resumes from `last.ckpt` when started again with the same config; run
files of another config (or of none) are deleted first and the run starts fresh. Nothing in the
folder points outside it, so a moved or copied results folder resumes from its own files.

A run that diverges (DIVERGENCE in scalelearn.train.divergence) ends normally with
`"status": "diverged"` and the reason in summary.json, and no test numbers.
"""

from __future__ import annotations

import logging
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
from scalelearn.atomic import atomic_path, write_rows, write_text
from scalelearn.data.datasets import verify_dataset
from scalelearn.data.store import write_json
from scalelearn.errors import ScalelearnError
from scalelearn.experiments import check_run_config
from scalelearn.settings import AUGMENTS, MODEL_DEFAULTS, PROFILERS, TRAIN_DEFAULTS
from scalelearn.train.datamodule import ScaleDataModule
from scalelearn.train.divergence import Diverged, DivergenceGuard
from scalelearn.train.fingerprint import run_fingerprint
from scalelearn.train.module import ScaleLearner

logger = logging.getLogger(__name__)

# The files of a run (besides config.json); all deleted together when they belong to another
# config. per_scale.csv is written later by `scalelearn evaluate` from best.ckpt.
RUN_OUTPUTS = ("last.ckpt", "best.ckpt", "metrics.csv", "summary.json", "per_scale.csv")

# torch.use_deterministic_algorithms also turns on torch's filling of every tensor made by
# torch.empty and its kin (FFT outputs among them) with NaN (torch.utils.deterministic.
# fill_uninitialized_memory): a guard for programs that read memory they never wrote, which this
# one does not (the numbers are the same bit for bit either way, tests/test_train.py). The fill
# is an extra pass over many of a step's large intermediates: a sixth of a toy training step on
# the CPU (e2_toy, 2 threads: 108 against 91 ms; SESN 557 against 491 ms).
FILL_UNINITIALIZED_MEMORY = False


def training_determinism(on_cpu: bool) -> None:
    """Set the determinism training runs under (also for `scalelearn bench --deterministic`):
    torch's deterministic algorithms, as Lightning's `deterministic` flag sets them (errors on
    the CPU; only warnings on a GPU, where some kernels such as max-pool's backward have no
    deterministic version), without the NaN fill of new tensors."""
    torch.use_deterministic_algorithms(True, warn_only=not on_cpu)
    torch.backends.cudnn.benchmark = False
    # cuBLAS reproducibility: https://docs.nvidia.com/cuda/cublas/index.html#results-reproducibility
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.utils.deterministic.fill_uninitialized_memory = FILL_UNINITIALIZED_MEMORY


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
        write_rows(self.path, self.rows)

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict["rows"])

    def on_fit_end(self, trainer, module) -> None:
        # A run resumed at max_epochs trains no epoch, but Snakemake removed metrics.csv (a job
        # output) before the job: the rows restored from the checkpoint write it again.
        if self.rows:
            write_rows(self.path, self.rows)


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
    for key in ("epochs", "batch_size", "eval_batch_size", "threads"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ScalelearnError(f"train.{key} must be an integer >= 1, got {cfg[key]!r}")
    return cfg


class RunFingerprint(Callback):
    """Stores the run's fingerprint in every checkpoint, and refuses to restore another's."""

    state_key = "RunFingerprint"

    def __init__(self, fingerprint: str):
        self.fingerprint = fingerprint

    def state_dict(self) -> dict:
        return {"fingerprint": self.fingerprint}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("fingerprint") != self.fingerprint:
            raise ScalelearnError("checkpoint of another run config; delete it and start again")


def checkpoint_fingerprint(path: Path) -> str | None:
    """The fingerprint stored in a checkpoint (None: none, or not a readable checkpoint)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        return checkpoint["callbacks"][RunFingerprint.state_key]["fingerprint"]
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is a stale one
        return None


def discard_stale_run(out: Path, fingerprint: str) -> None:
    """Delete the run files in `out` unless its checkpoints carry `fingerprint`: a changed
    config (or dataset) starts fresh instead of resuming, and no old metrics or summary stay."""
    checkpoints = [out / name for name in ("last.ckpt", "best.ckpt") if (out / name).exists()]
    found = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if not found:
        return
    stale = [p.name for p in checkpoints if checkpoint_fingerprint(p) != fingerprint]
    if checkpoints and not stale:
        return
    why = (
        f"{', '.join(stale)} belong(s) to another run config or dataset"
        if stale
        else "there is no checkpoint to resume from"
    )
    logger.warning(
        "%s: starting fresh, %s; deleting %s", out, why, ", ".join(p.name for p in found)
    )
    for path in found:
        path.unlink()


class FolderCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose state names files relative to the run folder.

    Lightning stores absolute paths (dirpath, best_model_path, ...) in its state; restored in a
    moved or copied folder they would point at the original folder's files (and a new best
    would even delete the original's best.ckpt). Here the state holds file names only, and a
    restore re-points them at the current folder.
    """

    _PATH_KEYS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict:
        state = super().state_dict()
        for key in self._PATH_KEYS:
            state[key] = os.path.basename(state[key]) if state[key] else state[key]
        state["dirpath"] = "."
        state["best_k_models"] = {
            os.path.basename(path): score for path, score in state["best_k_models"].items()
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        here = str(self.dirpath)
        for key in self._PATH_KEYS:
            if state.get(key):
                state[key] = os.path.join(here, os.path.basename(state[key]))
        state["dirpath"] = here
        state["best_k_models"] = {
            os.path.join(here, os.path.basename(path)): score
            for path, score in state.get("best_k_models", {}).items()
        }
        super().load_state_dict(state)


def resolve_run_config(run_config: dict) -> dict:
    """The run config with every model and train default filled in, checked. The derived keys
    (`dataset_sha256`, `fingerprint`) are dropped: train_run recomputes them."""
    check_run_config(run_config)
    resolved = {k: v for k, v in run_config.items() if k not in ("dataset_sha256", "fingerprint")}
    model = run_config["model"]
    resolved["model"] = {**MODEL_DEFAULTS[model["name"]], **model}
    resolved["train"] = resolve_train_config(run_config.get("train", {}))
    resolved["seed"] = int(run_config.get("seed", 0))
    return resolved


def _profiler(name: str | None, out: Path):
    """Lightning's profiler `name` (PROFILERS) writing its report into the run folder, or None."""
    if name is None:
        return None
    from pytorch_lightning import profilers

    kinds = {
        "simple": profilers.SimpleProfiler,
        "advanced": profilers.AdvancedProfiler,
        "pytorch": profilers.PyTorchProfiler,
    }
    return kinds[name](dirpath=out, filename="profile")


def train_run(run_config: dict, out_dir: str | os.PathLike, profiler: str | None = None) -> dict:
    """Train the run described by `run_config` (as `scalelearn runs --show` prints it) into
    `out_dir`. profiler: one of PROFILERS, Lightning's profiler of that name, whose report goes to
    out_dir/fit-profile.txt and test-profile.txt (where the loop's time goes; the results do not
    change).

    Returns the summary (also written to out_dir/summary.json, last, as the completion marker).
    """
    started = time.time()
    if profiler not in (None, *PROFILERS):
        raise ScalelearnError(f"unknown profiler {profiler!r}; choose from {', '.join(PROFILERS)}")
    reuse_freed_memory()
    resolved = resolve_run_config(run_config)
    train, seed = resolved["train"], resolved["seed"]
    torch.set_num_threads(train["threads"])

    dataset_path = resolved["dataset"]
    manifest = verify_dataset(dataset_path, resolved.get("dataset_params"))
    resolved["dataset_sha256"] = manifest["sha256"]
    fingerprint = run_fingerprint(resolved)
    resolved["fingerprint"] = fingerprint
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    discard_stale_run(out, fingerprint)
    write_json(out / "config.json", resolved)

    data = ScaleDataModule(dataset_path, train["batch_size"], train["eval_batch_size"], seed)
    data.setup()

    pl.seed_everything(seed, workers=True, verbose=False)
    module = ScaleLearner(resolved["model"], train, seed, data.mean, data.std)
    best = FolderCheckpoint(
        dirpath=out,
        filename="best",
        monitor="val_acc",
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Its own callback: Lightning 2.6's `save_last` rewrites last.ckpt only in the epochs that
    # improve the best one, which leaves a stale last.ckpt (and a resume from an old epoch).
    latest = FolderCheckpoint(
        dirpath=out, filename="last", save_top_k=1, enable_version_counter=False
    )
    recorder = EpochRecorder(out / "metrics.csv")
    on_cpu = train["accelerator"] == "cpu" or not torch.cuda.is_available()
    trainer = pl.Trainer(
        max_epochs=train["epochs"],
        accelerator=train["accelerator"],
        devices=1,
        callbacks=[
            best,
            latest,
            recorder,
            # After the recorder: the epoch that diverged is in metrics.csv.
            DivergenceGuard(max_scale=float(data.image_size)),
            RunFingerprint(fingerprint),
        ],
        plugins=[AtomicCheckpointIO()],
        logger=False,
        profiler=_profiler(profiler, out),
        default_root_dir=out,
        num_sanity_val_steps=0,
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
    )
    training_determinism(on_cpu)  # the Trainer's `deterministic`, without the NaN fill
    # The run folder is also the checkpoint folder: it already holds config.json.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    last = out / "last.ckpt"
    labels = {
        "experiment": resolved.get("experiment"),
        "run_id": resolved.get("run_id"),
        "grid": resolved.get("grid", {}),
    }

    def finish(**outcome) -> dict:
        """Write summary.json: the run's labels, its outcome, then what every summary records."""
        summary = {
            **labels,
            **outcome,
            "epochs": train["epochs"],
            "wall_time_s": time.time() - started,
            # The device it trained on (after trainer.test, Lightning has moved `module` back to
            # the CPU).
            "device": str(trainer.strategy.root_device),
            "fingerprint": fingerprint,
        }
        write_json(out / "summary.json", summary)
        return summary

    try:
        trainer.fit(module, datamodule=data, ckpt_path=last if last.exists() else None)
    except Diverged as diverged:
        if not recorder.rows:
            # metrics.csv is a declared job output: diverged in the first epoch, it has no rows.
            write_text(out / "metrics.csv", "epoch\n")
        return finish(status="diverged", reason=diverged.reason, diverged_epoch=diverged.epoch)
    best_path = out / "best.ckpt"
    test = trainer.test(module, datamodule=data, ckpt_path=best_path, verbose=False)[0]
    # trainer.test loaded the best weights into `module`: its scales are the reported ones.
    report = module.model.scale_report()
    best_epoch = int(torch.load(best_path, map_location="cpu", weights_only=False)["epoch"])
    return finish(
        status="ok",
        best_epoch=best_epoch,
        best_val_acc=float(best.best_model_score),
        test_acc=float(test["test_acc"]),
        test_error=100.0 * (1.0 - float(test["test_acc"])),
        test_loss=float(test["test_loss"]),
        **report,
    )
