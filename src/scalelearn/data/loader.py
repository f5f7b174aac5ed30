"""Mini-batches straight from uint8 tensors in memory, and the train-split statistics.

The datasets are small uint8 arrays, so a DataLoader with workers and per-image ``__getitem__``
only adds overhead: ``Batches`` draws a permutation and slices whole batches out of the tensors.
Conversion to float and normalisation happen later, on the device, in the training module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from scalelearn.data.rescale import to_float


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed for the shuffle of ``epoch`` under ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


class Batches:
    """Iterable of (images uint8 [B, 1, H, W], labels int64 [B]) batches.

    images: uint8 [n, H, W] (tensor or array); labels: int [n]. With ``shuffle`` each epoch uses
    the order ``torch.randperm(n)`` drawn from a generator seeded by (seed, epoch): call
    ``set_epoch(epoch)`` before iterating (a resumed run then sees the same order as an
    uninterrupted one). ``drop_last`` leaves out an incomplete last batch; ``min_last`` leaves
    it out only when it has fewer than ``min_last`` samples (the train loader uses 2: a batch of
    one image cannot be trained through BatchNorm). ``len()`` is the number of batches.
    """

    def __init__(
        self,
        images: torch.Tensor | np.ndarray,
        labels: torch.Tensor | np.ndarray,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        min_last: int = 1,
    ):
        self.images = torch.as_tensor(images)
        self.labels = torch.as_tensor(labels).long()
        if self.images.dtype != torch.uint8 or self.images.ndim != 3:
            raise ValueError(
                f"images must be uint8 [n, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.min_last = int(min_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        full, rest = divmod(len(self.images), self.batch_size)
        keep_rest = rest > 0 and not self.drop_last and rest >= self.min_last
        return full + keep_rest

    def order(self) -> torch.Tensor:
        """The sample order of the current epoch: int64 [n]."""
        n = len(self.images)
        if not self.shuffle:
            return torch.arange(n)
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        return torch.randperm(n, generator=generator)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order()
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield self.images[index].unsqueeze(1), self.labels[index]


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 images -> float32 (images / 255 - mean) / std, with the train split's statistics
    (`train_statistics`); training, validation, test and the per-scale test all feed the network
    this."""
    return (to_float(images) - mean) / std


def train_statistics(images: torch.Tensor | np.ndarray, chunk: int = 4096) -> tuple[float, float]:
    """Mean and standard deviation of ``images / 255`` over all pixels of all images.

    images: uint8 [n, H, W]. Accumulated in float64, ``chunk`` images at a time, so a 1.8 GB
    train split never exists as floats.
    """
    images = torch.as_tensor(images)
    total = total_sq = 0.0
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].to(torch.float64) / 255.0
        total += float(block.sum())
        total_sq += float((block * block).sum())
    count = images.numel()
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean, math.sqrt(var)
