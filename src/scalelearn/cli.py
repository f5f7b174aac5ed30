"""The `scalelearn` command line: one verb per pipeline step, so every Snakemake rule can be run
and debugged by hand. Each area registers its own verbs."""

from __future__ import annotations

import argparse
import importlib
import sys

from scalelearn.errors import ScalelearnError

# Modules that provide `register(subparsers)`; imported lazily so `--help` stays fast and a
# missing optional area does not break the others.
VERB_MODULES = (
    "scalelearn.data.cli",
    "scalelearn.experiments",
    "scalelearn.train.cli",
    "scalelearn.analysis.cli",
    "scalelearn.analysis.tolerance",
    "scalelearn.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalelearn",
        description="Scale learning in scale-equivariant CNNs: data, training, analysis.",
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ScalelearnError as error:
        print(f"scalelearn {args.verb}: error: {error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
