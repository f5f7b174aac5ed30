"""Atomic output files, used by every writer of the package (datasets, manifests, run files,
checkpoints, tables, figures): write under a temporary name in the target folder, then rename, so
a killed job never leaves a file that looks complete."""

from __future__ import annotations

import csv
import glob
import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty file `.NAME.XXXX.tmp` beside `path` (same file system, so the rename is
    atomic); on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A writer of this file killed mid-write (SIGKILL runs no cleanup) left its temporary behind;
    # one job writes a file at a time, so any such file is stale.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    tmp = Path(name)
    # mkstemp makes the file private (0600); give it the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write `text` to `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_rows(path: str | os.PathLike, rows: list[dict]) -> None:
    """Atomically write `rows` (dicts with the same keys, in order) as a CSV with a header."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
