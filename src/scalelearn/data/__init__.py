"""MNIST sources, the two dataset protocols, the in-depth per-scale test and in-memory batches.

Datasets are plain uint8 arrays (npz on disk, tensors in memory); no image files. The names below
are imported on first use, so `scalelearn --help` (which imports `scalelearn.data.cli`) does not
pay for importing torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load_pool": "mnist",
    "save_pool": "mnist",
    "read_pool": "mnist",
    "SOURCES": "mnist",
    "rescale_about_centre": "rescale",
    "rescale_uint8": "rescale",
    "random_rescale": "rescale",
    "to_float": "rescale",
    "to_uint8": "rescale",
    "make_scale_distribution": "datasets",
    "make_mnist_scale": "datasets",
    "save_dataset": "datasets",
    "load_dataset": "datasets",
    "IN_DEPTH_SCALES": "in_depth",
    "InDepthBatches": "in_depth",
    "Batches": "loader",
    "train_statistics": "loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
