"""Scale-equivariant layers: the dense reference against per-scale convolutions, and the
equivariance that motivates them (SPEC §1, §4)."""

import pytest
import torch
import torch.nn.functional as F

from scalelearn.data.mnist import load_embedded
from scalelearn.data.rescale import rescale_about_centre
from scalelearn.nn import (
    HermiteBasis,
    InternalScales,
    ScaleConvH2H,
    ScaleConvZ2H,
    SharedBasis,
    cpu_kernels,
    fast_conv,
)
from scalelearn.nn.conv import h2h_dense, scale_max_projection, z2h_dense


def per_scale_kernels(weight, basis):
    """κ_s = Σ_f W[:, :, f] · basis[f, s], one scale at a time: list of [Cout, Cin, K, K]."""
    dense = basis.dense()
    return [torch.einsum("oif,fuv->oiuv", weight, dense[:, s]) for s in range(dense.shape[1])]


def test_dense_layers_equal_one_conv_per_scale():
    torch.manual_seed(0)
    basis = HermiteBasis("hermite_b", 5)(torch.tensor([1.0, 1.6, 2.1], dtype=torch.float64))
    pad = basis.kernel_size // 2
    x = torch.randn(2, 3, 15, 17, dtype=torch.float64)
    weight = torch.randn(4, 3, 25, dtype=torch.float64)
    lifted = z2h_dense(x, weight, basis)
    assert lifted.shape == (2, 4, 3, 15, 17)
    for s, kernel in enumerate(per_scale_kernels(weight, basis)):
        torch.testing.assert_close(lifted[:, :, s], F.conv2d(x, kernel, padding=pad))

    h = torch.randn(2, 3, 3, 15, 17, dtype=torch.float64)
    out = h2h_dense(h, weight, basis)
    assert out.shape == (2, 4, 3, 15, 17)
    for s, kernel in enumerate(per_scale_kernels(weight, basis)):
        torch.testing.assert_close(out[:, :, s], F.conv2d(h[:, :, s], kernel, padding=pad))


@pytest.fixture(scope="module")
def digits():
    images, _, _ = load_embedded()
    return torch.from_numpy(images[:16]).float().div(255).unsqueeze(1)  # [16, 1, 28, 28]


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_z2h_moves_a_rescaled_digit_to_the_neighbouring_scale(digits):
    """Enlarging the input by r = σ_{s+1}/σ_s moves the response from scale s to s + 1.

    With internal scales 1.5 · 1.5^i, L_r f ⋆ ψ_{rσ} = L_r (f ⋆ ψ_σ) holds exactly in the
    continuum; pixel sampling, bicubic resampling and the finite supports leave a few percent.
    """
    torch.manual_seed(0)
    r, canvas = 1.5, 72
    basis = SharedBasis(InternalScales("fixed", 3, 1.5, r * r), HermiteBasis("hermite_a", 5))
    layer = ScaleConvZ2H(1, 6, basis, implementation="dense")
    ones = torch.ones(len(digits))
    with torch.no_grad():
        y = layer(rescale_about_centre(digits, ones, canvas))  # [B, C, 3, H, W]
        y_big = layer(rescale_about_centre(digits, r * ones, canvas))

    def enlarge(t):  # [B, C, H, W] rescaled about the centre by r
        flat = t.reshape(-1, 1, canvas, canvas)
        return rescale_about_centre(flat, r * torch.ones(len(flat)), canvas).view_as(t)

    for s in range(2):  # the overlapping scales
        matched = relative_error(y_big[:, :, s + 1], enlarge(y[:, :, s]))
        unmatched = relative_error(y_big[:, :, s], enlarge(y[:, :, s]))
        assert matched < 0.08, (s, matched)
        assert unmatched > 3 * matched, (s, matched, unmatched)


def test_max_projection_is_nearly_invariant(digits):
    """Globally max-pooled, max-projected features barely change when the digit is rescaled
    within the range the internal scales cover; a single-scale filter's features change more."""
    torch.manual_seed(1)
    r, canvas = 1.5, 96
    multi = SharedBasis(InternalScales("fixed", 3, 1.5, r * r), HermiteBasis("hermite_a", 5))
    # The middle scale alone, with the same weights.
    single = SharedBasis(InternalScales("fixed", 1, 1.5 * r), HermiteBasis("hermite_a", 5))
    multi_layer = ScaleConvZ2H(1, 16, multi, implementation="dense")
    single_layer = ScaleConvZ2H(1, 16, single, implementation="dense")
    with torch.no_grad():
        single_layer.weight.copy_(multi_layer.weight)
    ones = torch.ones(len(digits))
    small, big = (rescale_about_centre(digits, f * ones, canvas) for f in (1.0, r))

    def features(x, layer):
        with torch.no_grad():
            return F.relu(scale_max_projection(layer(x))).amax((-1, -2))  # [B, C]

    invariant = relative_error(features(big, multi_layer), features(small, multi_layer))
    plain = relative_error(features(big, single_layer), features(small, single_layer))
    assert invariant < 0.1, invariant
    # Measured: 0.078 against 0.156 (16 digits, seed 1).
    assert plain > 1.7 * invariant, (invariant, plain)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_scale_max_is_max_with_its_gradient_on_ties_nans_and_views(dtype, threads):
    """The CPU's fused scale max (what training calls) gives max(dim=2)'s values and gradients
    bit for bit: the first of equal maxima takes the gradient, a NaN wins, and the input may be
    a strided view (the `rows` and `fft` methods return one)."""
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(3, 4, 2, 5, 6, generator=generator, dtype=dtype)  # [S, C, B, H, W]
    base[1, :, 0] = base[2, :, 0]  # ties between scales 1 and 2
    base[:, 3, 1, 2] = 0.5  # every scale equal
    base[0, 1, 0, 0, 0] = float("nan")
    base[2, 2, 1, 3, 3] = float("nan")
    grad = torch.randn(2, 4, 5, 6, generator=generator, dtype=dtype)
    reference = base.permute(2, 1, 0, 3, 4).contiguous().requires_grad_(True)
    expected = reference.max(dim=2).values
    expected.backward(grad)
    leaf = base.clone().requires_grad_(True)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        values = scale_max_projection(leaf.permute(2, 1, 0, 3, 4))  # [B, C, S, H, W] view
        values.backward(grad)
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(values, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(leaf.grad.permute(2, 1, 0, 3, 4), reference.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_scale_max_pool_is_max_then_window_max_and_min(dtype):
    """cpu_kernels.scale_max_pool: the max and the min of every window of max(dim=2), as
    adaptive pooling gives them, on a strided view, with ties and NaNs (a NaN wins its window)."""
    generator = torch.Generator().manual_seed(1)
    base = torch.randn(3, 4, 2, 8, 12, generator=generator, dtype=dtype)  # [S, C, B, H, W]
    base[1, :, 0] = base[2, :, 0]
    base[0, 1, 0, 0, 0] = float("nan")  # window (0, 0) of image 0, channel 1
    base[2, 2, 1, 7, 11] = float("nan")  # the last window of image 1, channel 2
    x = base.permute(2, 1, 0, 3, 4)  # [B, C, S, H, W] view
    maxima, minima = cpu_kernels.scale_max_pool(x, 4, 3)
    scale_max = x.max(dim=2).values
    torch.testing.assert_close(
        maxima, F.adaptive_max_pool2d(scale_max, (4, 3)), rtol=0, atol=0, equal_nan=True
    )
    torch.testing.assert_close(
        minima, -F.adaptive_max_pool2d(-scale_max, (4, 3)), rtol=0, atol=0, equal_nan=True
    )
    assert maxima[0, 1, 0, 0].isnan() and minima[1, 2, 3, 2].isnan()
    assert maxima.isnan().sum() == 2


@pytest.mark.parametrize("method", ["chosen", "fft"])
def test_toy_model_evaluation_pools_first_with_the_same_logits(method, monkeypatch):
    """Evaluation on the CPU pools the scale max before ReLU and batch norm (max for channels
    with a positive BN scale, min for a negative one), inside the lifting layer (where `fft`
    lifts, pass by pass: here one image and one channel per pass): the same logits as
    pool(bn(relu(max)))."""
    from scalelearn.nn import cpu_fft, fast_conv
    from scalelearn.nn.models import build_model

    if method == "fft":
        monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: "fft")
        monkeypatch.setattr(cpu_fft, "PASS_BYTES", 1)
        passes, lift_pass = [], cpu_fft._lift_pass
        monkeypatch.setattr(cpu_fft, "_lift_pass", lambda *a: passes.append(1) or lift_pass(*a))

    torch.manual_seed(0)
    model = build_model({"name": "toy", "scale_mode": "fixed", "sigma_basis": 1.0, "isr": 2.0})
    with torch.no_grad():
        model.bn.weight.copy_(torch.randn(16))  # both signs
        model.bn.bias.copy_(torch.randn(16))
        model.bn.running_mean.copy_(torch.randn(16))
        model.bn.running_var.copy_(torch.rand(16) + 0.5)
    assert (model.bn.weight < 0).any() and (model.bn.weight > 0).any()
    model.eval()
    x = torch.randn(3, 1, 48, 48)
    with torch.inference_mode():
        z = model.conv(x).contiguous()
        expected = model.fc(model.pool(model.bn(F.relu(z.max(dim=2).values))).flatten(1))
        assert model._pools_first(x)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    if method == "fft":
        # The reference's lifting (one pass per image), then ours, also split by channel.
        assert len(passes) == 3 + 3 * 16
    with pytest.raises(RuntimeError, match="no gradient"):
        model.conv(x, extremes=(4, 4))


@pytest.mark.parametrize("implementation", ["dense", "fast"])
@pytest.mark.parametrize("bias", [False, True])
def test_lifting_extremes_are_the_window_extremes_of_its_scale_max(implementation, bias):
    """ScaleConvZ2H(x, extremes=(R, Q)): the max and min over R×Q windows of the output's scale
    max, bias included, as scale_max_pool of the output gives them."""
    torch.manual_seed(2)
    basis = SharedBasis(InternalScales("fixed", 3, 1.0, 2.0), HermiteBasis("hermite_a", 5))
    layer = ScaleConvZ2H(1, 4, basis, bias=bias, implementation=implementation)
    if bias:
        torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 1, 24, 24)
    with torch.no_grad():
        expected = cpu_kernels.scale_max_pool(layer(x), 4, 3)
        for got, wanted in zip(layer(x, extremes=(4, 3)), expected, strict=True):
            torch.testing.assert_close(got, wanted, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["fft", "direct"])
@pytest.mark.parametrize("layer_type", [ScaleConvZ2H, ScaleConvH2H])
def test_relu_pool_is_max_pool_of_relu_of_the_output(layer_type, method, monkeypatch):
    """layer(x, relu_pool=True) (SESN's block; CPU, fast, with a bias; after the lifting of one
    channel by `fft`, pass by pass with it): max_pool3d(relu(layer(x)), (1, 2, 2)) with its
    gradients, float64, odd sides floored; elsewhere a clear error."""
    monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: method)
    torch.manual_seed(4)
    basis = SharedBasis(
        InternalScales("single_ratio_squared", 3, 1.0, 2.0), HermiteBasis("hermite_a", 5)
    )
    lifting = layer_type is ScaleConvZ2H
    layer = layer_type(1 if lifting else 2, 4, basis, bias=True).double()
    torch.nn.init.normal_(layer.bias)
    shape = (3, 1, 20, 23) if lifting else (3, 2, 3, 20, 23)
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(3, 4, 3, 10, 11, dtype=torch.float64)
    results = []
    for fused in (True, False):
        layer.zero_grad()
        x.grad = None
        out = layer(x, relu_pool=True) if fused else F.max_pool3d(F.relu(layer(x)), (1, 2, 2))
        out.backward(grad)
        results.append((out, x.grad, *(p.grad for p in layer.parameters())))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="relu_pool=True needs"):
        dense = layer_type(shape[1], 4, basis, bias=True, implementation="dense")
        dense.double()(x, relu_pool=True)


def test_cpu_kernels_read_the_lifting_rows_in_place():
    """The lifting's output is a crop of wider rows (its inverse transform's L_W): the numba
    kernels read it in place, and only its W columns (the rest of each row holds other values)."""
    generator = torch.Generator().manual_seed(3)
    buffer = torch.randn(2, 3, 4, 8, 13, generator=generator)  # [B, C, S, H, R]
    buffer[..., 8:] = 1e30  # beyond W = 8: must never be read
    x = buffer[..., :8]
    assert cpu_kernels._padded_rows(x).data_ptr() == buffer.data_ptr()
    dense = x.contiguous()
    expected = cpu_kernels.scale_max(dense)
    torch.testing.assert_close(cpu_kernels.scale_max(x), expected, rtol=0, atol=0)
    for got, expected in zip(
        cpu_kernels.scale_max_pool(x, 2, 4), cpu_kernels.scale_max_pool(dense, 2, 4), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    increasing = torch.tensor([True, False, True])
    for got, expected in zip(
        cpu_kernels.pooled_relu_moments(x, increasing, 2, 4),
        cpu_kernels.pooled_relu_moments(dense, increasing, 2, 4),
        strict=True,
    ):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # Other views are made contiguous first: a transposed one, and rows 13 apart whose storage
    # ends with the last row's 8 values (no room for the padded buffer).
    transposed = buffer.transpose(-1, -2)
    torch.testing.assert_close(cpu_kernels._padded_rows(transposed), transposed.contiguous())
    short = torch.randn(4 * 13 - 5, generator=generator).as_strided((4, 8), (13, 1))
    torch.testing.assert_close(cpu_kernels._padded_rows(short), short.contiguous())


def test_pooled_relu_moments_of_a_padded_buffer_equal_its_crop():
    """pooled_relu_moments(buffer, ..., width=W) (rows' inverse transform handed over whole)
    gives the outputs and the gradient of pooled_relu_moments(buffer[..., :W]): zero beyond W,
    and the batch statistics counted over W columns only."""
    generator = torch.Generator().manual_seed(4)
    buffer = torch.randn(2, 3, 4, 8, 13, generator=generator, dtype=torch.float64)
    increasing = torch.tensor([True, False, True])
    weights = [torch.randn(2, 3, 2, 4, dtype=torch.float64), torch.randn(3), torch.randn(3)]
    grads, outputs = [], []
    for width in (8, None):
        leaf = buffer.clone().requires_grad_()
        x = leaf if width else leaf[..., :8]
        out = cpu_kernels.pooled_relu_moments(x, increasing, 2, 4, width=width)
        sum(w.to(o.dtype).mul(o).sum() for w, o in zip(weights, out, strict=True)).backward()
        outputs.append(out)
        grads.append(leaf.grad)
    for got, expected in zip(*outputs, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0][..., :8].abs().sum() > 0 and not grads[0][..., 8:].any()


def _library_head(y, weight, bias, rows, cols):
    """pool(bn(relu(max over scales))) in training mode, as the toy model's modules compute it;
    -> (output, running mean, running variance)."""
    running_mean, running_var = torch.zeros_like(weight), torch.ones_like(weight)
    r = F.relu(y.max(dim=2).values)
    out = F.batch_norm(r, running_mean, running_var, weight, bias, True, 0.1, 1e-5)
    return F.adaptive_max_pool2d(out, (rows, cols)), running_mean, running_var


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_relu_moments_give_training_batch_norm_and_pool(dtype, threads):
    """cpu_kernels.pooled_relu_moments: pooled max (min for a negative BN weight), mean and biased
    variance of relu(scale max); batch norm applied to the pooled values equals the library's
    pool(bn(relu(max))) in training mode, values and gradients, whole windows at zero and ties
    included; the same bits for every thread count."""
    generator = torch.Generator().manual_seed(4)
    y = torch.randn(3, 4, 3, 8, 6, generator=generator, dtype=dtype)
    y[0, 1, :, :4, :3] = -1.0  # a window where ReLU leaves only zeros
    y[1, 2, 1] = y[1, 2, 2]  # ties between scales
    # Ties inside window (0, 0) (rows 0-3, columns 0-1): the first in row-major order, (0, 1)
    # before (1, 0), takes the gradient; a max for channel 0, a min for channel 1.
    y[2, 0, :, :4, :2], y[2, 1, :, :4, :2] = -1.0, 3.0
    y[2, 0, :, 0, 1] = y[2, 0, :, 1, 0] = 5.0
    y[2, 1, :, 0, 1] = y[2, 1, :, 1, 0] = 1.0
    # ... and in one column of window (0, 1) (columns 2-3): (0, 2) before (2, 2).
    y[2, 0, :, :4, 2:4], y[2, 1, :, :4, 2:4] = -1.0, 3.0
    y[2, 0, :, 0, 2] = y[2, 0, :, 2, 2] = 4.0
    y[2, 1, :, 0, 2] = y[2, 1, :, 2, 2] = 2.0
    weight = torch.tensor([0.7, -1.3, 1.1, -0.4], dtype=dtype)
    bias = torch.randn(4, generator=generator, dtype=dtype)
    grad = torch.randn(3, 4, 2, 3, generator=generator, dtype=dtype)
    leaf = y.clone().requires_grad_(True)
    expected, running_mean, running_var = _library_head(leaf, weight, bias, 2, 3)
    expected.backward(grad)

    previous = torch.get_num_threads()
    results = []
    for count in (threads, 3):
        torch.set_num_threads(count)
        try:
            x = y.clone().requires_grad_(True)
            pooled, mean, variance = cpu_kernels.pooled_relu_moments(x, weight >= 0, 2, 3)
            scale = weight * torch.rsqrt(variance + 1e-5)
            out = (pooled - mean[:, None, None]) * scale[:, None, None] + bias[:, None, None]
            out.backward(grad)
        finally:
            torch.set_num_threads(previous)
        results.append((out, mean, variance, x.grad))
    out, mean, variance, x_grad = results[0]
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(out, expected, **tolerance)
    torch.testing.assert_close(x_grad, leaf.grad, **tolerance)
    count = 3 * 8 * 6
    torch.testing.assert_close(0.1 * mean, running_mean, **tolerance)
    torch.testing.assert_close(0.9 + 0.1 * variance * count / (count - 1), running_var, **tolerance)
    assert (x_grad[0, 1, :, :4, :3] == 0).all()
    for a, b in zip(results[0], results[1], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pooled_relu_moments_propagate_a_nan(dtype):
    """A NaN at any scale wins the scale max, survives ReLU and reaches the channel's mean,
    variance and its window's pooled value, as in the library's head (a diverged run must not
    look finite)."""
    y = torch.randn(2, 3, 3, 8, 6, generator=torch.Generator().manual_seed(5), dtype=dtype)
    y[1, 2, 2, 5, 4] = float("nan")  # the last scale: it must beat the larger values before it
    y[1, 2, :2, 5, 4] = 9.0
    weight = torch.tensor([0.7, 1.3, -1.1], dtype=dtype)  # the NaN's channel pools by the min
    expected = F.adaptive_max_pool2d(F.relu(y.amax(2)), (2, 3))
    pooled, mean, variance = cpu_kernels.pooled_relu_moments(y, weight >= 0, 2, 3)
    assert mean.isnan().tolist() == [False, False, True]
    assert variance[2].isnan()
    assert pooled[1, 2, 1, 2].isnan() and pooled.isnan().sum() == 1
    torch.testing.assert_close(pooled[:, :2], expected[:, :2], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bias_relu_pool_is_max_pool_of_relu(dtype):
    """cpu_kernels.bias_relu_pool (SESN's conv → ReLU → pool on the CPU) against
    max_pool3d(relu(x + bias), (1, 2, 2)): values and the gradients of x and the bias, on the
    lifting's cropped rows, with odd sides (floored), ties inside a window (the first in
    row-major order takes the gradient) and windows below zero; the same bits for 1-3 threads."""
    generator = torch.Generator().manual_seed(5)
    buffer = torch.randn(2, 3, 2, 7, 12, generator=generator, dtype=dtype)
    x = buffer[..., :9]  # [B, C, S, 7, 9], rows 12 apart
    x[0, 0, 0, :2, :2] = 0.5  # four equal values
    x[0, 0, 1, 2:4, 4:6] = torch.tensor([[0.1, 0.7], [0.7, 0.2]], dtype=dtype)
    x[1, 2, :, :4, :4] = -5.0  # ReLU leaves zeros
    bias = torch.tensor([0.25, -0.5, 0.0], dtype=dtype)
    grad = torch.randn(2, 3, 2, 3, 4, generator=generator, dtype=dtype)
    leaves = [x.detach().clone().requires_grad_(True), bias.clone().requires_grad_(True)]
    expected = F.max_pool3d(F.relu(leaves[0] + leaves[1][:, None, None, None]), (1, 2, 2))
    expected.backward(grad)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            inputs = [buffer.clone().requires_grad_(True), bias.clone().requires_grad_(True)]
            out = cpu_kernels.bias_relu_pool(inputs[0][..., :9], inputs[1])  # in place
            out.backward(grad)
            assert (inputs[0].grad[..., 9:] == 0).all()
            results.append((out, inputs[0].grad[..., :9], inputs[1].grad))
    finally:
        torch.set_num_threads(previous)
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(results[0][0], expected, rtol=0, atol=0)
    assert torch.equal(results[0][1], leaves[0].grad)
    torch.testing.assert_close(results[0][2], leaves[1].grad, **tolerance)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))
