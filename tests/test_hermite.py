"""The Hermite basis against a direct, loop-by-loop evaluation of the formulas of SPEC §2."""

import math
import warnings

import numpy as np
import pytest
import torch
from numpy.polynomial.hermite_e import hermeval

from scalelearn.nn.hermite import HermiteBasis, function_orders, kernel_size, supports
from scalelearn.nn.scales import MIN_SCALE, InternalScales, initial_scales, min_scale


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


# --- the smallest allowed scale: every function defined, never NaN -----------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [4.0, 2.0, 1.0])
@pytest.mark.parametrize("basis,eff,num_scales", [("hermite_a", 5, 3), ("hermite_b", 7, 4)])
def test_smallest_allowed_scale_gives_a_full_finite_basis(basis, eff, num_scales, k, dtype):
    """At σ_b = min_scale(k), the projection's bound, the smallest scale's support is >= 3 px for
    every ISR, so every function has norm 1 there: none is 0, none NaN (the former bound 0.05
    gave a 1-px support at wide ISRs, where the odd orders vanish, and a NaN basis). The
    gradient in the scales is finite too, in float32 as well (hermite_b's is not up to 0.33)."""
    torch.manual_seed(0)
    sigma_b = min_scale(k)
    hermite = HermiteBasis(basis, eff, kernel_size_k=k)
    for isr in np.geomspace(1.0, 100.0, 25):
        scales = torch.tensor(initial_scales(sigma_b, isr, num_scales), dtype=dtype)
        scales.requires_grad_(True)
        built = hermite(scales)
        assert min(built.supports) >= 3, (isr, built.supports)
        assert torch.isfinite(built.profiles).all(), isr
        norms = built.profiles[0].detach().double().pow(2).sum(-1).sqrt()
        np.testing.assert_allclose(norms.numpy(), 1.0, rtol=1e-5)
        weights = torch.randn(built.profiles.shape, dtype=dtype)
        (gradient,) = torch.autograd.grad((built.profiles * weights).sum(), scales)
        assert torch.isfinite(gradient).all(), isr


def test_min_scale_is_where_the_support_can_first_shrink_to_one_pixel():
    """Just below 1/k some ISR gives the smallest scale a 1-px support."""
    assert min_scale(4.0) == MIN_SCALE >= 0.25 and min_scale(2.0) == 0.5 and min_scale(1.0) == 1.0
    for k in (4.0, 2.0, 1.0):
        below = torch.tensor(initial_scales(0.98 / k, 100.0, 3), dtype=torch.float64)
        assert supports(below, kernel_size(below, k))[0] == 1


def test_function_that_vanishes_at_the_smallest_scale_is_left_out_not_nan():
    """Below the bound (support 1 px at σ 0.1): the odd orders are 0 at the smallest scale, so
    they have no normalisation; they are 0 at every scale, the even orders are normalised as
    usual, and the gradient in the scales stays finite."""
    scales = torch.tensor([0.1, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    hermite = HermiteBasis("hermite_a", 5)
    built = hermite(scales)
    assert built.supports[0] == 1
    assert torch.isfinite(built.profiles).all()
    odd = hermite.profile_order % 2 == 1
    assert odd.any() and (built.profiles[:, odd] == 0).all()
    norms = built.profiles[0, ~odd].pow(2).sum(-1).sqrt()
    np.testing.assert_allclose(norms.detach().numpy(), 1.0, rtol=1e-12)
    assert built.profiles[1:, ~odd].abs().amax() > 0
    weights = torch.randn(built.dense().shape, dtype=torch.float64)
    (gradient,) = torch.autograd.grad((built.dense() * weights).sum(), scales)
    assert torch.isfinite(gradient).all()


def _training_step(model, optimizer, x, labels):
    """One step as ScaleLearner takes it: forward, backward, Adam, projection of the scales."""
    optimizer.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), labels).backward()
    optimizer.step()
    model.internal_scales.constrain_()


def _toy_and_batch(scale_mode: str, device: str = "cpu"):
    from scalelearn.nn.models import build_model

    torch.manual_seed(0)
    config = {"name": "toy", "scale_mode": scale_mode, "sigma_basis": 1.0, "isr": 2.0}
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])
    x = torch.randn(4, 1, 32, 32, device=device)
    return model, optimizer, x, torch.randint(0, 10, (4,), device=device)


def test_fixed_scales_keep_their_basis_across_training_steps():
    """E1's scales are fixed: the basis is computed once, not after every step (each computation
    reads the scales from the GPU, which waits for it)."""
    model, optimizer, x, labels = _toy_and_batch("fixed")
    first = model.basis()
    for _ in range(2):
        _training_step(model, optimizer, x, labels)
    assert model.basis() is first
    # Learned scales change at every step: their basis is computed again.
    model, optimizer, x, labels = _toy_and_batch("single_ratio_squared")
    first = model.basis()
    _training_step(model, optimizer, x, labels)
    assert model.basis() is not first


def _synchronisations(work, *args) -> int:
    """How many times `work(*args)` waits for the GPU (torch.cuda's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            work(*args)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_steps_wait_for_the_gpu_once_per_basis_and_never_with_fixed_scales():
    for scale_mode, waits in (("single_ratio_squared", 1), ("fixed", 0)):
        model, optimizer, x, labels = _toy_and_batch(scale_mode, "cuda")
        for _ in range(2):  # warm-up: lazy initialisation, compilation
            _training_step(model, optimizer, x, labels)
        assert _synchronisations(_training_step, model, optimizer, x, labels) == waits
