"""When a training run has diverged, and how it ends.

Criterion (checked during training; the first that holds ends the run):
- the training loss of a batch is not finite (NaN or ±inf);
- an internal scale is not finite, or outside (0, input side] (a kernel wider than the image);
- the mean training loss of an epoch exceeds LOSS_BOUND = 10 · ln(10) ≈ 23.0, ten times the loss
  of a uniform guess over the 10 classes (a model that is that sure of wrong answers has blown up:
  a healthy run starts near ln(10) ≈ 2.3 and goes down).

A diverged run is a result, not a crash: `train_run` catches `Diverged`, writes summary.json with
`"status": "diverged"` and the reason (no test numbers), and the command exits 0, so the
aggregate and every table show the failed run instead of a missing one.
"""

from __future__ import annotations

import math

from pytorch_lightning.callbacks import Callback

LOSS_BOUND = 10 * math.log(10)


class Diverged(Exception):
    """Raised inside training when the run has diverged; `reason` says how, in words."""

    def __init__(self, reason: str, epoch: int):
        super().__init__(reason)
        self.reason = reason
        self.epoch = epoch


def check_loss(loss: float, epoch: int, where: str = "") -> None:
    if not math.isfinite(loss):
        raise Diverged(f"training loss became {loss} at epoch {epoch}{where}", epoch)


def check_scales(scales: list[float], max_scale: float, epoch: int) -> None:
    """scales: the internal scales (px); they must be finite and in (0, max_scale]."""
    bad = [s for s in scales if not (math.isfinite(s) and 0 < s <= max_scale)]
    if bad:
        raise Diverged(
            f"internal scales became {[round(s, 4) for s in scales]} at epoch {epoch}; allowed: "
            f"finite, in (0, {max_scale:g}] px (the input side)",
            epoch,
        )


def check_epoch_loss(mean_loss: float, epoch: int) -> None:
    check_loss(mean_loss, epoch)
    if mean_loss > LOSS_BOUND:
        raise Diverged(
            f"mean training loss {mean_loss:.4g} at epoch {epoch} exceeds 10 ln(10) = "
            f"{LOSS_BOUND:.1f} (10 times a uniform guess)",
            epoch,
        )


class DivergenceGuard(Callback):
    """Checks the criterion after every training batch (loss, scales) and epoch (mean loss)."""

    def __init__(self, max_scale: float):
        self.max_scale = max_scale

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        check_loss(float(loss), trainer.current_epoch, f", batch {batch_idx}")
        if module.internal_scales is not None:
            scales = [float(s) for s in module.internal_scales().detach()]
            check_scales(scales, self.max_scale, trainer.current_epoch)

    def on_train_epoch_end(self, trainer, module) -> None:
        if trainer.sanity_checking or "train_loss" not in trainer.callback_metrics:
            return
        check_epoch_loss(float(trainer.callback_metrics["train_loss"]), trainer.current_epoch)
