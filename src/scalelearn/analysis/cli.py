"""Command line of the analysis steps:

  scalelearn aggregate --out results/aggregate/e1.csv RUN_FOLDER ...
  scalelearn table isr-curve --runs results/aggregate/e1.csv --out results/tables/e1_isr
  scalelearn table learned-scales --runs e2.csv [--reference e1.csv] --out results/tables/e2_learned
  scalelearn table e5 --runs e5.csv [--baselines e5_baselines.csv] --out results/tables/e5_table
  scalelearn plot isr-curve --runs results/aggregate/e1.csv --out results/figures/e1_isr

`--out` of tables and plots is a stem: tables write STEM.csv + STEM.tex, plots STEM.pdf + STEM.png.
"""

from __future__ import annotations

import argparse

from scalelearn.analysis import aggregate, tables


def _aggregate(args: argparse.Namespace) -> None:
    frame = aggregate.collect_runs(args.runs)
    aggregate.write_csv(frame, args.out)
    print(f"{args.out}: {len(frame)} runs")


def _table_isr_curve(args: argparse.Namespace) -> None:
    curve = tables.isr_curve_table(aggregate.read_runs_csv(args.runs))
    for path in tables.write_table(curve, tables.isr_curve_latex(curve), args.out):
        print(path)


def _table_learned_scales(args: argparse.Namespace) -> None:
    reference = aggregate.read_runs_csv(args.reference) if args.reference else None
    table = tables.learned_scales_table(aggregate.read_runs_csv(args.runs), reference)
    for path in tables.write_table(table, tables.learned_scales_latex(table), args.out):
        print(path)


def _table_e5(args: argparse.Namespace) -> None:
    from scalelearn.analysis import e5

    baselines = aggregate.read_runs_csv(args.baselines) if args.baselines else None
    table = e5.e5_table(aggregate.read_runs_csv(args.runs), baselines)
    for path in tables.write_table(table, e5.e5_latex(table), args.out):
        print(path)


def _plot_isr_curve(args: argparse.Namespace) -> None:
    from scalelearn.analysis import figures  # matplotlib only where a figure is drawn

    curve = tables.isr_curve_table(aggregate.read_runs_csv(args.runs))
    for path in figures.save_figure(figures.isr_curve_figure(curve), args.out):
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

    table = subparsers.add_parser(
        "table",
        help="result tables (STEM.csv + STEM.tex) from an aggregated CSV",
        description="Result tables; --out is a stem, STEM.csv and STEM.tex are written.",
    )
    kinds = table.add_subparsers(dest="table", required=True, metavar="TABLE")
    isr = kinds.add_parser(
        "isr-curve", help="E1: test error mean ± std per (width, ISR), best ISR per width"
    )
    isr.add_argument("--runs", required=True, help="aggregated CSV of a fixed-ISR sweep")
    isr.add_argument("--out", required=True, help="output stem")
    isr.set_defaults(func=_table_isr_curve)
    learned = kinds.add_parser(
        "learned-scales", help="E2: error and learned sigma_b / ISR per width"
    )
    learned.add_argument("--runs", required=True, help="aggregated CSV of learned-scale runs")
    learned.add_argument("--reference", help="aggregated CSV of a fixed-ISR sweep (best ISR)")
    learned.add_argument("--out", required=True, help="output stem")
    learned.set_defaults(func=_table_learned_scales)
    mnist_scale = kinds.add_parser(
        "e5",
        help="E5: MNIST-Scale test error per configuration, baselines and the authors' numbers",
    )
    mnist_scale.add_argument("--runs", required=True, help="aggregated CSV of the E5 runs")
    mnist_scale.add_argument("--baselines", help="aggregated CSV of baseline runs (extra rows)")
    mnist_scale.add_argument("--out", required=True, help="output stem")
    mnist_scale.set_defaults(func=_table_e5)

    plot = subparsers.add_parser(
        "plot",
        help="figures (STEM.pdf + STEM.png) from an aggregated CSV",
        description="Figures; --out is a stem, STEM.pdf and STEM.png are written.",
    )
    figures = plot.add_subparsers(dest="figure", required=True, metavar="FIGURE")
    curve = figures.add_parser(
        "isr-curve", help="E1: test error vs ISR (log2), one line per width, ± std, best marked"
    )
    curve.add_argument("--runs", required=True, help="aggregated CSV of a fixed-ISR sweep")
    curve.add_argument("--out", required=True, help="output stem")
    curve.set_defaults(func=_plot_isr_curve)
