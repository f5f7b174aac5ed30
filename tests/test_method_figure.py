"""Tests of the method figure (SPEC §10.1): the basis at the internal scales and one multi-scale
kernel, drawn from the package's basis; read from a trained run's best checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scalelearn.analysis.method import method_figure, method_figure_from_run
from scalelearn.data import datasets, mnist
from scalelearn.errors import ScalelearnError
from scalelearn.nn.hermite import HermiteBasis
from scalelearn.train import run as run_module

TOY = {"name": "toy", "basis": "hermite_a", "effective_size": 5, "kernel_size_k": 4.0}


def panel_images(figure) -> list[list[np.ndarray]]:
    """The image data of every panel, as rows of columns (the figure's own grid)."""
    axes = figure.axes
    columns = len({ax.get_subplotspec().colspan.start for ax in axes})
    images = [np.asarray(ax.images[0].get_array()) for ax in axes]
    return [images[r : r + columns] for r in range(0, len(images), columns)]


def reference_basis(scales, basis="hermite_a", effective_size=5) -> np.ndarray:
    """[F, S, K, K] straight from nn.hermite (float64)."""
    module = HermiteBasis(basis, effective_size, 4.0, 1.4, 4)
    return module(torch.tensor(scales, dtype=torch.float64)).dense().numpy()


def test_panels_are_the_basis_and_the_kernel_at_every_scale():
    scales = [1.5, 3.0, 6.0]
    weight = np.linspace(-1.0, 1.0, 25)
    functions = [0, 1, 6, 24]
    figure = method_figure(scales, TOY, weight=weight, functions=functions)
    rows = panel_images(figure)
    assert len(figure.axes) == (len(functions) + 1) * len(scales)
    assert len(rows) == len(functions) + 1 and all(len(row) == 3 for row in rows)
    basis = reference_basis(scales)
    assert basis.shape[:2] == (25, 3)
    for row, f in zip(rows, functions, strict=False):
        for s in range(3):
            np.testing.assert_allclose(row[s], basis[f, s], rtol=1e-12, atol=1e-15)
    kernel_row = rows[-1]
    for s in range(3):
        expected = sum(weight[f] * basis[f, s] for f in range(25))
        np.testing.assert_allclose(kernel_row[s], expected, rtol=1e-10, atol=1e-12)
    titles = [ax.get_title() for ax in figure.axes[:3]]
    assert [float(t.split("=")[1]) for t in titles] == pytest.approx(scales)


def test_default_rows_are_the_low_orders_and_the_random_kernel_is_seeded():
    first = method_figure([1.0, 2.0, 4.0], {"name": "toy"})
    second = method_figure([1.0, 2.0, 4.0], {"name": "toy"})
    # Total order i + j <= 2: (0,0), (0,1), (1,0), (0,2), (1,1), (2,0) -> 6 rows, plus the kernel.
    assert len(first.axes) == 7 * 3
    np.testing.assert_array_equal(panel_images(first)[-1][2], panel_images(second)[-1][2])
    assert np.abs(panel_images(first)[-1][0]).max() > 0


def test_sesn_basis_with_four_scales():
    scales = [1.38, 2.07, 3.09, 4.63]
    weight = np.random.default_rng(1).normal(size=49)
    figure = method_figure(scales, {"name": "sesn"}, weight=weight)
    rows = panel_images(figure)
    assert len(rows[0]) == 4
    basis = reference_basis(scales, "hermite_b", 7)
    expected = np.tensordot(weight, basis, axes=1)  # [S, K, K]
    for s in range(4):
        np.testing.assert_allclose(rows[-1][s], expected[s], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "scales, cfg, weight, message",
    [
        ([1.0, 2.0], TOY, np.ones(24), "F = 25"),
        ([1.0, -2.0], TOY, None, "positive"),
        ([1.0, 2.0], {"name": "cnn"}, None, "basis"),
    ],
)
def test_bad_input_is_a_clear_error(scales, cfg, weight, message):
    with pytest.raises(ScalelearnError, match=message):
        method_figure(scales, cfg, weight=weight)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of the toy model with learnable scales on 200 digits of a 40 px canvas."""
    images, labels, _ = mnist.load_pool("embedded")
    arrays, manifest = datasets.make_scale_distribution(
        images, labels, width_b=2.0, seed=0, canvas=40, split=(200, 100, 100)
    )
    data = tmp_path_factory.mktemp("data") / "b2.npz"
    datasets.save_dataset(data, arrays, manifest)
    config = {
        "experiment": "unit",
        "run_id": "method",
        "seed": 0,
        "grid": {},
        "dataset": str(data),
        "model": {
            "name": "toy",
            "scale_mode": "single_ratio_squared",
            "sigma_basis": 1.0,
            "isr": 2.0,
            "learn_sigma_basis": True,
        },
        "train": {
            "epochs": 1,
            "batch_size": 50,
            "lr_milestones": [1],
            "scale_lr": 0.05,
            "scale_lr_milestones": [1],
            "scale_warmup_epochs": 0,
            "eval_batch_size": 100,
            "accelerator": "cpu",
            "threads": 1,
        },
    }
    folder = tmp_path_factory.mktemp("run")
    summary = run_module.train_run(config, folder)
    return folder, summary


def test_figure_from_a_run_shows_its_learned_scales_and_first_layer_filter(tiny_run):
    folder, summary = tiny_run
    scales = summary["internal_scales"]
    assert scales != pytest.approx([1.0, 1.414, 2.0], abs=1e-4), "the scales were learned"
    figure = method_figure_from_run(folder, channel=3)
    titles = [ax.get_title() for ax in figure.axes[:3]]
    assert [float(t.split("=")[1]) for t in titles] == pytest.approx(scales, abs=0.005)
    state = torch.load(folder / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    weight = state["model.conv.weight"][3, 0].double().numpy()  # [F]
    basis = reference_basis(scales)
    expected = np.tensordot(weight, basis, axes=1)
    for s, image in enumerate(panel_images(figure)[-1]):
        np.testing.assert_allclose(image, expected[s], rtol=1e-5, atol=1e-7)


def test_figure_from_a_run_needs_a_trained_scale_equivariant_run(tiny_run, tmp_path):
    with pytest.raises(ScalelearnError, match="config.json is missing"):
        method_figure_from_run(tmp_path)
    folder, _ = tiny_run
    with pytest.raises(ScalelearnError, match="channel"):
        method_figure_from_run(folder, channel=16)
    cnn = tmp_path / "cnn"
    cnn.mkdir()
    (cnn / "config.json").write_text(json.dumps({"model": {"name": "cnn"}}))
    (cnn / "best.ckpt").write_bytes(b"")
    with pytest.raises(ScalelearnError, match="scale-equivariant"):
        method_figure_from_run(cnn)
