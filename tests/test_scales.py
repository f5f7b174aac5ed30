"""Internal-scale parameterisations (SPEC §3): initial values, ISR, constraints, gradients."""

import numpy as np
import pytest
import torch

from scalelearn.nn.conv import z2h_dense
from scalelearn.nn.hermite import HermiteBasis
from scalelearn.nn.models import build_model
from scalelearn.nn.scales import (
    MIN_SCALE,
    SCALE_MODES,
    InternalScales,
    initial_scales,
    min_scale,
)

LEARNABLE = [mode for mode in SCALE_MODES if mode != "fixed"]


@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize(
    "sigma_basis,isr,num_scales", [(2.0, 3.0, 3), (1.5, 2.0, 4), (1.0, 6.0, 3)]
)
def test_initial_scales_are_sigma_basis_times_powers_of_r(mode, sigma_basis, isr, num_scales):
    scales = InternalScales(mode, num_scales, sigma_basis, isr)()
    r = isr ** (1 / (num_scales - 1))
    expected = [sigma_basis * r**i for i in range(num_scales)]
    np.testing.assert_allclose(scales.detach().numpy(), expected, rtol=1e-6)
    assert expected == pytest.approx(initial_scales(sigma_basis, isr, num_scales))


def test_learn_isr_mode_formula():
    module = InternalScales("single_ratio_squared", 4, 1.5, 2.0, learn_sigma_basis=True)
    with torch.no_grad():
        module.theta.fill_(0.7)
        module.sigma_basis.fill_(1.2)
    ratio = 1 + 0.7**2
    np.testing.assert_allclose(module().detach().numpy(), [1.2 * ratio**i for i in range(4)], 1e-6)
    assert module.isr() == pytest.approx(ratio**3, rel=1e-6)


@pytest.mark.parametrize("learn_sigma_basis", [False, True])
@pytest.mark.parametrize("mode", SCALE_MODES)
def test_learnable_parameters_per_mode(mode, learn_sigma_basis):
    """Exactly θ of the mode's shape (none for fixed) plus σ_b when learnable, except in direct
    mode, where σ_b is unused and therefore always frozen."""
    theta_shapes = {"direct": (4,), "ratio": (3,), "ratio_squared": (3,)}
    module = InternalScales(mode, 4, learn_sigma_basis=learn_sigma_basis)
    trainable = {n: tuple(p.shape) for n, p in module.named_parameters() if p.requires_grad}
    expected = {} if mode == "fixed" else {"theta": theta_shapes.get(mode, ())}
    if learn_sigma_basis and mode != "direct":
        expected["sigma_basis"] = ()
    assert trainable == expected


def test_projection_keeps_scales_positive_and_ordered():
    direct = InternalScales("direct", 3)
    ratio = InternalScales("ratio", 3, learn_sigma_basis=True)
    with torch.no_grad():
        direct.theta.copy_(torch.tensor([3.0, -1.0, 2.0]))
        ratio.theta.copy_(torch.tensor([-0.5, 0.2]))
        ratio.sigma_basis.fill_(-1.0)
    direct.constrain_()
    ratio.constrain_()
    assert direct().tolist() == pytest.approx([MIN_SCALE, 2.0, 3.0])
    scales = ratio()
    assert (scales > 0).all() and (scales.diff() >= 0).all()


@pytest.mark.parametrize("k", [4.0, 2.0])
@pytest.mark.parametrize("mode", ["direct", "ratio"])
def test_network_projection_stops_at_the_smallest_scale_of_its_basis(mode, k):
    """A network's scales are projected to min_scale(kernel_size_k) (0.4 px at the paper's k 4,
    1/k for a smaller k), where the basis is still complete and finite; the former bound 0.05
    let a learnable smallest scale reach a 1-px support and a NaN basis."""
    model = build_model(
        {"name": "toy", "scale_mode": mode, "isr": 100.0, "kernel_size_k": k, "sigma_basis": 1.0}
        | {"learn_sigma_basis": True}
    )
    scales = model.internal_scales
    with torch.no_grad():
        scales.sigma_basis.fill_(0.01)
        if mode == "direct":
            scales.theta[0] = 0.01
    scales.constrain_()
    assert float(scales().detach().min()) == pytest.approx(min_scale(k)) and min_scale(k) >= 1 / k
    assert MIN_SCALE == min_scale(4.0) == 0.4
    basis = model.basis.hermite(scales().detach())
    assert basis.supports[0] >= 3 and torch.isfinite(basis.profiles).all()
    assert (basis.profiles[0].pow(2).sum(-1) > 0.99).all(), "no function left out"


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="scale_mode"):
        InternalScales("bogus")
    with pytest.raises(ValueError, match="isr"):
        InternalScales("fixed", isr=0.5)
    with pytest.raises(ValueError, match=r"sigma_basis >= 0\.4 \(the smallest scale"):
        InternalScales("fixed", sigma_basis=0.3)
    with pytest.raises(ValueError, match=r"sigma_basis >= 0\.5"):
        build_model({"name": "toy", "sigma_basis": 0.45, "kernel_size_k": 2.0})


@pytest.mark.parametrize("mode", LEARNABLE)
def test_autograd_matches_finite_differences(mode):
    """∂loss/∂σ_b and ∂loss/∂θ through the basis and a Z2→H layer, in float64."""
    torch.manual_seed(0)
    # Values chosen away from the kinks of the piecewise-constant K and supports.
    scales = InternalScales(mode, 3, 1.7, 2.9, learn_sigma_basis=True).double()
    basis = HermiteBasis("hermite_a", 3, kernel_size_k=2.0).double()
    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    weight = torch.randn(2, 1, 9, dtype=torch.float64)
    names = [name for name, p in scales.named_parameters() if p.requires_grad]
    assert names, "a learnable mode must expose parameters"

    def loss(*values):
        current = torch.func.functional_call(scales, dict(zip(names, values, strict=True)), ())
        return z2h_dense(x, weight, basis(current)).pow(2).sum()

    inputs = tuple(scales.get_parameter(n).detach().clone().requires_grad_() for n in names)
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss(*inputs), inputs))
