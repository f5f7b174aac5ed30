"""The reduced-resolution option of the scale-distribution protocol (issue #9): `digit_size` shrinks
the 28x28 frames before they are placed, so a digit spans about digit_size·s pixels at scale s;
the default 28 leaves every byte of a dataset as it was."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from scalelearn.data import datasets, in_depth, mnist
from scalelearn.errors import ScalelearnError
from scalelearn.experiments import datasets_needed, validate_config

# sha256 over DATASET_KEYS of the dataset below, computed before digit_size existed.
PAPER_PROTOCOL_SHA256 = "9fd9b0b7251b9b90e65f9bf2cded183acd57ca5eeb0b5117b0c56f7928b0810c"


@pytest.fixture(scope="module")
def pool():
    images, labels, _ = mnist.load_pool("embedded")
    return images[:300], labels[:300]


def arrays_sha256(arrays: dict) -> str:
    digest = hashlib.sha256()
    for key in datasets.DATASET_KEYS:
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(arrays[key]).tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("extra", [{}, {"digit_size": 28}], ids=["default", "explicit"])
def test_digit_size_28_is_the_paper_protocol_byte_for_byte(pool, extra):
    arrays, manifest = datasets.make_scale_distribution(
        *pool, width_b=4.0, seed=3, canvas=64, split=(100, 50, 50), **extra
    )
    assert arrays_sha256(arrays) == PAPER_PROTOCOL_SHA256
    assert manifest["parameters"]["digit_size"] == 28


def extent(images: np.ndarray) -> np.ndarray:
    """Width (pixels) of the bright part of the centre row of every image: [n]."""
    row = images[:, images.shape[1] // 2].astype(np.float64)
    return (row > 127).sum(axis=1)


@pytest.mark.parametrize("digit_size", [14, 20])
def test_a_digit_spans_digit_size_times_its_scale(digit_size):
    # Solid frames: the "digit" fills the whole 28x28 frame.
    frames = np.full((40, 28, 28), 255, dtype=np.uint8)
    labels = np.arange(40) % 10
    arrays, manifest = datasets.make_scale_distribution(
        frames, labels, width_b=3.0, seed=0, canvas=96, split=(20, 10, 10), digit_size=digit_size
    )
    assert manifest["parameters"]["digit_size"] == digit_size
    assert arrays["test_digits"].shape == (10, digit_size, digit_size)
    for split in ("train", "val", "test"):
        expected = digit_size * arrays[f"{split}_scales"]
        np.testing.assert_allclose(extent(arrays[f"{split}_images"]), expected, atol=1.5)
    # The in-depth test renders the placed frames: at scale 1 a digit spans digit_size pixels.
    batches = in_depth.InDepthBatches(
        arrays["test_digits"], arrays["test_labels"], canvas=96, batch_size=10, scales=[1.0, 2.0]
    )
    first, second = list(batches)
    np.testing.assert_allclose(extent(first.images.numpy()), digit_size, atol=1)
    np.testing.assert_allclose(extent(second.images.numpy()), 2 * digit_size, atol=1.5)


def test_real_digits_shrink_by_digit_size_over_28(pool):
    """Radius of gyration of the same digits at the same scales: halved with digit_size 14."""

    def radius(images: np.ndarray) -> np.ndarray:
        size = images.shape[-1]
        coords = np.arange(size) - (size - 1) / 2
        mass = images.reshape(len(images), -1).sum(axis=1)
        yy = (images.sum(axis=2) * coords**2).sum(axis=1) / mass
        xx = (images.sum(axis=1) * coords**2).sum(axis=1) / mass
        return np.sqrt(xx + yy)

    common = {"width_b": 2.0, "seed": 1, "canvas": 84, "split": (50, 10, 10)}
    full, _ = datasets.make_scale_distribution(*pool, **common)
    half, _ = datasets.make_scale_distribution(*pool, digit_size=14, **common)
    np.testing.assert_array_equal(full["train_scales"], half["train_scales"])
    ratio = radius(half["train_images"].astype(np.float64)) / radius(
        full["train_images"].astype(np.float64)
    )
    np.testing.assert_allclose(np.median(ratio), 0.5, rtol=0.04)


def test_bad_digit_sizes_are_refused(pool):
    with pytest.raises(ScalelearnError, match="digit_size"):
        datasets.make_scale_distribution(*pool, width_b=2.0, seed=0, digit_size=40)
    with pytest.raises(ScalelearnError, match="canvas 10 is smaller than the 14-pixel digit"):
        datasets.make_scale_distribution(*pool, width_b=2.0, seed=0, canvas=10, digit_size=14)


def minimal_config(**section) -> dict:
    return {
        "mnist": {"source": "embedded"},
        "datasets": {"scale_distribution": {"widths_octaves": [1.0], "seeds": [0], **section}},
        "experiments": {"e1": {"dataset": "scale_distribution", "model": {"name": "toy"}}},
    }


def test_config_carries_digit_size_to_the_dataset():
    config = validate_config(minimal_config(canvas=84, digit_size=14))
    (dataset,) = datasets_needed(config)
    assert dataset.params["digit_size"] == 14 and dataset.params["canvas"] == 84
    (default,) = datasets_needed(validate_config(minimal_config()))
    assert default.params["digit_size"] == 28
    with pytest.raises(ScalelearnError, match="digit_size"):
        validate_config(minimal_config(digit_size=29))
    with pytest.raises(ScalelearnError, match="canvas.*at least digit_size"):
        validate_config(minimal_config(canvas=12, digit_size=14))
    # The digit extent check follows the digit size: b = 8 fits 84 px with 14 px frames only.
    reduced = minimal_config(canvas=84, digit_size=14, widths_octaves=[1.5, 2.25, 3.0])
    validate_config(reduced)
    with pytest.raises(ScalelearnError, match="widths_octaves"):
        validate_config(minimal_config(canvas=84, widths_octaves=[3.0]))


def test_command_line_digit_size(tmp_path, capsys):
    from scalelearn.cli import main

    pool_path = tmp_path / "pool.npz"
    main(["data", "pool", "--source", "embedded", "--out", str(pool_path)])
    out = tmp_path / "b2" / "seed0.npz"
    main(
        ["data", "scale-distribution", "--pool", str(pool_path), "--width", "2", "--canvas"]
        + ["42", "--digit-size", "14", "--seed", "0", "--split", "30", "10", "10"]
        + ["--out", str(out)]
    )
    manifest = json.loads(out.with_suffix(".json").read_text())
    assert manifest["parameters"]["digit_size"] == 14
    loaded = datasets.load_dataset(out)
    assert loaded["train_images"].shape == (30, 42, 42)
    assert loaded["test_digits"].shape == (10, 14, 14)
    assert torch.from_numpy(loaded["train_images"]).float().mean() > 0
    # A run that expects the paper's digits refuses this file before training.
    datasets.verify_dataset(out, {"digit_size": 14, "canvas": 42})
    with pytest.raises(ScalelearnError, match="digit_size = 14, but the run expects 28"):
        datasets.verify_dataset(out, {"digit_size": 28})
