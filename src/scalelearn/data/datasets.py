"""The two dataset protocols of the paper (SPEC section 7), built from the MNIST pool.

- ``scale_distribution`` (E1-E4): stratified split 10,000 / 5,000 / 50,000; each 28x28 frame at
  the centre of a 168x168 zero canvas, rescaled by s ~ LogUniform[1, b], one draw per image.
- ``mnist_scale`` (E5, SESN's MNIST-Scale): stratified split 10,000 / 2,000 / 50,000; each image
  rescaled by s ~ Uniform[0.3, 1.0] on its own 28x28 canvas.

Both are deterministic functions of (pool, parameters, seed): the random draws come from explicit
numpy Generators seeded with ``[seed, stream]`` (stream 0: the split, stream 1: the scales). The
split and the uniform variates behind the scales therefore do not depend on the width b: datasets
of different widths with the same seed hold the same digits with "the same" relative scale
(common random numbers), so differences between widths are not split noise.

When the pool is smaller than the requested split (e.g. the 5,000 embedded digits), the split
sizes are scaled down proportionally to use the whole pool; a warning says so and the manifest
records the requested and the actual sizes.
"""

from __future__ import annotations

import logging
import math
import os

import numpy as np

from scalelearn.errors import ScalelearnError
from scalelearn.settings import SPLITS  # ("train", "val", "test")

logger = logging.getLogger(__name__)

SCALE_DISTRIBUTION_SPLIT = (10_000, 5_000, 50_000)
MNIST_SCALE_SPLIT = (10_000, 2_000, 50_000)
MNIST_SCALE_RANGE = (0.3, 1.0)
RENDER_BATCH = 512  # images rendered at once: bounds the float64 working memory (~115 MB at 168)
_SPLIT_STREAM, _SCALE_STREAM = 0, 1


def resolve_split_sizes(requested: tuple[int, ...], n_pool: int) -> tuple[tuple[int, ...], bool]:
    """The split sizes to use: ``requested`` when it fits in the pool, otherwise scaled down
    proportionally to use the whole pool (largest remainders, so the sizes sum to ``n_pool``).

    Returns (sizes, scaled).
    """
    requested = tuple(int(n) for n in requested)
    if len(requested) != 3 or min(requested) < 0 or requested[0] == 0:
        raise ScalelearnError(
            f"split must be three sizes (train, val, test) >= 0 with train > 0, got {requested}"
        )
    total = sum(requested)
    if total <= n_pool:
        return requested, False
    sizes = _largest_remainder(n_pool, np.asarray(requested, dtype=np.float64))
    return tuple(int(n) for n in sizes), True


def _largest_remainder(total: int, weights: np.ndarray, capacity: np.ndarray | None = None):
    """Integers proportional to ``weights`` summing to ``total`` (Hamilton's method; ties go to
    the earlier entry), never above ``capacity``."""
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    if capacity is not None:
        counts = np.minimum(counts, capacity)
    order = np.argsort(-(exact - counts), kind="stable")
    for i in order:
        if counts.sum() == total:
            break
        if capacity is None or counts[i] < capacity[i]:
            counts[i] += 1
    return counts


def stratified_split(
    labels: np.ndarray, sizes: tuple[int, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Split pool indices into ``len(sizes)`` disjoint sets whose class proportions follow the
    pool's (each split takes, per class, its share of what the earlier splits left).

    labels: int [N]; sizes: split sizes with sum <= N. Returns one int64 index array per split,
    in random order (not sorted by class).
    """
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    remaining = np.array([len(idx) for idx in per_class], dtype=np.int64)
    taken = np.zeros_like(remaining)
    splits = []
    for size in sizes:
        counts = _largest_remainder(size, remaining.astype(np.float64), capacity=remaining)
        chosen = [idx[t : t + n] for idx, t, n in zip(per_class, taken, counts, strict=True)]
        splits.append(rng.permutation(np.concatenate(chosen)).astype(np.int64))
        taken += counts
        remaining -= counts
    return splits


def render(
    frames: np.ndarray,
    factors: np.ndarray,
    canvas: int,
    *,
    antialias: bool = False,
    batch_size: int = RENDER_BATCH,
) -> np.ndarray:
    """Rescale each frame about its centre onto a ``canvas`` x ``canvas`` zero canvas.

    frames: uint8 [n, h, w]; factors: [n]. Returns uint8 [n, canvas, canvas], rendered in batches
    so only ``batch_size`` images are ever held as floats.
    """
    import torch

    from scalelearn.data.rescale import rescale_uint8

    out = np.empty((len(frames), canvas, canvas), dtype=np.uint8)
    for start in range(0, len(frames), batch_size):
        stop = start + batch_size
        images = torch.from_numpy(np.ascontiguousarray(frames[start:stop]))
        scales = torch.from_numpy(np.asarray(factors[start:stop], dtype=np.float64))
        out[start:stop] = rescale_uint8(images, scales, canvas, antialias=antialias).numpy()
    return out


def _build(
    protocol: str,
    pool_images: np.ndarray,
    pool_labels: np.ndarray,
    *,
    seed: int,
    split: tuple[int, ...],
    canvas: int,
    draw_scales,
    parameters: dict,
    antialias: bool,
) -> tuple[dict[str, np.ndarray], dict]:
    if pool_images.ndim != 3 or len(pool_images) != len(pool_labels):
        raise ScalelearnError("the pool must be images [N, h, w] with one label each")
    sizes, scaled = resolve_split_sizes(split, len(pool_images))
    if scaled:
        logger.warning(
            "%s: the pool has %d images, fewer than the requested split %s (%d); using the "
            "proportionally scaled split %s instead (recorded in the manifest)",
            protocol,
            len(pool_images),
            tuple(split),
            sum(split),
            sizes,
        )
    split_rng = np.random.default_rng([seed, _SPLIT_STREAM])
    scale_rng = np.random.default_rng([seed, _SCALE_STREAM])
    indices = stratified_split(pool_labels, sizes, split_rng)
    arrays: dict[str, np.ndarray] = {}
    for name, index in zip(SPLITS, indices, strict=True):
        # float32 is what is stored, so the image is rendered with exactly the stored factor.
        scales = draw_scales(scale_rng, len(index)).astype(np.float32)
        arrays[f"{name}_images"] = render(pool_images[index], scales, canvas, antialias=antialias)
        arrays[f"{name}_labels"] = pool_labels[index].astype(np.int64)
        arrays[f"{name}_scales"] = scales
        arrays[f"{name}_index"] = index
    arrays["test_digits"] = pool_images[indices[2]].astype(np.uint8)
    manifest = {
        "protocol": protocol,
        "seed": int(seed),
        "parameters": {
            **parameters,
            "canvas": int(canvas),
            "interpolation": interpolation_record(antialias),
        },
        "split_requested": dict(zip(SPLITS, (int(n) for n in split), strict=True)),
        "split": dict(zip(SPLITS, sizes, strict=True)),
        "split_scaled": scaled,
        "pool_size": int(len(pool_images)),
        "class_counts": {
            name: np.bincount(pool_labels[index], minlength=10).tolist()
            for name, index in zip(SPLITS, indices, strict=True)
        },
    }
    return arrays, manifest


def interpolation_record(antialias: bool) -> dict:
    """How images are resampled, for manifests."""
    from scalelearn.data.rescale import CUBIC_A

    return {"kernel": "cubic convolution", "a": CUBIC_A, "antialias": bool(antialias)}


def make_scale_distribution(
    pool_images: np.ndarray,
    pool_labels: np.ndarray,
    *,
    width_b: float,
    seed: int,
    canvas: int = 168,
    split: tuple[int, int, int] = SCALE_DISTRIBUTION_SPLIT,
    antialias: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """The scale-distribution dataset of width ``b`` (E1-E4).

    pool_images: uint8 [N, 28, 28]; pool_labels: int [N]. Returns (arrays, manifest): arrays
    ``{split}_images`` uint8 [n, canvas, canvas], ``{split}_labels`` int64 [n], ``{split}_scales``
    float32 [n] in [1, b], ``{split}_index`` int64 [n] (into the pool), ``test_digits`` uint8
    [n_test, 28, 28]; manifest: the parameters, for ``save_dataset``.
    """
    width_b = float(width_b)
    if not math.isfinite(width_b) or width_b < 1:
        raise ScalelearnError(f"the distribution width b must be >= 1, got {width_b}")
    if canvas < pool_images.shape[-1]:
        raise ScalelearnError(f"canvas {canvas} is smaller than the {pool_images.shape[-1]} frame")
    log_b = math.log(width_b)

    def draw_scales(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.exp(log_b * rng.random(n))

    parameters = {
        "width_b": width_b,
        "scale_distribution": "log_uniform",
        "scale_range": [1.0, width_b],
    }
    return _build(
        "scale_distribution",
        pool_images,
        pool_labels,
        seed=seed,
        split=split,
        canvas=canvas,
        draw_scales=draw_scales,
        parameters=parameters,
        antialias=antialias,
    )


def make_mnist_scale(
    pool_images: np.ndarray,
    pool_labels: np.ndarray,
    *,
    seed: int,
    split: tuple[int, int, int] = MNIST_SCALE_SPLIT,
    scale_range: tuple[float, float] = MNIST_SCALE_RANGE,
    antialias: bool = False,
) -> tuple[dict[str, np.ndarray], dict]:
    """SESN's MNIST-Scale (E5): every image rescaled by s ~ Uniform[scale_range] on its own
    28x28 canvas. Returns (arrays, manifest) with the keys of ``make_scale_distribution``
    (images uint8 [n, 28, 28])."""
    low, high = (float(v) for v in scale_range)
    if not 0 < low <= high:
        raise ScalelearnError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")

    def draw_scales(rng: np.random.Generator, n: int) -> np.ndarray:
        return low + (high - low) * rng.random(n)

    parameters = {"scale_distribution": "uniform", "scale_range": [low, high]}
    return _build(
        "mnist_scale",
        pool_images,
        pool_labels,
        seed=seed,
        split=split,
        canvas=pool_images.shape[-1],
        draw_scales=draw_scales,
        parameters=parameters,
        antialias=antialias,
    )


DATASET_KEYS = tuple(
    f"{split}_{part}" for split in SPLITS for part in ("images", "labels", "scales", "index")
) + ("test_digits",)


def save_dataset(path: str | os.PathLike, arrays: dict[str, np.ndarray], manifest: dict) -> dict:
    """Write the dataset atomically as .npz (reproducible bytes) with ``path``.json beside it
    holding ``manifest`` plus the npz's sha256 and the package version. Returns that manifest."""
    from scalelearn.data.store import save_with_manifest

    missing = [key for key in DATASET_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"dataset arrays lack {missing}")
    return save_with_manifest(path, {key: arrays[key] for key in DATASET_KEYS}, manifest)


def load_dataset(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a dataset written by ``save_dataset``: {key: array} with the keys of DATASET_KEYS."""
    from scalelearn.data.store import load_npz

    return load_npz(path, required=DATASET_KEYS)


def _regenerate_hint(path) -> str:
    json_path = os.path.splitext(path)[0] + ".json"
    return (
        f"delete {path} and {json_path} and run snakemake again to regenerate it "
        "(or remake it with `scalelearn data`)"
    )


def _manifest_parameters(manifest: dict) -> dict:
    """The parameters of a dataset manifest in the run config's terms (`dataset_params`)."""
    parameters = manifest.get("parameters", {})
    found = {
        "protocol": manifest.get("protocol"),
        "seed": manifest.get("seed"),
        "splits": manifest.get("split_requested"),
        "antialias": parameters.get("interpolation", {}).get("antialias"),
    }
    if manifest.get("protocol") == "scale_distribution":
        found["width"] = parameters.get("width_b")
        found["canvas"] = parameters.get("canvas")
    else:
        found["scale_min"], found["scale_max"] = parameters.get("scale_range", [None, None])
    return found


def _same(expected, found) -> bool:
    if isinstance(expected, float) and isinstance(found, (int, float)):
        return math.isclose(expected, found, rel_tol=1e-9)
    return expected == found


def verify_dataset(path: str | os.PathLike, expected: dict | None = None) -> dict:
    """Check a dataset file against its manifest before anyone trains on it: the file's sha256
    must be the manifest's, and the manifest's parameters must be `expected` (a run config's
    `dataset_params`: protocol, seed, splits, antialias, and width + canvas or scale_min +
    scale_max; keys not listed are not compared). Returns the manifest; raises ScalelearnError
    saying how to regenerate the file."""
    from scalelearn.data.store import manifest_path, read_manifest, sha256_file

    path = str(path)
    if not os.path.isfile(path):
        raise ScalelearnError(f"dataset {path} does not exist; build it first (snakemake does)")
    manifest = read_manifest(path)
    if "sha256" not in manifest:
        raise ScalelearnError(
            f"dataset {path} has no manifest with a sha256 ({manifest_path(path)}); "
            + _regenerate_hint(path)
        )
    actual = sha256_file(path)
    if actual != manifest["sha256"]:
        raise ScalelearnError(
            f"dataset {path} does not match its manifest (sha256 {actual[:12]}... != "
            f"{manifest['sha256'][:12]}...): the file is corrupt or was replaced; "
            + _regenerate_hint(path)
        )
    found = _manifest_parameters(manifest)
    for key, value in (expected or {}).items():
        if key in found and not _same(value, found[key]):
            raise ScalelearnError(
                f"dataset {path} was made with {key} = {found[key]!r}, but the run expects "
                f"{value!r}; " + _regenerate_hint(path)
            )
    return manifest
