"""`scalelearn train`: one training run from its run config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from scalelearn.errors import ScalelearnError


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
        text = path.read_text()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScalelearnError(f"--run-config is not valid JSON: {error}") from error
    for key in ("dataset", "model"):
        if key not in config:
            raise ScalelearnError(f"the run config has no {key!r} key (see `scalelearn runs`)")
    return config


def run(args: argparse.Namespace) -> None:
    from scalelearn.train.run import train_run  # imports torch and Lightning: only when used

    summary = train_run(read_run_config(args.run_config), args.out, threads=args.threads)
    print(
        f"{summary['experiment']}/{summary['run_id']}: test error {summary['test_error']:.2f}% "
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
            "(train.accelerator). Started again on the same folder, a killed run resumes from "
            "last.ckpt."
        ),
    )
    parser.add_argument(
        "--run-config",
        required=True,
        help="the run config, inline JSON or a JSON file (`scalelearn runs --show RUN_ID`)",
    )
    parser.add_argument("--out", required=True, type=Path, help="the run folder to write")
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)"
    )
    parser.set_defaults(func=run)
