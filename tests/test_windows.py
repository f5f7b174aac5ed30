"""The toy model's lifting over each image's ink window (scalelearn.nn.windows): the background's
separable lifting, the windows' placement, whole training steps and evaluation against the dense
model's modules in float64."""

import pytest
import torch
import torch.nn.functional as F
from test_fast_conv import assert_training_steps_agree

from scalelearn.nn import cpu_fft, cpu_kernels, fast_conv, windows
from scalelearn.nn.hermite import HermiteBasis
from scalelearn.nn.models import build_model

SMALL_KERNELS = {"name": "toy", "sigma_basis": 0.5, "isr": 2.0}  # K 9 (half 4)


def digits_on_backgrounds(count: int, canvas: int, seed: int, levels=(0.0,)) -> torch.Tensor:
    """[count, 1, canvas, canvas] float64: smooth blobs ("ink", 3-20 px, largest first, some at
    the canvas's edge) on a constant background per image (cycling through `levels`)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.empty(count, 1, canvas, canvas, dtype=torch.float64)
    sizes = (20, 3, 14, 5, 9, 17, 4)  # not in order: the windowed head sorts them and back
    for i in range(count):
        size = sizes[i % len(sizes)]
        ink = torch.rand(1, 1, 3, 3, generator=generator, dtype=torch.float64)
        ink = torch.nn.functional.interpolate(ink, size=size, mode="bilinear")[0, 0] + 0.1
        top, left = torch.randint(0, canvas - size + 1, (2,), generator=generator).tolist()
        if i % 3 == 2:
            top = canvas - size  # ink at the edge: its window is clamped into the canvas
        images[i] = levels[i % len(levels)]
        images[i, 0, top : top + size, left : left + size] += ink
    return images


def placed_windows(back, local, beta, tops, lefts) -> torch.Tensor:
    """y = β·P with each window's lifting added at its origin, whole: [B, C, S, H, W]."""
    side = local.shape[-1]
    y = beta[:, None, None, None, None] * back
    for i in range(len(beta)):
        top, left = int(tops[i]), int(lefts[i])
        y[i, :, :, top : top + side, left : left + side] += local[i]
    return y


def fast_and_dense(scale_mode: str, learn_sigma_basis: bool, monkeypatch, seed: int):
    """The fast and the dense toy model (SMALL_KERNELS, float64) with the same state, their batch
    norms' weights and running means drawn (both signs); the fast one lifts by `fft`."""
    monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: "fft")
    cfg = {**SMALL_KERNELS, "scale_mode": scale_mode, "learn_sigma_basis": learn_sigma_basis}
    torch.manual_seed(0)
    fast = build_model({**cfg, "implementation": "fast"}).double()
    dense = build_model({**cfg, "implementation": "dense"}).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        fast.bn.weight.copy_(torch.randn(16, generator=generator, dtype=torch.float64))
        fast.bn.running_mean.copy_(torch.randn(16, generator=generator, dtype=torch.float64))
    dense.load_state_dict(fast.state_dict())
    return fast, dense


@pytest.mark.parametrize(
    "scales, size", [([0.5, 0.7, 1.0], 20), ([2.0, 3.46, 6.0], 30)], ids=["k9", "k49_over_image"]
)
def test_background_is_the_lifting_of_the_canvas_of_ones(scales, size):
    """`windows.background` (separable sums of the profiles) equals the direct lifting of a
    canvas of ones, and so do its gradients with respect to the weights and the scales."""
    generator = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 1, 25, generator=generator, dtype=torch.float64, requires_grad=True)
    scales = torch.tensor(scales, dtype=torch.float64, requires_grad=True)
    grad_out = torch.randn(1, 4, len(scales), size, size, generator=generator, dtype=torch.float64)
    ones = torch.ones(1, 1, size, size, dtype=torch.float64)
    results = []
    for lift in (
        lambda basis: windows.background(weight, basis, size, size),
        lambda basis: fast_conv._direct(ones, weight, basis),
    ):
        y = lift(HermiteBasis("hermite_a", 5)(scales))
        results.append((y, *torch.autograd.grad(y, [weight, scales], grad_out)))
    for actual, expected in zip(*results, strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_windows_hold_the_ink_and_all_the_kernels_reach():
    """Every window lies in the canvas, is square with a side of WINDOW_STEP multiples (or the
    canvas's), and holds the image's ink widened by the kernel's half size (what the kernels
    reach), whatever each image's background level; images sorted by window side."""
    canvas = 64
    x = digits_on_backgrounds(24, canvas, seed=3, levels=(-0.4, 0.0, 1.3))
    basis = build_model(SMALL_KERNELS).basis()
    half = basis.kernel_size // 2
    plan = windows.plan_windows(x, basis, lambda n: fast_conv._fft_runs(basis, n, n, "cpu_lifting"))
    assert plan is not None and len(plan.groups) >= 2
    assert sorted(plan.order.tolist()) == list(range(len(x)))
    sides = []
    for side, start, stop, tops, lefts in plan.groups:
        assert side % windows.WINDOW_STEP == 0 or side == canvas
        sides += [side] * (stop - start)
        for i, top, left in zip(range(start, stop), tops, lefts, strict=True):
            image = x[plan.order[i], 0]
            assert plan.beta[i] == image[0, 0]
            rows, cols = (image != image[0, 0]).nonzero().unbind(1)
            assert 0 <= top and top + side <= canvas and 0 <= left and left + side <= canvas
            assert top <= max(0, int(rows.min()) - half)
            assert top + side >= min(canvas, int(rows.max()) + 1 + half)
            assert left <= max(0, int(cols.min()) - half)
            assert left + side >= min(canvas, int(cols.max()) + 1 + half)
    assert sides == sorted(sides)


def test_windows_are_declined_where_they_would_cost_more():
    """No constant background (noise): every window is the canvas, and `plan_windows` declines; the
    same for ink that fills the canvas."""
    basis = build_model(SMALL_KERNELS).basis()

    def runs_of(side):
        return fast_conv._fft_runs(basis, side, side, "cpu_lifting")

    noise = torch.randn(8, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    assert windows.plan_windows(noise, basis, runs_of) is None
    assert windows.plan_windows(digits_on_backgrounds(8, 64, seed=1), basis, runs_of) is not None
    large = digits_on_backgrounds(8, 24, seed=1)  # 3-20 px of ink on 24 px
    assert windows.plan_windows(large, basis, runs_of) is None


@pytest.mark.parametrize("pass_bytes", [1 << 40, 1], ids=["one_pass", "image_by_image"])
@pytest.mark.parametrize(
    "scale_mode, learn_sigma_basis", [("fixed", False), ("single_ratio_squared", True)]
)
def test_windowed_training_step_equals_the_modules(
    scale_mode, learn_sigma_basis, pass_bytes, monkeypatch
):
    """A CPU training step of the fast toy model on images with constant backgrounds (levels
    that differ per image) lifts the windows (`windows.pooled_relu_moments`, several groups):
    the same logits, gradients (weights and scales) and BatchNorm running statistics as the
    dense model's modules, in float64, over two steps."""
    monkeypatch.setattr(cpu_fft, "PASS_BYTES", pass_bytes)
    fast, dense = fast_and_dense(scale_mode, learn_sigma_basis, monkeypatch, seed=6)
    x = digits_on_backgrounds(6, 64, seed=4, levels=(-0.42, -0.42, 0.7))
    plans = []
    original = windows.plan_windows
    monkeypatch.setattr(windows, "plan_windows", lambda *a: plans.append(original(*a)) or plans[-1])
    # Blobs on flat backgrounds leave some weight gradients near zero, the dense model's too.
    assert_training_steps_agree(fast, dense, x, grad_atol=None)
    assert len(plans) == 2 and all(plan is not None and len(plan.groups) >= 2 for plan in plans)
    if learn_sigma_basis:
        assert dense.basis.internal_scales.theta.grad.abs() > 1e-6


def test_windowed_training_step_gives_the_same_bits_for_every_thread_count(monkeypatch):
    """Logits and the lifting's gradients (weights, scales) with 1 and 2 threads. (Not the
    Linear head's weight gradient: MKL sums its batch in an order that follows the thread
    count, on the canvas's path too; a run config fixes its threads.)"""
    monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: "fft")
    x = digits_on_backgrounds(8, 64, seed=5, levels=(-0.42,)).float()
    results, calls = [], []
    original = windows.pooled_relu_moments
    monkeypatch.setattr(windows, "pooled_relu_moments", lambda *a: calls.append(1) or original(*a))
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            torch.manual_seed(0)
            model = build_model({**SMALL_KERNELS, "scale_mode": "single_ratio_squared"}).train()
            out = model(x)
            out.square().sum().backward()
            lifting = (model.conv.weight, model.basis.internal_scales.theta)
            results.append([out, *(p.grad for p in lifting)])
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_windowed_scale_max_pool_reads_the_background_outside_the_window():
    """`cpu_kernels.windowed_scale_max_pool` against y = β·P + each window placed on the canvas,
    whole, reduced by torch: the max over the scales, then every pool window's max and min.
    Backgrounds of both signs (β < 0 takes P's minimum over the scales), windows at the canvas's
    corners and inside, scales in two parts."""
    generator = torch.Generator().manual_seed(2)
    canvas, side, scales = 24, 10, 3
    back = torch.randn(4, scales, canvas, canvas, generator=generator, dtype=torch.float64)
    local = torch.randn(5, 4, scales, side, side, generator=generator, dtype=torch.float64)
    beta = torch.tensor([0.7, -0.4, 0.0, -1.3, 2.0], dtype=torch.float64)
    tops, lefts = torch.tensor([0, 14, 5, 14, 3]), torch.tensor([0, 14, 9, 0, 14])
    scale_max = placed_windows(back, local, beta, tops, lefts).amax(2)
    expected = (F.adaptive_max_pool2d(scale_max, 4), -F.adaptive_max_pool2d(-scale_max, 4))
    parts = [local[:, :, :1], local[:, :, 1:]]
    background = (back, back.amax(1), back.amin(1))
    actual = cpu_kernels.windowed_scale_max_pool(parts, background, beta, tops, lefts, 4, 4)
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-12)


def test_windowed_training_head_reads_and_writes_the_background():
    """`cpu_kernels.relu_max_pool_moments_into` and `relu_max_pool_moments_grad` with a window
    against the same kernels on y = β·P + each window placed on the canvas, whole: the same r,
    arg-max scales, pools and sums; the window's gradient is the canvas gradient's crop and P's
    is Σ β·∂y. Backgrounds of both signs, windows at the canvas's corners and inside, scales in
    two parts, batch-norm scales of both signs."""
    generator = torch.Generator().manual_seed(3)
    canvas, side, scales, channels = 24, 10, 3, 4

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    back, local = randn(channels, scales, canvas, canvas), randn(5, channels, scales, side, side)
    beta = torch.tensor([0.7, -0.4, 0.0, -1.3, 2.0], dtype=torch.float64)
    tops, lefts = torch.tensor([0, 14, 5, 14, 3]), torch.tensor([0, 14, 9, 0, 14])
    increasing = torch.tensor([True, False, True, False])
    shape = (len(beta), channels, scales, canvas, canvas)
    expected = cpu_kernels.relu_max_pool_moments_outputs(shape, back.dtype, 4, 4)
    y = placed_windows(back, local, beta, tops, lefts)
    cpu_kernels.relu_max_pool_moments_into(y, increasing, expected)
    actual = cpu_kernels.relu_max_pool_moments_outputs(shape, back.dtype, 4, 4)
    parts = [local[:, :, :1], local[:, :, 1:]]
    cpu_kernels.relu_max_pool_moments_into(parts, increasing, actual, (back, beta, tops, lefts))
    for a, e in zip(actual, expected, strict=True):
        assert torch.equal(a, e)

    pooled, mean, _, saved = cpu_kernels.relu_max_pool_moments_result(actual, back.dtype)
    grads = (mean, randn(*pooled.shape), randn(channels), randn(channels), 7 * canvas * canvas)
    grad_y = cpu_kernels.relu_max_pool_moments_grad(saved, *grads, back.new_empty(shape))
    grad_back = torch.zeros(back.shape, dtype=back.dtype)
    grad_local = torch.empty(local.shape, dtype=local.dtype)
    window = (grad_back, beta, tops, lefts)
    cpu_kernels.relu_max_pool_moments_grad(saved, *grads, grad_local, window=window)
    for i in range(len(beta)):
        top, left = int(tops[i]), int(lefts[i])
        assert torch.equal(grad_local[i], grad_y[i, :, :, top : top + side, left : left + side])
    expected_back = (beta[:, None, None, None, None] * grad_y).sum(0)
    torch.testing.assert_close(grad_back, expected_back, rtol=0, atol=1e-12)
    assert grad_back.abs().amax() > 0.1


@pytest.mark.parametrize("pass_bytes", [1 << 40, 1], ids=["one_pass", "image_by_image"])
@pytest.mark.parametrize(
    "scale_mode, learn_sigma_basis", [("fixed", False), ("single_ratio_squared", True)]
)
def test_windowed_evaluation_equals_the_modules(
    scale_mode, learn_sigma_basis, pass_bytes, monkeypatch
):
    """CPU evaluation of the fast toy model on images with constant backgrounds (levels of both
    signs, differing per image) lifts the windows (`windows.scale_extremes`, several groups):
    the dense model's logits in float64, with batch-norm weights of both signs (the head reads
    each pool window's maximum or minimum)."""
    monkeypatch.setattr(cpu_fft, "PASS_BYTES", pass_bytes)
    fast, dense = fast_and_dense(scale_mode, learn_sigma_basis, monkeypatch, seed=7)
    x = digits_on_backgrounds(7, 64, seed=8, levels=(-0.42, 0.7, 0.0))
    plans = []
    original = windows.scale_extremes
    monkeypatch.setattr(windows, "scale_extremes", lambda *a: plans.append(a[3]) or original(*a))
    with torch.inference_mode():
        actual, expected = fast.eval()(x), dense.eval()(x)
    assert len(plans) == 1 and len(plans[0].groups) >= 2
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_windowed_evaluation_gives_the_same_bits_for_every_thread_count(monkeypatch):
    """Evaluation logits over the windows with 1 and 2 threads."""
    monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: "fft")
    x = digits_on_backgrounds(8, 64, seed=5, levels=(-0.42, 0.3)).float()
    torch.manual_seed(0)
    model = build_model({**SMALL_KERNELS, "scale_mode": "single_ratio_squared"}).eval()
    calls, original = [], windows.scale_extremes
    monkeypatch.setattr(windows, "scale_extremes", lambda *a: calls.append(1) or original(*a))
    results, threads = [], torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            with torch.inference_mode():
                results.append(model(x))
    finally:
        torch.set_num_threads(threads)
    assert len(calls) == 2
    assert torch.equal(*results)
