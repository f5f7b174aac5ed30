"""scalelearn.nn.equivariance_error, SESN's measure (issue #11): small for every scale-equivariant
layer under every parameterisation of the internal scales and both bases, large for a plain CNN,
and it notices a layer whose scales are not the ones the measure assumes."""

import pytest
import torch
from torch import nn

from scalelearn.data.mnist import load_embedded
from scalelearn.data.rescale import rescale_about_centre
from scalelearn.nn import (
    SCALE_MODES,
    HermiteBasis,
    InternalScales,
    ScaleConvH2H,
    ScaleConvZ2H,
    SharedBasis,
    equivariance_error,
)

# Measured on 6 digits (56 px canvas, scales 1.5 … 3.4): 0.002–0.003 for every layer below, 0.18
# for a 7×7 convolution, 0.66 for a 15×15 one.
EQUIVARIANT = 0.01
NOT_EQUIVARIANT = 0.1


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits():
    """Six real digits in the middle of a 56 px canvas, room to be enlarged by 1.6."""
    images, _, _ = load_embedded()
    small = torch.from_numpy(images[:6]).float().div(255).unsqueeze(1)
    return rescale_about_centre(small, torch.ones(len(small)), 56)


def internal_scales(mode: str) -> InternalScales:
    """Scales from 1.5 with ISR 2.25, moved off their initial, evenly spaced values where the
    parameterisation allows (so that neighbouring ratios differ)."""
    scales = InternalScales(mode, 3, 1.5, 2.25, learn_sigma_basis=True)
    uneven = {
        "direct": [1.5, 2.0, 3.2],
        "ratio": [0.3, 0.6],
        "ratio_squared": [0.6, 0.8],
        "single_ratio": 0.4,
        "single_ratio_squared": 0.7,
    }
    if mode in uneven:
        with torch.no_grad():
            scales.theta.copy_(torch.tensor(uneven[mode]))
    return scales


@pytest.mark.parametrize("basis", ["hermite_a", "hermite_b"])
@pytest.mark.parametrize("mode", SCALE_MODES)
def test_every_layer_is_equivariant_under_every_parameterisation(digits, mode, basis):
    torch.manual_seed(0)
    shared = SharedBasis(internal_scales(mode), HermiteBasis(basis, 5))
    lifting = ScaleConvZ2H(1, 4, shared, bias=True)
    scale_layer = ScaleConvH2H(4, 4, shared)
    with torch.no_grad():
        lifted = torch.relu(lifting(digits))  # a smooth input on the scale axis
    network = nn.Sequential(lifting, nn.ReLU(), scale_layer)
    for module, x in ((lifting, digits), (scale_layer, lifted), (network, digits)):
        error = equivariance_error(module, x)
        assert error < EQUIVARIANT, (type(module).__name__, error)


def test_a_plain_cnn_is_not_equivariant(digits):
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 7, padding=3)
    cnn = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(4, 4, 7, padding=3))
    for module in (conv, cnn):
        assert equivariance_error(module, digits, ratio=1.5) > NOT_EQUIVARIANT


def test_the_measure_needs_the_ratio_of_the_internal_scales(digits):
    """A layer whose scales are 1.5 apart, measured as if they were 1.2 apart, or a layer whose
    scales are all equal (a single-scale filter), is far from equivariant."""
    torch.manual_seed(0)
    layer = ScaleConvZ2H(1, 4, SharedBasis(InternalScales("fixed", 3, 1.5, 2.25), HermiteBasis()))
    assert equivariance_error(layer, digits) < EQUIVARIANT
    assert equivariance_error(layer, digits, ratio=1.2) > 5 * EQUIVARIANT
    flat = ScaleConvZ2H(1, 4, SharedBasis(InternalScales("fixed", 3, 2.0, 1.0), HermiteBasis()))
    assert equivariance_error(flat, digits, ratio=1.5) > NOT_EQUIVARIANT


def test_bad_calls_and_mode_restored(digits):
    conv = nn.Conv2d(1, 2, 3)
    with pytest.raises(ValueError, match="no InternalScales; pass ratio="):
        equivariance_error(conv, digits)
    with pytest.raises(ValueError, match="ratio must be > 1"):
        equivariance_error(conv, digits, ratio=0.5)
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout(0.5))
    network.train()
    first = equivariance_error(network, digits, ratio=1.5)
    assert first == equivariance_error(network, digits, ratio=1.5), "eval mode: no dropout draws"
    assert all(m.training for m in network.modules())
