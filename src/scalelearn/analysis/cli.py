"""Command line of the analysis steps:

  scalelearn aggregate --out results/aggregate/e1.csv RUN_FOLDER ...
  scalelearn analyse NAME --runs results/aggregate/e1.csv [--compare-with CSV]
      [--run-files RUN/metrics.csv ...] [--widths-octaves 1.5 2.25 3] [--table STEM] [--figure STEM]

The analyses (NAME) and what each reads and writes are declared in scalelearn.analysis.registry.
Tables are written as STEM.csv + STEM.tex, figures as STEM.pdf + STEM.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from scalelearn.analysis import aggregate, registry
from scalelearn.errors import ScalelearnError


def _aggregate(args: argparse.Namespace) -> None:
    frame = aggregate.collect_runs(args.runs)
    aggregate.write_csv(frame, args.out)
    failed = frame[frame["status"] != "ok"]
    print(f"{args.out}: {len(frame)} runs, {len(failed)} failed")
    for row in failed.itertuples():
        print(f"  {row.experiment}/{row.run_id}: {row.status} ({getattr(row, 'reason', '')})")


def read_run_files(paths: list[str]) -> pd.DataFrame:
    """Per-run CSV files (RESULTS/runs/EXPERIMENT/RUN_ID/FILE.csv) stacked, with `experiment`
    and `run_id` columns taken from the folders."""
    frames = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ScalelearnError(f"{path} not found; run the step that writes it first")
        frame = pd.read_csv(path)
        frames.append(frame.assign(experiment=path.parent.parent.name, run_id=path.parent.name))
    return pd.concat(frames, ignore_index=True)


def _analyse(args: argparse.Namespace) -> None:
    analysis = registry.get(args.name)
    given = {
        "runs": args.runs,
        "compare_with": args.compare_with,
        "metrics": args.run_files,
        "per_scale": args.run_files,
        "widths": args.widths_octaves,
    }
    flags = {"runs": "--runs", "compare_with": "--compare-with", "widths": "--widths-octaves"}
    for need in analysis.needs:
        optional = need == "compare_with" and not analysis.compare_required
        if given[need] is None and not optional:
            flag = flags.get(need, f"--run-files (every run's {need}.csv)")
            raise ScalelearnError(f"analysis {analysis.name} needs {flag}")
    inputs = registry.AnalysisInputs(
        runs=aggregate.read_runs_csv(args.runs) if args.runs else None,
        reference=aggregate.read_runs_csv(args.compare_with) if args.compare_with else None,
        run_files=read_run_files(args.run_files) if args.run_files else None,
        widths_octaves=args.widths_octaves,
    )
    experiment = None
    if inputs.runs is not None and "experiment" in inputs.runs:
        experiment = str(inputs.runs["experiment"].iloc[0])
    elif analysis.per_experiment:
        raise ScalelearnError(f"analysis {analysis.name} needs --runs")
    stems = analysis.stems(experiment)
    for kind, given_stem in (("table", args.table), ("figure", args.figure)):
        if given_stem and kind not in stems:
            raise ScalelearnError(f"analysis {analysis.name} writes no {kind}")
        if given_stem:
            stems[kind] = given_stem
    for path in registry.run(analysis, inputs, stems):
        print(path)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "aggregate",
        help="collect run folders into one CSV (one row per run)",
        description="Read config.json + summary.json of every run folder and write one tidy CSV: "
        "grid_* (grid point), model_*/train_* (resolved config), the summary numbers, scale_i.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folder (or its summary.json)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.set_defaults(func=_aggregate)

    names = ", ".join(registry.ANALYSES)
    analyse = subparsers.add_parser(
        "analyse",
        help="one table and/or figure of the study (see scalelearn.analysis.registry)",
        description=f"Build one analysis ({names}) from aggregated runs and write its table "
        "(STEM.csv + STEM.tex) and/or figure (STEM.pdf + STEM.png). Which inputs an analysis "
        "needs is declared in scalelearn.analysis.registry; the default stems are the "
        "registry's, formatted with the experiment of --runs.",
    )
    analyse.add_argument("name", choices=list(registry.ANALYSES), metavar="NAME", help=names)
    analyse.add_argument("--runs", help="aggregated CSV of the experiment's runs")
    analyse.add_argument("--compare-with", help="aggregated CSV of the compare_with experiment")
    analyse.add_argument(
        "--run-files", nargs="+", help="every run's metrics.csv or per_scale.csv (in its folder)"
    )
    analyse.add_argument(
        "--widths-octaves", nargs="+", type=float, help="the configured distribution widths"
    )
    analyse.add_argument("--table", help="output stem of the table (default: the registry's)")
    analyse.add_argument("--figure", help="output stem of the figure (default: the registry's)")
    analyse.set_defaults(func=_analyse)
