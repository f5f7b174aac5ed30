"""The LightningModule: one network, two optimiser groups (weights / internal scales) with the
schedules of SPEC §6, normalisation and "+" augmentation done on the device, per batch;
validation and test in bounded memory (scalelearn.nn.evaluation)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from scalelearn.allocator import release_freed_memory
from scalelearn.data.loader import epoch_seed, normalise
from scalelearn.data.rescale import random_rescale
from scalelearn.nn.evaluation import ChunkedEvaluator
from scalelearn.nn.models import ModelConfig, build_model, config_dict, model_config
from scalelearn.train.config import TrainConfig

# SESN's "+" augmentation: a fresh random rescale per load of a training image.
AUGMENT_SCALE_RANGE = (0.5, 2.0)


def step_decay(epoch: float, milestones: list[int], gamma: float) -> float:
    """gamma ** (number of milestones reached at this (fractional) epoch)."""
    return gamma ** sum(epoch >= m for m in milestones)


def main_lr_factor(step: int, steps_per_epoch: int, train: TrainConfig) -> float:
    return step_decay(step / steps_per_epoch, train.lr_milestones, train.lr_gamma)


def scale_lr_factor(step: int, steps_per_epoch: int, train: TrainConfig) -> float:
    """Linear warm-up from 0 over `scale_warmup_epochs`, then step decay at the milestones."""
    epoch = step / steps_per_epoch
    warmup = train.scale_warmup_epochs
    ramp = min(1.0, epoch / warmup) if warmup > 0 else 1.0
    return ramp * step_decay(epoch, train.scale_lr_milestones, train.scale_lr_gamma)


class ScaleLearner(pl.LightningModule):
    """Classifier training of one network (SPEC §6).

    model: the network's config, a ModelConfig (ToyConfig, SESNConfig, CNNConfig) or a `model:`
        mapping. train: a TrainConfig or a `train:` mapping (missing keys take their defaults).
    seed: seeds the "+" augmentation draws. mean, std: the train-split statistics of images / 255
        (ScaleDataModule.mean / .std).
    Batches arrive as uint8 images [B, 1, H, W] and int64 labels [B] (ScaleDataModule's).
    """

    def __init__(
        self,
        model: ModelConfig | dict,
        train: TrainConfig | dict | None = None,
        seed: int = 0,
        mean: float = 0.0,
        std: float = 1.0,
    ):
        super().__init__()
        model = model_config(model)
        if not isinstance(train, TrainConfig):
            train = TrainConfig.from_dict(train or {})
        # Plain mappings in the checkpoint: loading it needs no scalelearn classes.
        self.save_hyperparameters(
            {"model": config_dict(model), "train": train.to_dict(), "seed": seed}
            | {"mean": float(mean), "std": float(std)}
        )
        self.model = build_model(model)
        self.train_cfg = train
        self.seed = seed
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.evaluator = ChunkedEvaluator(self.model)

    @property
    def internal_scales(self):
        return self.model.internal_scales

    def _normalise(self, images: Tensor) -> Tensor:
        return normalise(images, self.mean, self.std)

    def forward(self, images: Tensor) -> Tensor:
        """uint8 [B, 1, H, W] -> logits [B, 10]."""
        return self.model(self._normalise(images))

    def predict(self, images: Tensor) -> Tensor:
        """Evaluation logits: uint8 [B, 1, H, W] -> [B, 10], in eval mode, without autograd, in
        chunks whose working memory stays within the evaluation budget whatever B is."""
        was_training = self.model.training
        self.model.eval()
        try:
            return self.evaluator(self._normalise(images))
        finally:
            self.model.train(was_training)

    def _augment(self, images: Tensor, batch_idx: int) -> Tensor:
        # Seeded per (run seed, epoch, batch) so the draws do not depend on anything else.
        generator = torch.Generator(device=images.device)
        generator.manual_seed(epoch_seed(self.seed, self.current_epoch) + batch_idx)
        return random_rescale(images, AUGMENT_SCALE_RANGE, generator)[0]

    def _step(self, batch, stage: str) -> Tensor:
        images, labels = batch
        logits = self(images) if stage == "train" else self.predict(images)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(1) == labels).float().mean()
        size = len(labels)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, batch_size=size, prog_bar=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> Tensor:
        images, labels = batch
        if self.train_cfg.augment == "rescale":
            images = self._augment(images, batch_idx)
        return self._step((images, labels), "train")

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Keep the scales positive and ordered where the parameterisation does not, right after
        # each step; a non-finite loss or scale is then caught by the DivergenceGuard callback.
        if self.internal_scales is not None:
            self.internal_scales.constrain_()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    # Evaluation's working set differs from training's: what one phase freed goes back to the OS
    # before the other starts (the allocator otherwise keeps it, see scalelearn.allocator), so
    # neither comes on top of the other and the process does not sit at evaluation's peak.
    def on_validation_epoch_start(self) -> None:
        release_freed_memory()

    def on_validation_epoch_end(self) -> None:
        release_freed_memory()

    def on_test_epoch_start(self) -> None:
        release_freed_memory()

    def on_test_epoch_end(self) -> None:
        release_freed_memory()

    def configure_optimizers(self):
        train = self.train_cfg
        scale_params = []
        if self.internal_scales is not None:
            scale_params = [p for p in self.internal_scales.parameters() if p.requires_grad]
        scale_ids = {id(p) for p in scale_params}
        main_params = [
            p for p in self.model.parameters() if p.requires_grad and id(p) not in scale_ids
        ]
        groups = [{"params": main_params, "lr": train.lr, "name": "main"}]
        lambdas = [main_lr_factor]
        if scale_params:
            groups.append({"params": scale_params, "lr": train.scale_lr, "name": "scales"})
            lambdas.append(scale_lr_factor)
        optimizer = torch.optim.Adam(groups)
        # The schedules are defined in epochs; step them per optimiser step with the real number
        # of steps per epoch of this dataset (the authors hard-coded a dataset size).
        steps_per_epoch = max(1, self.trainer.estimated_stepping_batches // train.epochs)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, [lambda step, f=f: f(step, steps_per_epoch, train) for f in lambdas]
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def learning_rates(self) -> dict[str, float]:
        """Current learning rate of each optimiser group: {"lr": …, "scale_lr": …}."""
        rates = {"lr": float("nan"), "scale_lr": float("nan")}
        for group in self.trainer.optimizers[0].param_groups:
            rates["lr" if group["name"] == "main" else "scale_lr"] = group["lr"]
        return rates
