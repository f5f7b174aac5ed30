"""Tests of the tolerance model (SPEC §9): the data distribution Q and the coverage P as specified,
the joint fit reproduces the authors' numbers and is a minimum, the table, the figure and the
`scalelearn tolerance` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from scalelearn.analysis import tolerance
from scalelearn.cli import main
from scalelearn.errors import ScalelearnError

PAPER_WIDTHS_OCTAVES = [1.5, 2.25, 3.0]
# SPEC §9 / §11: the authors' fit on b = 2.83, 4.76, 8.
PAPER_T = 0.459
PAPER_ISR = [2.89, 4.32, 6.32]
PAPER_SCALES = [[0.98, 1.67, 2.84], [1.04, 2.17, 4.51], [1.12, 2.83, 7.11]]
# The paper prints 2 decimals (T: 3), so the true values lie within half a unit of the last digit
# (0.005; 0.0005 for T). Nelder–Mead stops when the simplex is within xatol = 1e-4 and the
# objective within fatol = 1e-4, which can leave the parameters off the exact minimum by about
# 1e-3 in this flat valley; that is the added margin.
DECIMALS_2 = 0.005 + 1e-3
DECIMALS_3 = 0.0005 + 1e-3


@pytest.fixture(scope="module")
def paper_fit():
    return tolerance.fit_tolerance(PAPER_WIDTHS_OCTAVES, num_scales=3)


def test_joint_fit_reproduces_the_authors_numbers(paper_fit):
    assert paper_fit.T == pytest.approx(PAPER_T, abs=DECIMALS_3)
    assert [w.isr for w in paper_fit.widths] == pytest.approx(PAPER_ISR, abs=DECIMALS_2)
    for width, scales in zip(paper_fit.widths, PAPER_SCALES, strict=True):
        assert width.scales == pytest.approx(scales, abs=DECIMALS_2)
    assert [w.width for w in paper_fit.widths] == pytest.approx([2**1.5, 2**2.25, 8.0])


def test_fit_is_a_minimum_of_the_summed_kl(paper_fit):
    """Nelder–Mead stopped at a minimum: moving any parameter by ±1 % raises Σ_k KL(P_k ‖ Q_k)."""
    widths = PAPER_WIDTHS_OCTAVES
    x = tolerance.scale_grid(widths)
    q = tolerance.data_distribution(x, widths)

    def objective(ref, isr, T):
        p = tolerance.coverage(x, ref, isr, T, 3)
        return tolerance.kl_divergences(p, q).sum()

    ref = np.array([w.ref for w in paper_fit.widths])
    isr = np.array([w.isr for w in paper_fit.widths])
    best = objective(ref, isr, paper_fit.T)
    assert best == pytest.approx(paper_fit.kl, rel=1e-9)
    assert best == pytest.approx(sum(w.kl for w in paper_fit.widths), rel=1e-9)
    for factor in (0.99, 1.01):
        assert objective(ref, isr, paper_fit.T * factor) > best
        for k in range(len(widths)):
            moved = ref.copy()
            moved[k] *= factor
            assert objective(moved, isr, paper_fit.T) > best
            moved = isr.copy()
            moved[k] *= factor
            assert objective(ref, moved, paper_fit.T) > best


def test_one_tolerance_is_shared_by_all_widths(paper_fit):
    """T is fitted jointly: a width fitted on its own gets a different T (and so other scales)."""
    alone = tolerance.fit_tolerance([3.0])
    assert abs(alone.T - paper_fit.T) > 0.01


def test_grid_is_the_papers_for_the_papers_widths():
    x = tolerance.scale_grid(PAPER_WIDTHS_OCTAVES)
    assert len(x) == 10_000
    assert x[0] == pytest.approx(math.log2(0.5)) and x[-1] == pytest.approx(math.log2(17))
    # A wider distribution keeps its tail on the grid.
    assert tolerance.scale_grid([5.0])[-1] > 5.0 + 1.0


def test_data_distribution_is_log_uniform_with_gaussian_tails():
    widths = [1.5, 3.0]
    x = tolerance.scale_grid(widths)
    step = x[1] - x[0]
    q = tolerance.data_distribution(x, widths)
    assert q.shape == (2, len(x))
    assert q.sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-12)
    assert q.min() > 0, "zeros are replaced, so KL(P ‖ Q) is finite"
    tail_std = 0.4
    for row, width in zip(q, widths, strict=True):
        inside = (x >= 0) & (x <= width)
        height = row[inside]
        # Flat inside [log2 1, log2 b] ...
        assert height.max() == pytest.approx(height.min(), rel=1e-12)
        # ... with the density (per octave) of a uniform of width w plus two half-Gaussians of
        # std 0.4, each of mass 0.4·√(π/2) at unit height (the grid cuts < 1 % of the tails).
        density = height[0] / step
        assert density == pytest.approx(
            1 / (width + 2 * tail_std * math.sqrt(math.pi / 2)), rel=1e-2
        )
        # The tails start at the uniform's height and fall as a Gaussian of std 0.4 octave.
        for distance in (0.2, 0.4, 0.8):
            for at in (-distance, width + distance):
                i = np.argmin(abs(x - at))
                expected = math.exp(-0.5 * ((abs(x[i] - np.clip(x[i], 0, width))) / tail_std) ** 2)
                assert row[i] / height[0] == pytest.approx(expected, rel=1e-9)
    assert q[0, np.argmin(abs(x - 0.4))] / q[0].max() == pytest.approx(1.0)
    assert q[0, np.argmin(abs(x - 1.9))] / q[0].max() == pytest.approx(math.exp(-0.5), rel=1e-2)


def test_coverage_peaks_at_the_internal_scales():
    """With a tolerance narrow against the spacing, P has one peak per internal scale, at
    log2(ref · p^{i/(N−1)}), of height 1 before normalisation."""
    x = tolerance.scale_grid([3.0])
    step = x[1] - x[0]
    ref, isr, T = 1.5, 6.0, 0.2
    p = tolerance.coverage(x, [ref], [isr], T, 3)[0]
    assert p.sum() == pytest.approx(1.0)
    peaks = np.flatnonzero((p[1:-1] > p[:-2]) & (p[1:-1] > p[2:])) + 1
    expected = np.log2([ref, ref * isr**0.5, ref * isr])
    assert x[peaks] == pytest.approx(expected, abs=2 * step)
    # Unnormalised, each Gaussian has peak 1 (the others add a tiny overlap at this spacing).
    unnormalised = p / p.sum() * np.exp(-0.5 * ((x[:, None] - expected) / T) ** 2).sum()
    assert unnormalised[peaks] == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    # The shape is Gaussian with std T: half the peak at T·√(2 ln 2) from it.
    half = np.argmin(abs(x - (expected[0] - T * math.sqrt(2 * math.log(2)))))
    assert unnormalised[half] == pytest.approx(0.5, abs=1e-2)


def test_more_scales_and_a_single_width():
    fit = tolerance.fit_tolerance([2.0], num_scales=4)
    (width,) = fit.widths
    assert len(width.scales) == 4
    assert width.scales[0] == pytest.approx(width.ref)
    assert width.scales[-1] / width.scales[0] == pytest.approx(width.isr)
    ratios = np.diff(np.log2(width.scales))
    assert ratios == pytest.approx(np.full(3, ratios[0])), "log-spaced"
    assert width.ref >= 0.5 and width.isr >= 1.5 and fit.T >= 0.1


@pytest.mark.parametrize(
    "widths, num_scales, message",
    [
        ([-1.0, 2.0], 3, "widths_octaves"),
        ([0.0], 3, "widths_octaves"),
        ([], 3, "empty"),
        ([float("nan")], 3, "widths_octaves"),
        ([1.5], 1, "num_scales"),
    ],
)
def test_bad_input_is_a_clear_error(widths, num_scales, message):
    with pytest.raises(ScalelearnError, match=message):
        tolerance.fit_tolerance(widths, num_scales)


def test_table_and_latex(paper_fit):
    table = tolerance.tolerance_table(paper_fit)
    assert list(table["width_octaves"]) == PAPER_WIDTHS_OCTAVES
    assert {"width", "ref", "isr", "T", "scale_0", "scale_1", "scale_2"} <= set(table.columns)
    assert (table["T"] == paper_fit.T).all()
    assert table["isr"].to_numpy() == pytest.approx(table["scale_2"] / table["scale_0"])
    latex = tolerance.tolerance_latex(table)
    for w in paper_fit.widths:
        assert f"{w.isr:.2f}" in latex
        assert "[" + ", ".join(f"{s:.2f}" for s in w.scales) + "]" in latex
    assert f"{paper_fit.T:.3f}" in latex


def test_figure_has_one_panel_per_width_with_the_scales_dashed(paper_fit):
    figure = tolerance.tolerance_figure(paper_fit)
    axes = figure.axes
    assert len(axes) == 3
    for ax, w in zip(axes, paper_fit.widths, strict=True):
        assert ax.get_xscale() == "log"
        dashed = [line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--"]
        assert dashed == pytest.approx(w.scales)
        solid_vertical = [
            line.get_xdata()[0]
            for line in ax.lines
            if line.get_linestyle() == "-" and len(set(line.get_xdata())) == 1
        ]
        assert solid_vertical == pytest.approx([1.0, w.width])


def test_command_line_prints_json_with_the_agreed_keys(capsys):
    main(["tolerance", "--widths-octaves", "1.5", "2.25", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"T", "widths"}
    assert [set(w) for w in result["widths"]] == [{"width_octaves", "ref", "isr", "scales"}] * 3
    assert [w["width_octaves"] for w in result["widths"]] == PAPER_WIDTHS_OCTAVES
    assert [w["isr"] for w in result["widths"]] == pytest.approx(PAPER_ISR, abs=DECIMALS_2)


def test_command_line_text_and_files(tmp_path, capsys):
    main(
        [
            "tolerance",
            "--widths-octaves",
            "1.5",
            "--num-scales",
            "4",
            "--table",
            str(tmp_path / "t/tolerance"),
            "--figure",
            str(tmp_path / "f/tolerance"),
        ]
    )
    out = capsys.readouterr().out
    assert "T = " in out and "predicted ISR" in out
    for path in ("t/tolerance.csv", "t/tolerance.tex", "f/tolerance.pdf", "f/tolerance.png"):
        assert (tmp_path / path).stat().st_size > 0, path
    assert "scale_3" in (tmp_path / "t/tolerance.csv").read_text()


@pytest.mark.parametrize(
    "arguments", [["--widths-octaves", "-1", "2"], ["--widths-octaves", "1", "--num-scales", "1"]]
)
def test_command_line_bad_input_is_one_line(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["tolerance", *arguments])
    assert exit_info.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("scalelearn tolerance: error:") and "\n" not in err
