"""Writing arrays and their manifest to disk: reproducible bytes, atomic replacement, sha256.

``numpy.savez_compressed`` stamps every member with the current time, so two runs with the same
seed would give files with different hashes. ``write_npz`` writes the same zip layout (readable
by ``numpy.load``) with a fixed timestamp, so equal arrays give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from scalelearn.atomic import atomic_path, write_text
from scalelearn.errors import ScalelearnError

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Atomically write ``arrays`` as a compressed .npz with reproducible bytes."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, mode="w", compression=zipfile.ZIP_DEFLATED) as archive:
            for key, value in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with archive.open(info, mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(value))


def write_json(path: str | os.PathLike, data: Mapping) -> None:
    """Atomically write ``data`` as indented JSON (keys in insertion order)."""
    write_text(path, json.dumps(data, indent=2) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest beside an .npz file: same name, suffix .json."""
    return Path(path).with_suffix(".json")


def save_with_manifest(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], manifest: Mapping
) -> dict:
    """Write the .npz, then its manifest (with the npz's sha256 and the package version).

    The manifest is written last, so a manifest never describes a half-written file. Returns the
    manifest as written.
    """
    from scalelearn import __version__

    write_npz(path, arrays)
    full = {**manifest, "sha256": sha256_file(path), "scalelearn_version": __version__}
    write_json(manifest_path(path), full)
    return full


def load_npz(path: str | os.PathLike, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read every array of an .npz into memory; fail clearly if it is missing or incomplete."""
    path = Path(path)
    if not path.is_file():
        raise ScalelearnError(f"{path} does not exist; create it first (see `scalelearn data -h`)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise ScalelearnError(
            f"{path} is not a readable .npz file ({error}); recreate it"
        ) from error
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ScalelearnError(f"{path} lacks the arrays {missing}; recreate it")
    return arrays


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest beside an .npz (an empty dict when there is none)."""
    json_path = manifest_path(path)
    if not json_path.is_file():
        return {}
    try:
        return json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScalelearnError(
            f"manifest {json_path} is not valid JSON ({error}); delete it and {path} and "
            "run snakemake again to regenerate them"
        ) from None
