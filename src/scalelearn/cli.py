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
    "scalelearn.train.evaluate",
    "scalelearn.analysis.cli",
    "scalelearn.analysis.tolerance",
    "scalelearn.bench",
    "scalelearn.cost",
    "scalelearn.devices",
    "scalelearn.config_doc",
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (seeds use non_negative_int)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {value}: must be an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid value {value}: must be an integer >= 0")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: not an integer") from None


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage only on --help); the verbs' parsers inherit it."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    except OSError as error:
        # The user's paths: an output under a file, an unwritable folder, a full disk, ...
        where = f": {error.filename}" if error.filename else ""
        print(
            f"scalelearn {args.verb}: error: {error.strerror or error}{where} "
            "(check the path and its permissions)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
