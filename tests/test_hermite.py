"""The Hermite basis against a direct, loop-by-loop evaluation of the formulas of SPEC §2."""

import math

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermeval

from scalelearn.nn.hermite import HermiteBasis, function_orders, kernel_size, supports
from scalelearn.nn.scales import InternalScales


def reference_basis(basis, eff, scales, k=4.0, mult=1.4, max_order=4):
    """SPEC §2 written out per scale and per function, in float64 numpy: [F, S, K, K]."""
    sigma_max = max(scales)
    size = max(3, 2 * math.ceil(k * sigma_max) + 1)
    x = np.arange(size) - size // 2
    out = np.zeros((eff * eff, len(scales), size, size))
    for f, (i, j, m) in enumerate(function_orders(basis, eff, max_order)):
        for s, sigma_s in enumerate(scales):
            n_s = 2 * ((size * sigma_s // sigma_max) // 2) + 1
            mask = np.abs(x) <= (n_s - 1) // 2
            sigma = sigma_s / mult**m
            psi_j = np.exp(-(x**2) / (2 * sigma**2)) / sigma * hermeval(x / sigma, [0] * j + [1])
            psi_i = np.exp(-(x**2) / (2 * sigma**2)) / sigma * hermeval(x / sigma, [0] * i + [1])
            out[f, s] = np.outer(psi_j * mask, psi_i * mask)
        smallest = int(np.argmin(scales))
        out[f] /= np.sqrt((out[f, smallest] ** 2).sum())
    return out


@pytest.mark.parametrize(
    "basis,eff,scales",
    [
        ("hermite_a", 5, [2.0, 2.0 * 3**0.5, 6.0]),
        ("hermite_a", 3, [1.3, 1.9, 2.2]),
        ("hermite_b", 7, [1.5, 1.5 * 2 ** (1 / 3), 1.5 * 2 ** (2 / 3), 3.0]),
        ("hermite_b", 5, [1.1, 2.3]),
    ],
)
def test_basis_matches_direct_evaluation(basis, eff, scales):
    built = HermiteBasis(basis, eff)(torch.tensor(scales, dtype=torch.float64))
    expected = reference_basis(basis, eff, scales)
    assert built.dense().shape == expected.shape
    np.testing.assert_allclose(built.dense().numpy(), expected, rtol=1e-10, atol=1e-12)


def test_normalised_at_smallest_scale_even_when_unsorted():
    scales = torch.tensor([3.0, 1.5, 2.2], dtype=torch.float64)
    dense = HermiteBasis("hermite_a", 5)(scales).dense()
    norms = dense.pow(2).sum((-1, -2)).sqrt()  # [F, S]
    np.testing.assert_allclose(norms[:, 1].numpy(), 1.0, rtol=1e-12)
    # The 1/σ factor per axis makes the 2-D norm scale as 1/σ: half at twice the smallest scale.
    np.testing.assert_allclose(norms[:, 0].numpy(), 0.5, rtol=1e-3)


def test_supports_are_zero_outside():
    scales = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    built = HermiteBasis("hermite_a", 5)(scales)
    size = built.kernel_size
    assert size == 33 and built.supports == [9, 17, 33] == supports(scales, size)
    dense = built.dense()
    for s, n in enumerate(built.supports):
        inside = torch.zeros(size, size, dtype=torch.bool)
        lo, hi = (size - n) // 2, (size + n) // 2
        inside[lo:hi, lo:hi] = True
        assert torch.count_nonzero(dense[:, s][:, ~inside]) == 0
        assert dense[:, s][:, inside].abs().amax(-1).min() > 0


def test_function_counts_of_variant_b():
    orders = function_orders("hermite_b", 7)
    assert len(orders) == 49
    assert [sum(1 for *_, m in orders if m == mm) for mm in range(4)] == [15, 15, 15, 4]
    assert orders[:6] == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0), (1, 0, 0)]
    assert [m for *_, m in function_orders("hermite_b", 5)].count(1) == 10


def test_kernel_size_rule_is_float64_and_ignores_float32_noise():
    # σ_max = 6 reached through learned float32 parameters must give K = 49, not 51.
    learned = InternalScales("single_ratio_squared", 3, 2.0, 3.0)()
    assert kernel_size(learned, 4.0) == 49
    assert kernel_size(torch.tensor([2.0, 15.12]), 4.0) == 2 * math.ceil(60.48) + 1 == 123
    assert kernel_size(torch.tensor([0.1, 0.2]), 4.0) == 3
    assert kernel_size(torch.tensor([1.0, 6.01]), 4.0) == 51


def test_basis_is_differentiable_in_the_scales():
    scales = torch.tensor([1.7, 2.6, 4.1], dtype=torch.float64, requires_grad=True)
    basis = HermiteBasis("hermite_b", 5)
    weights = torch.randn(25, 3, 35, 35, dtype=torch.float64)
    assert basis(scales).kernel_size == 35

    def loss(s):
        return (basis(s).dense() * weights).sum()

    assert torch.autograd.gradcheck(loss, (scales,), eps=1e-6, atol=1e-6)
