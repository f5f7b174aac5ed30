"""The in-depth per-scale test of E1: every test digit rendered at 45 log-spaced scales
(2^-1 ... 2^3.5) on the dataset's canvas, with the dataset's own resampler.

50,000 digits x 45 scales = 2.25M images of 168x168 (63 GB as uint8), so the images are rendered
on the fly, one batch at a time, and never stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch

from scalelearn.data.rescale import rescale_uint8

IN_DEPTH_SCALES = 2.0 ** np.linspace(-1, 3.5, 45)


class InDepthBatch(NamedTuple):
    scale_index: int  # position in the scale list
    scale: float  # the factor every image of the batch is rendered at
    images: torch.Tensor  # uint8 [B, canvas, canvas]
    labels: torch.Tensor  # int64 [B]


def select_digits(n_total: int, n_digits: int | None, seed: int) -> np.ndarray:
    """A deterministic subsample of ``n_digits`` of ``n_total`` test digits (all when None or
    too many), as sorted indices."""
    if n_digits is None or n_digits >= n_total:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng([seed, 2])
    return np.sort(rng.choice(n_total, size=n_digits, replace=False)).astype(np.int64)


class InDepthBatches:
    """Iterate over (scale_index, scale, images, labels) batches: for each scale in turn, every
    selected digit rendered at that scale.

    test_digits: uint8 [n, 28, 28] (the dataset's ``test_digits``); test_labels: int [n].
    n_digits: evaluate a deterministic subsample of this many digits (None: all).
    device: where the images are rendered and returned (default CPU).
    """

    def __init__(
        self,
        test_digits: np.ndarray,
        test_labels: np.ndarray,
        *,
        canvas: int = 168,
        batch_size: int = 500,
        n_digits: int | None = None,
        seed: int = 0,
        scales: np.ndarray = IN_DEPTH_SCALES,
        antialias: bool = False,
        device: torch.device | str | None = None,
    ):
        self.digit_index = select_digits(len(test_digits), n_digits, seed)
        self.digits = torch.from_numpy(np.ascontiguousarray(test_digits[self.digit_index]))
        self.labels = torch.from_numpy(np.asarray(test_labels)[self.digit_index].astype(np.int64))
        self.canvas = int(canvas)
        self.batch_size = int(batch_size)
        self.scales = np.asarray(scales, dtype=np.float64)
        self.antialias = antialias
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    @property
    def n_digits(self) -> int:
        return len(self.digit_index)

    def __len__(self) -> int:
        return len(self.scales) * math.ceil(self.n_digits / self.batch_size)

    def __iter__(self) -> Iterator[InDepthBatch]:
        digits, labels = self.digits.to(self.device), self.labels.to(self.device)
        for scale_index, scale in enumerate(self.scales):
            for start in range(0, self.n_digits, self.batch_size):
                batch = digits[start : start + self.batch_size]
                factors = torch.full((len(batch),), float(scale), dtype=torch.float64)
                images = rescale_uint8(batch, factors, self.canvas, antialias=self.antialias)
                yield InDepthBatch(
                    scale_index, float(scale), images, labels[start : start + self.batch_size]
                )
