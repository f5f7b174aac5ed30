"""SPEC §3 held away from the initial values: every parameterisation's formula at random θ and
σ_b, each mode's initial θ, θ = 0 as a stationary point of the squared modes (and not of the
others); the exact trainable parameters per mode are in test_scales.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scalelearn.nn.scales import SCALE_MODES, InternalScales

NUM_SCALES = 4
SIGMA_B, ISR = 1.5, 2.0
RATIO = ISR ** (1 / (NUM_SCALES - 1))


def leaky_relu(x: float) -> float:
    return x if x >= 0 else 0.01 * x  # torch's default negative slope


def expected_scales(mode: str, sigma_b: float, theta: np.ndarray) -> np.ndarray:
    """The σ_i column of SPEC §3's table, written out in float64."""
    i = np.arange(NUM_SCALES)
    if mode == "fixed":
        return sigma_b * RATIO**i
    if mode == "direct":
        return theta
    if mode == "ratio":
        return sigma_b * np.concatenate([[1.0], np.cumprod(1 + theta)])
    if mode == "ratio_squared":
        return sigma_b * np.concatenate([[1.0], np.cumprod(1 + theta**2)])
    if mode == "single_ratio":
        return sigma_b * (1 + leaky_relu(float(theta))) ** i
    if mode == "single_ratio_squared":
        return sigma_b * (1 + float(theta) ** 2) ** i
    raise AssertionError(mode)


THETA_SHAPES = {
    "direct": (NUM_SCALES,),
    "ratio": (NUM_SCALES - 1,),
    "ratio_squared": (NUM_SCALES - 1,),
    "single_ratio": (),
    "single_ratio_squared": (),
}

# The init column of SPEC §3 (r = ISR^{1/(N−1)}); direct starts at the scales themselves.
INITIAL_THETA = {
    "direct": [SIGMA_B * RATIO**i for i in range(NUM_SCALES)],
    "ratio": [RATIO - 1] * (NUM_SCALES - 1),
    "ratio_squared": [np.sqrt(RATIO - 1)] * (NUM_SCALES - 1),
    "single_ratio": RATIO - 1,
    "single_ratio_squared": np.sqrt(RATIO - 1),
}


@pytest.mark.parametrize("mode", sorted(INITIAL_THETA))
def test_initial_theta_is_the_table_init(mode):
    module = InternalScales(mode, NUM_SCALES, SIGMA_B, ISR)
    np.testing.assert_allclose(module.theta.detach().numpy(), INITIAL_THETA[mode], rtol=1e-6)


@pytest.mark.parametrize("mode", SCALE_MODES)
@pytest.mark.parametrize("draw", range(3))
def test_formula_at_random_parameters(mode, draw):
    """Set θ and σ_b to random values (some θ negative) and compare with the table."""
    rng = np.random.default_rng([draw, SCALE_MODES.index(mode)])
    module = InternalScales(mode, NUM_SCALES, SIGMA_B, ISR, learn_sigma_basis=True)
    sigma_b = float(rng.uniform(0.5, 3.0))
    theta = None
    with torch.no_grad():
        module.sigma_basis.fill_(sigma_b)
        if mode == "direct":
            theta = np.sort(rng.uniform(0.5, 6.0, NUM_SCALES))
        elif mode != "fixed":
            # ratio: 1 + θ must stay positive; the others take any real θ.
            low = -0.4 if mode in ("ratio", "single_ratio") else -1.5
            theta = rng.uniform(low, 1.5, THETA_SHAPES[mode])
            if mode == "single_ratio" and draw == 0:
                theta = np.array(-0.6)  # the leaky side of leaky_relu
        if theta is not None:
            module.theta.copy_(torch.as_tensor(theta, dtype=module.theta.dtype))
    scales = module().detach().double().numpy()
    np.testing.assert_allclose(scales, expected_scales(mode, sigma_b, theta), rtol=2e-6)
    assert module.isr() == pytest.approx(scales.max() / scales.min(), rel=1e-5)


@pytest.mark.parametrize("mode", ["ratio_squared", "single_ratio_squared"])
def test_theta_zero_is_stationary_for_the_squared_modes(mode):
    """Init ISR 1 gives θ = 0, where ∂σ/∂θ = 0: the gradient vanishes and Adam never moves θ."""
    module = InternalScales(mode, NUM_SCALES, SIGMA_B, isr=1.0, learn_sigma_basis=True)
    assert torch.count_nonzero(module.theta) == 0
    weights = torch.tensor([0.3, -1.2, 2.0, 0.7])
    optimiser = torch.optim.Adam(module.parameters(), lr=0.1)
    for _ in range(3):
        optimiser.zero_grad()
        loss = (weights * module()).sum() ** 2
        loss.backward()
        assert torch.count_nonzero(module.theta.grad) == 0
        assert module.sigma_basis.grad != 0, "σ_b still learns"
        optimiser.step()
    assert torch.count_nonzero(module.theta) == 0
    assert module.isr() == 1.0


@pytest.mark.parametrize("mode", ["ratio", "single_ratio"])
def test_theta_zero_is_not_stationary_for_the_plain_modes(mode):
    module = InternalScales(mode, NUM_SCALES, SIGMA_B, isr=1.0)
    assert torch.count_nonzero(module.theta) == 0
    module().sum().backward()
    assert torch.count_nonzero(module.theta.grad) == module.theta.numel()
