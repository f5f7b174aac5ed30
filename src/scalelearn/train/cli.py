"""`scalelearn train`: one training run from its run config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scalelearn.errors import ScalelearnError
from scalelearn.settings import PROFILERS


def read_run_config(value: str) -> dict:
    """A run config given inline as JSON or as the path of a JSON file."""
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.exists():
            raise ScalelearnError(
                f"--run-config {value!r} is neither inline JSON nor an existing file; "
                "print one with `scalelearn runs --config CONFIG --show RUN_ID`"
            )
        if not path.is_file():
            raise ScalelearnError(f"--run-config {value!r} is not a file")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ScalelearnError(
                f"--run-config {value!r} is not a text (JSON) file; print a run config with "
                "`scalelearn runs --config CONFIG --show RUN_ID`"
            ) from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScalelearnError(f"--run-config is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ScalelearnError("--run-config must be a JSON object (see `scalelearn runs --show`)")
    for key in ("dataset", "model"):
        if key not in config:
            raise ScalelearnError(f"the run config has no {key!r} key (see `scalelearn runs`)")
    return config


def run(args: argparse.Namespace) -> None:
    from scalelearn.train.run import train_run  # imports torch and Lightning: only when used

    summary = train_run(read_run_config(args.run_config), args.out, args.profiler)
    name = f"{summary['experiment']}/{summary['run_id']}"
    if summary["status"] != "ok":
        # Not an error of the command: the run's result is "diverged", recorded in summary.json
        # and shown by the aggregate and the tables.
        print(f"{name}: DIVERGED: {summary['reason']} (status in {args.out}/summary.json)")
        return
    print(
        f"{name}: test error {summary['test_error']:.2f}% "
        f"(best epoch {summary['best_epoch']}, {summary['wall_time_s']:.0f} s)"
    )


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train one run",
        description=(
            "Train one run and write its folder: config.json (resolved config), metrics.csv "
            "(one row per epoch: losses, accuracies, learning rates, internal scales, sigma_basis, "
            "ISR, K), best.ckpt and last.ckpt, and last summary.json (test metrics and scales of "
            "the best-validation checkpoint). Runs on a GPU when one is available "
            "(train.accelerator), with train.threads CPU threads. Started again on the same "
            "folder with the same run config, a killed run resumes from last.ckpt; run files of "
            "another config are deleted and the run starts fresh. A diverged run writes "
            "summary.json with status 'diverged' and exits 0."
        ),
    )
    parser.add_argument(
        "--run-config",
        required=True,
        help="the run config, inline JSON or a JSON file (`scalelearn runs --show RUN_ID`)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the run folder to write")
    parser.add_argument(
        "--profiler",
        choices=PROFILERS,
        help="Lightning's profiler: where the training loop's time goes, in OUT/fit-profile.txt "
        "and OUT/test-profile.txt (the results do not change)",
    )
    parser.set_defaults(func=run)
