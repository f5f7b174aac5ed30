"""The datasets of scalelearn as a LightningDataModule, for `scalelearn train` and for your own
`Trainer`.

A dataset file (`scalelearn data scale-distribution|mnist-scale`, or `save_dataset`) holds uint8
images and int labels of its train / val / test splits. They stay uint8 tensors in memory and come
out in whole batches (scalelearn.data.loader.Batches): conversion to float and normalisation with
the train statistics (`mean`, `std`) belong on the device, in the model's step (ScaleLearner does
it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from scalelearn.data.datasets import load_dataset
from scalelearn.data.loader import Batches, train_statistics
from scalelearn.errors import ScalelearnError

SPLITS = ("train", "val", "test")


class ScaleDataModule(pl.LightningDataModule):
    """The train / val / test splits of one dataset as batches (uint8 [B, 1, H, W], int64 [B]).

    dataset: path of a dataset .npz, or the mapping `load_dataset` returns
        ({split}_images uint8 [n, H, W], {split}_labels int [n] for every split).
    batch_size: training batch size (a last training batch of a single image is left out; see
        `train_dataloader`). eval_batch_size: validation and test batch size (default:
        batch_size).
    seed: the training order of epoch e is the permutation drawn from (seed, e) alone, so a
        resumed run sees the same batches as an unbroken one. Under a Trainer the train loader
        takes e from `trainer.current_epoch` whenever an epoch starts; in a loop of your own,
        call `train_dataloader().set_epoch(e)`.
    After `setup()`: `mean`, `std` (of train images / 255, for normalisation), `image_size`
    (the side H = W of the images) and the loaders.
    """

    def __init__(
        self,
        dataset: str | os.PathLike | dict[str, np.ndarray],
        batch_size: int,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.seed = int(seed)
        self.mean: float | None = None
        self.std: float | None = None
        self.image_size: int | None = None
        self._splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Read the dataset (once) and compute the train statistics."""
        if self._splits:
            return
        arrays = self.dataset
        if not isinstance(arrays, dict):
            if not Path(arrays).exists():
                raise ScalelearnError(f"dataset {arrays} does not exist; build it first")
            arrays = load_dataset(arrays)
        for split in SPLITS:
            images = torch.from_numpy(np.asarray(arrays[f"{split}_images"]))
            labels = torch.from_numpy(np.asarray(arrays[f"{split}_labels"]))
            self._splits[split] = (images, labels)
        self.mean, self.std = train_statistics(self._splits["train"][0])
        self.image_size = int(self._splits["train"][0].shape[-1])

    def train_dataloader(self) -> _EpochOrderedBatches:
        self.setup()
        images, labels = self._splits["train"]
        # A last batch of one image is left out of the epoch: BatchNorm1d in the head of the
        # SESN and CNN networks (models._head) cannot normalise a single sample in training mode
        # (PyTorch raises "Expected more than 1 value per channel"). Only that batch: with any
        # other split size the batches are exactly those of an unbroken loader (no drop_last),
        # so the numbers of every run without such a batch are unchanged (the paper's 10,000
        # train images in batches of 128 end with 16, as in SESN's loaders, which keep every
        # batch). The image left out is a different one each epoch (the order is reshuffled);
        # the schedules count the batches that are run (len()).
        batches = Batches(images, labels, self.batch_size, shuffle=True, seed=self.seed, min_last=2)
        return _EpochOrderedBatches(batches, self)

    def val_dataloader(self) -> Batches:
        return self._eval_loader("val")

    def test_dataloader(self) -> Batches:
        return self._eval_loader("test")

    def _eval_loader(self, split: str) -> Batches:
        self.setup()
        return Batches(*self._splits[split], self.eval_batch_size)


class _EpochOrderedBatches:
    """The shuffled train Batches, put in the order of the attached Trainer's current epoch each
    time an epoch starts iterating (Lightning iterates the loader once per epoch)."""

    def __init__(self, batches: Batches, datamodule: pl.LightningDataModule):
        self.batches = batches
        self.datamodule = datamodule

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        # A generator: the epoch is read when the first batch is drawn, as Batches draws its
        # order; read at iter() time, a resumed run got another order (tests/test_train.py).
        trainer = self.datamodule.trainer
        if trainer is not None:
            self.batches.set_epoch(trainer.current_epoch)
        yield from self.batches
