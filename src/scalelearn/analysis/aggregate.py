"""Collect the run folders of an experiment into one tidy table (one row per run).

Columns: `experiment`, `run_id`, `dataset`, `status` ("ok", or how the run failed, e.g.
"diverged", with its `reason`: failed runs stay in the table, with no test numbers); the grid
point as `grid_<key>` (e.g. grid_width, grid_isr, grid_seed); the resolved model and train keys
as `model_<key>` / `train_<key>`; then
the summary's numbers at the best checkpoint (`test_error` in %, `test_acc`, `best_epoch`, the
final `sigma_basis`, `isr`, `kernel_size`, ...), with `internal_scales` spread over `scale_0` ..
`scale_{N-1}`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from scalelearn.atomic import atomic_path
from scalelearn.errors import ScalelearnError


def _read_json(path: Path) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise ScalelearnError(
            f"{path} is missing; the run did not finish. Train it first (snakemake makes it)"
        ) from None
    except json.JSONDecodeError as error:
        raise ScalelearnError(f"{path} is not valid JSON ({error}); rerun that run") from None


def run_folder(path: str | os.PathLike) -> Path:
    """A run folder from the folder itself or from its summary.json / config.json."""
    path = Path(path)
    return path.parent if path.suffix == ".json" else path


def run_row(folder: str | os.PathLike) -> dict:
    """One flat row from a run folder's config.json and summary.json."""
    folder = run_folder(folder)
    config = _read_json(folder / "config.json")
    summary = _read_json(folder / "summary.json")
    row = {
        "experiment": config["experiment"],
        "run_id": config["run_id"],
        "dataset": config.get("dataset"),
        "status": summary.get("status", "ok"),
    }
    row.update({f"grid_{key}": value for key, value in config["grid"].items()})
    for section in ("model", "train"):
        for key, value in config.get(section, {}).items():
            # Lists (milestones) stay readable in one CSV cell.
            row[f"{section}_{key}"] = json.dumps(value) if isinstance(value, list) else value
    for key, value in summary.items():
        if key in ("experiment", "run_id", "grid"):
            continue
        if key == "internal_scales":
            row.update({f"scale_{i}": scale for i, scale in enumerate(value)})
        elif isinstance(value, (list, dict)):
            row[key] = json.dumps(value)
        else:
            row[key] = value
    return row


def collect_runs(folders: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The table of the given run folders, sorted by experiment and run id."""
    rows = [run_row(folder) for folder in folders]
    if not rows:
        raise ScalelearnError("no run folders given to aggregate")
    frame = pd.DataFrame(rows)
    duplicated = frame.duplicated(["experiment", "run_id"])
    if duplicated.any():
        ids = frame.loc[duplicated, "run_id"].tolist()
        raise ScalelearnError(f"run(s) {ids} given twice; pass every run folder once")
    return frame.sort_values(["experiment", "run_id"], kind="stable").reset_index(drop=True)


def write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Atomically write a frame as CSV (no index)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def read_runs_csv(path: str | os.PathLike) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ScalelearnError(f"{path} not found; make it with `scalelearn aggregate`")
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise ScalelearnError(
            f"{path} is not an aggregated runs CSV ({error}); make it with `scalelearn aggregate`"
        ) from None
    if frame.empty:
        raise ScalelearnError(f"{path} has no runs; make it with `scalelearn aggregate`")
    return frame
