"""The E5 table (SPEC §10.9): MNIST-Scale test error per configuration of the SESN network, next
to this project's own fixed-scale SESN and plain-CNN baselines and the authors' numbers.

A configuration is (augmentation, network, scale parameterisation, learnable σ_b), read from the
resolved config columns of the aggregated runs (`train_augment`, `model_name`,
`model_scale_mode`, `model_learn_sigma_basis`), so a row means the same whichever experiment the
run came from. The authors' numbers live in `data/authors_e5.csv` beside this file, with their
source; a cell stays empty where SPEC §11 gives no number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from scalelearn.analysis.tables import _n_cells, _pm, _require, cell_stats, scale_columns
from scalelearn.settings import AUGMENTS, SCALE_MODES

AUTHORS_E5 = Path(__file__).with_name("data") / "authors_e5.csv"

# The paper's names of the two learned parameterisations it shows (SPEC §3); other modes by name.
SCALE_MODE_LABEL = {
    "": "--",
    "ratio_squared": "learn spacing",
    "single_ratio_squared": "learn ISR",
}
MODEL_LABEL = {"sesn": "SESN", "cnn": "CNN"}
KEYS = ["augment", "model", "scale_mode", "learn_sigma_basis"]
CONFIG_COLUMNS = {
    "train_augment": "augment",
    "model_name": "model",
    "model_scale_mode": "scale_mode",
    "model_learn_sigma_basis": "learn_sigma_basis",
}


def _as_bool(value) -> bool:
    """True/False from a bool or its CSV spelling; missing (a CNN has no σ_b) is False."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1")
    return bool(value) if pd.notna(value) else False


def _configurations(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with the four configuration columns of KEYS added (from the resolved config)."""
    _require(runs, ["train_augment", "model_name"], "the E5 table")
    frame = runs.copy()
    for column, key in CONFIG_COLUMNS.items():
        frame[key] = frame[column] if column in frame else np.nan
    # A plain CNN has no scales: empty scale mode, σ_b not learnable.
    frame["scale_mode"] = frame["scale_mode"].where(frame["model"] != "cnn", "").fillna("")
    frame["learn_sigma_basis"] = [
        _as_bool(v) and m != "cnn"
        for v, m in zip(frame["learn_sigma_basis"], frame["model"], strict=True)
    ]
    return frame


def read_authors_e5(path: str | Path = AUTHORS_E5) -> pd.DataFrame:
    """The authors' E5 numbers: KEYS + authors_error (text as stated), authors_error_mean,
    authors_error_std (only where a mean ± std is stated), authors_n_runs."""
    authors = pd.read_csv(
        path, comment="#", dtype={"authors_error": str, "authors_n_runs": "Int64"}
    )
    authors["learn_sigma_basis"] = authors["learn_sigma_basis"].map(_as_bool)
    return authors


def e5_table(runs: pd.DataFrame, baselines: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per configuration of the E5 runs and (if given) the baseline runs.

    runs, baselines: aggregated runs (`scalelearn aggregate`), one row per run.
    Columns: augment, model, scale_mode, learn_sigma_basis (the configuration), label, n_runs
    (runs with status ok), n_failed (the others), test_error_mean / _std (%, over the ok runs,
    sample std over realisations), the learned isr_mean / _std, sigma_basis_mean / _std and the
    mean learned scales scale_i_mean (NaN where not learned: ISR and scales
    for every mode but fixed, σ_b where it is learnable or the mode is `direct`), then the
    authors' columns of `read_authors_e5` (empty where SPEC §11 gives no number).
    """
    frames = [runs] if baselines is None else [runs, baselines]
    frame = _configurations(pd.concat(frames, ignore_index=True))
    scales = scale_columns(frame)
    # n_runs counts the ok runs, n_failed the others; the numbers are over the ok runs.
    table = cell_stats(frame, KEYS, ["test_error", "isr", "sigma_basis", *scales])
    table = table.drop(columns=[f"{c}_std" for c in scales])

    learned_scales = (table["model"] == "sesn") & (table["scale_mode"] != "fixed")
    learned_sigma = learned_scales & (
        table["learn_sigma_basis"] | (table["scale_mode"] == "direct")
    )
    for column in ("isr_mean", "isr_std", *(f"{c}_mean" for c in scales)):
        table[column] = table[column].where(learned_scales)
    for column in ("sigma_basis_mean", "sigma_basis_std"):
        table[column] = table[column].where(learned_sigma)

    table = table.merge(read_authors_e5(), on=KEYS, how="left")
    table.insert(4, "label", [_label(row) for row in table.itertuples()])
    order = [_row_rank(row) for row in table.itertuples()]
    table = table.iloc[sorted(range(len(table)), key=order.__getitem__)]
    return table.reset_index(drop=True)


def _row_rank(row) -> tuple:
    """Sort key: no augmentation first, then "+" (the schema's order); within each, the CNN,
    then SESN by scale mode in the schema's order (fixed, direct, ..., single_ratio_squared),
    learnable σ_b first."""
    augment = AUGMENTS.index(row.augment) if row.augment in AUGMENTS else len(AUGMENTS)
    mode = SCALE_MODES.index(row.scale_mode) if row.scale_mode in SCALE_MODES else -1
    return (augment, row.model != "cnn", mode, not row.learn_sigma_basis)


def _label(row) -> str:
    """e.g. 'SESN, learn ISR, learnable sigma_b, +'."""
    parts = [MODEL_LABEL.get(row.model, str(row.model))]
    if row.model != "cnn":
        parts.append(_scale_label(row.scale_mode))
        if row.learn_sigma_basis:
            parts.append("learnable sigma_b")
    if row.augment == "rescale":
        parts.append("+")
    return ", ".join(parts)


def _scale_label(mode: str) -> str:
    return SCALE_MODE_LABEL.get(mode, mode)


# --- LaTeX ----------------------------------------------------------------------------------


def _cell(mean: float, std: float) -> str:
    return "" if pd.isna(mean) else _pm(mean, std)


def _authors_cell(text) -> str:
    """The authors' text as LaTeX: '1.50 ± 0.08', '≈ 1.50', '1.70–1.74' (a range)."""
    if pd.isna(text):
        return ""
    parts = str(text).replace("±", "\\pm").replace("≈", "\\approx").split("–")
    return "--".join(f"${part.strip()}$" for part in parts)


def e5_latex(table: pd.DataFrame) -> str:
    """Rows as in `e5_table`; columns augmentation, network, scales, σ_b, runs, our test error,
    the authors' test error, learned ISR and σ_b."""

    def column(name):
        return table[name] if name in table else pd.Series(np.nan, index=table.index)

    rows = {
        "aug.": ["+" if a == "rescale" else "--" for a in table["augment"]],
        "network": [MODEL_LABEL.get(m, str(m)) for m in table["model"]],
        "scales": [_scale_label(s) for s in table["scale_mode"]],
        # direct has no σ_b parameter: all N scales are free (its learned σ_b is the smallest).
        "$\\sigma_b$": [
            "--" if m == "cnn" or s == "direct" else ("learned" if lsb else "fixed")
            for m, s, lsb in zip(
                table["model"], table["scale_mode"], table["learn_sigma_basis"], strict=True
            )
        ],
        "runs": _n_cells(table),
        "error (\\%)": [
            _cell(m, s)
            for m, s in zip(table["test_error_mean"], table["test_error_std"], strict=True)
        ],
        "authors (\\%)": [_authors_cell(t) for t in column("authors_error")],
        "learned ISR": [
            _cell(m, s) for m, s in zip(column("isr_mean"), column("isr_std"), strict=True)
        ],
        "learned $\\sigma_b$": [
            _cell(m, s)
            for m, s in zip(column("sigma_basis_mean"), column("sigma_basis_std"), strict=True)
        ],
    }
    return pd.DataFrame(rows).to_latex(
        index=False,
        escape=False,
        column_format="lllcr" + "c" * 4,
        caption="MNIST-Scale (E5): test error (\\%, mean $\\pm$ std over realisations) of the "
        "SESN network per scale parameterisation, with (+) and without the random-rescale "
        "augmentation, next to this project's fixed-scale SESN and plain-CNN baselines trained "
        "under the same protocol and the authors' numbers (5 seeds; empty where they give none). "
        "Learned ISR and $\\sigma_b$ at the best-validation checkpoint, where learned.",
        label="tab:e5-mnist-scale",
    )
