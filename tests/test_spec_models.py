"""SPEC §5 (models) and §2 (K follows σ_max), checked by what the networks compute.

Every check goes through `build_model` and forward hooks: the scale-equivariant layers are found
as the modules with their own weights whose output is 5-D [B, C, S, H, W], and their outputs are
compared with an independent dense reference (Hermite basis -> einsum -> conv2d). Batch-norm
layers get random statistics and affine parameters, so the order of the operations around them
shows in the numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalelearn.nn.hermite import HermiteBasis
from scalelearn.nn.models import MODEL_DEFAULTS, build_model
from scalelearn.nn.scales import InternalScales


def trace(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple]]:
    """Run the model once; return (output, [(module, input, output)] in call order). The toy
    model's CPU evaluation, which pools the lifting's scale max inside the layer
    (ToyModel._pooled_head), runs its modules one by one instead (the same logits, tested)."""
    calls = []

    def hook(module, inputs, output):
        calls.append((module, inputs[0] if inputs else None, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    if hasattr(model, "_pools_first"):
        model._pools_first = lambda x: False
    try:
        output = model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.__dict__.pop("_pools_first", None)
    return output, calls


def own_weight(module: nn.Module) -> torch.Tensor | None:
    weights = [p for p in module.parameters(recurse=False) if p.ndim >= 2]
    return weights[0] if weights else None


def scale_layers(calls: list[tuple]) -> list[tuple]:
    """The scale-equivariant conv layers: own weights, 5-D output, not batch norm."""
    return [
        call
        for call in calls
        if isinstance(call[2], torch.Tensor)
        and call[2].ndim == 5
        and own_weight(call[0]) is not None
        and not isinstance(call[0], nn.modules.batchnorm._BatchNorm)
    ]


def calls_of(calls: list[tuple], kind: type, **attributes) -> list[tuple]:
    return [
        c
        for c in calls
        if isinstance(c[0], kind) and all(getattr(c[0], k) == v for k, v in attributes.items())
    ]


def the_scales(model: nn.Module) -> torch.Tensor:
    (module,) = [m for m in model.modules() if isinstance(m, InternalScales)]
    return module().detach()


def dense_reference(x, weight, scales, cfg, lifting: bool) -> torch.Tensor:
    """SPEC §2/§4 from scratch: κ_s = Σ_f W[…, f] basis[f, s]; zero padding K//2, stride 1.

    x: [B, Cin, H, W] (lifting) or [B, Cin, S, H, W]; weight: [Cout, Cin, F]. -> [B, Cout, S, H, W].
    """
    basis = HermiteBasis(
        cfg["basis"], cfg["effective_size"], cfg["kernel_size_k"], cfg["basis_mult"]
    )(scales.double())
    kernels = torch.einsum("oif,fsuv->soiuv", weight.double(), basis.dense())
    size = kernels.shape[-1]
    outputs = []
    for s in range(kernels.shape[0]):
        x_s = x if lifting else x[:, :, s]
        outputs.append(F.conv2d(x_s.double(), kernels[s], padding=size // 2))
    return torch.stack(outputs, 2)


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
            with torch.no_grad():
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))


def non_scale_parameter_count(model: nn.Module) -> int:
    scale_ids = {
        id(p) for m in model.modules() if isinstance(m, InternalScales) for p in m.parameters()
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in scale_ids)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    a, b = a.double(), b.double()
    return a.shape == b.shape and bool((a - b).abs().max() <= tol * (1 + b.abs().max()))


# ------------------------------------------------------------------------------ toy model


def test_toy_defaults_are_the_paper_toy_model():
    cfg = MODEL_DEFAULTS["toy"]
    assert (cfg["basis"], cfg["effective_size"], cfg["num_scales"]) == ("hermite_a", 5, 3)
    assert cfg["kernel_size_k"] == 4


@torch.no_grad()
def test_toy_model_layers_compute_the_spec_pipeline():
    """168 canvas: Z2→H (1→16, hermite_a eff 5, N 3, no bias) → max over scales → ReLU →
    BatchNorm2d(16) → MaxPool2d(42, 42) → 16·4·4 → Linear(256→10); 3,002 weights."""
    cfg = {**MODEL_DEFAULTS["toy"], "sigma_basis": 1.0, "isr": 2.0, "implementation": "dense"}
    model = build_model(cfg).eval()
    randomise_batch_norms(model)
    x = torch.randn(2, 1, 168, 168, generator=torch.Generator().manual_seed(1))
    # CPU evaluation pools before ReLU and BN (the same values, ToyModel._pooled_head): the
    # modules' pipeline is traced with that off, and the logits must be the same either way.
    pooled_first = model(x)
    logits, calls = trace(model, x)
    assert close(pooled_first, logits)
    assert logits.shape == (2, 10)

    (lift,) = scale_layers(calls)
    module, lift_in, lift_out = lift
    assert close(lift_in, x), "the lifting layer sees the input itself"
    weight = own_weight(module).reshape(16, 1, -1)
    assert weight.shape[-1] == 25, "hermite_a, effective size 5: F = 25"
    scales = the_scales(model)
    assert scales.tolist() == pytest.approx([1.0, 2**0.5, 2.0])
    assert close(lift_out, dense_reference(x, weight, scales, cfg, lifting=True)), (
        "Z2→H = conv with the Hermite kernels at the 3 scales, padding K//2, no bias"
    )

    (bn,) = calls_of(calls, nn.BatchNorm2d)
    assert bn[0].num_features == 16 and not calls_of(calls, nn.BatchNorm3d)
    assert close(bn[1], F.relu(lift_out.amax(2))), "BN2d gets ReLU(max over scales)"
    (fc,) = calls_of(calls, nn.Linear)
    assert (fc[0].in_features, fc[0].out_features) == (256, 10)
    pooled = F.max_pool2d(bn[2], 42, stride=42)
    assert close(fc[1], pooled.flatten(1)), "Linear gets MaxPool2d(42, 42) of the BN output"
    assert close(logits, fc[2])
    assert non_scale_parameter_count(model) == 16 * 25 + 2 * 16 + 256 * 10 + 10


@torch.no_grad()
def test_toy_model_has_no_conv_bias():
    model = build_model({"name": "toy", "sigma_basis": 1.0, "isr": 2.0}).eval()
    _, calls = trace(model, torch.zeros(1, 1, 32, 32))
    (lift,) = scale_layers(calls)
    assert torch.count_nonzero(lift[2]) == 0


# ------------------------------------------------------------------------------ SESN network


def test_sesn_defaults_are_the_paper_e5_network():
    cfg = MODEL_DEFAULTS["sesn"]
    assert (cfg["basis"], cfg["effective_size"], cfg["num_scales"]) == ("hermite_b", 7, 4)
    assert (cfg["isr"], cfg["sigma_basis"], cfg["kernel_size_k"]) == (2, 1.5, 4)
    assert (cfg["basis_mult"], cfg["basis_max_order"]) == (1.4, 4)


@pytest.fixture(scope="module")
def sesn_trace():
    torch.manual_seed(0)
    model = build_model({"name": "sesn"}).eval()
    randomise_batch_norms(model)
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        # On the CPU each block's bias, ReLU and pool run fused (SESNNet._conv_relu_pool, not
        # modules): the modules' pipeline is traced with that off, and the logits must agree.
        fused = model(x)
        model._conv_relu_pool = lambda conv, h: model._pool(torch.relu(conv(h)))
        logits, calls = trace(model, x)
    assert close(fused, logits)
    return model, x, logits, calls


def test_sesn_upsamples_and_lifts_with_hermite_b(sesn_trace):
    model, x, _, calls = sesn_trace
    layers = scale_layers(calls)
    assert [own_weight(m).shape[:2] for m, _, _ in layers] == [(32, 1), (63, 32), (95, 63)]
    assert all(own_weight(m).shape[2] == 49 for m, _, _ in layers), "hermite_b eff 7: F = 49"
    scales = the_scales(model)
    assert scales.tolist() == pytest.approx([1.5 * 2 ** (i / 3) for i in range(4)], rel=1e-6)
    module, lift_in, lift_out = layers[0]
    assert close(lift_in, F.interpolate(x, scale_factor=2, mode="nearest")), "nearest ×2"
    cfg = MODEL_DEFAULTS["sesn"]
    weight = own_weight(module)
    expected = dense_reference(lift_in, weight, scales, cfg, lifting=True)
    bias = [p for p in module.parameters(recurse=False) if p.ndim == 1]
    assert len(bias) == 1 and bias[0].shape == (32,), "conv bias on"
    expected = expected + bias[0].double()[None, :, None, None, None]
    assert close(lift_out, expected)
    assert lift_out.shape == (2, 32, 4, 56, 56)


def test_sesn_relu_pool_batchnorm3d_between_scale_layers(sesn_trace):
    _, _, _, calls = sesn_trace
    layers = scale_layers(calls)
    for c_out, previous, following in ((32, layers[0], layers[1]), (63, layers[1], layers[2])):
        (bn,) = calls_of(calls, nn.BatchNorm3d, num_features=c_out)
        pooled = F.max_pool3d(F.relu(previous[2]), (1, 2, 2))
        assert close(following[1], bn[0](pooled)), "next SES layer gets BN3d(pool(ReLU(conv)))"
    assert layers[2][2].shape == (2, 95, 4, 14, 14)


def test_sesn_pool_is_max_pool3d_in_training_and_evaluation():
    """SESNNet._pool: max_pool3d((1, 2, 2))'s values without autograd (odd sides, ties, NaN) and
    its gradients with autograd."""
    from scalelearn.nn.models import SESNNet

    x = torch.randn(2, 3, 4, 9, 7, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, :4, :4] = 1.0  # ties
    x[1, 2, 3, 5, 2] = float("nan")
    with torch.no_grad():
        torch.testing.assert_close(SESNNet._pool(x), F.max_pool3d(x, (1, 2, 2)), equal_nan=True)
        # The layers return strided views; the pool's result has max_pool3d's layout, so the
        # BatchNorm3d after it rounds alike (it does not on other layouts).
        view = torch.randn(4, 2, 3, 12, 12).permute(1, 2, 0, 3, 4)[..., :8, :8]
        ours, reference = SESNNet._pool(view), F.max_pool3d(view, (1, 2, 2))
        assert ours.stride() == reference.stride()
        bn = torch.nn.BatchNorm3d(3).eval()
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_()
        assert torch.equal(bn(ours), bn(reference))
    x = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4, 4)
    (ours,) = torch.autograd.grad(SESNNet._pool(x), x, grad)
    (reference,) = torch.autograd.grad(F.max_pool3d(x, (1, 2, 2)), x, grad)
    assert torch.equal(ours, reference)


def test_toy_pool_is_the_adaptive_max_pool_in_training_and_evaluation():
    """ToyModel._pool: AdaptiveMaxPool2d(4)'s values without autograd (ties, NaN, sides that 4
    does not divide) and its gradients with autograd."""
    model = build_model({"name": "toy"})
    for side in (24, 26):
        x = torch.randn(2, 16, side, side, generator=torch.Generator().manual_seed(side))
        x[0, 0, :6, :6] = 1.0  # ties
        x[1, 3, 7, 2] = float("nan")
        with torch.no_grad():
            expected = F.adaptive_max_pool2d(x, 4)
            torch.testing.assert_close(model._pool(x), expected, equal_nan=True)
    x = torch.randn(2, 16, 24, 24, requires_grad=True)
    grad = torch.randn(2, 16, 4, 4)
    (ours,) = torch.autograd.grad(model._pool(x), x, grad)
    (reference,) = torch.autograd.grad(F.adaptive_max_pool2d(x, 4), x, grad)
    assert torch.equal(ours, reference)


def test_sesn_head(sesn_trace):
    """max over scales → ReLU → MaxPool2d(8, 8, padding 2) → BN2d → Linear(380→256) → BN1d → ReLU
    → Dropout(0.7) → Linear(256→10)."""
    _, _, logits, calls = sesn_trace
    last = scale_layers(calls)[2][2]
    (bn2d,) = calls_of(calls, nn.BatchNorm2d, num_features=95)
    pooled = F.max_pool2d(F.relu(last.amax(2)), 8, stride=8, padding=2)
    assert pooled.shape[-2:] == (2, 2)
    assert close(bn2d[1], pooled)
    first, second = calls_of(calls, nn.Linear)
    assert (first[0].in_features, first[0].out_features) == (380, 256)
    assert close(first[1], bn2d[2].flatten(1))
    (bn1d,) = calls_of(calls, nn.BatchNorm1d, num_features=256)
    assert close(bn1d[1], first[2])
    assert (second[0].in_features, second[0].out_features) == (256, 10)
    assert close(second[1], F.relu(bn1d[2])), "eval: dropout is the identity"
    assert close(logits, second[2])


def test_sesn_dropout_is_0_7_before_the_last_linear():
    torch.manual_seed(0)
    model = build_model({"name": "sesn", "sigma_basis": 0.7, "isr": 1.5}).train()
    _, calls = trace(model, torch.randn(16, 1, 28, 28))
    (bn1d,) = calls_of(calls, nn.BatchNorm1d)
    last = calls_of(calls, nn.Linear)[-1]
    kept = F.relu(bn1d[2])
    seen = last[1]
    dropped = (seen == 0) & (kept != 0)
    assert torch.allclose(seen[~dropped], kept[~dropped] / 0.3, rtol=1e-5, atol=1e-6)
    fraction = float(dropped.sum() / (kept != 0).sum())
    assert 0.6 < fraction < 0.8, fraction


def test_sesn_parameter_count():
    model = build_model({"name": "sesn"})
    f = 49
    convs = (32 * 1 * f + 32) + (63 * 32 * f + 63) + (95 * 63 * f + 95)
    norms = 2 * (32 + 63) + 2 * 95 + 2 * 256
    # Linear(380 -> 256) has no bias: a BatchNorm1d follows it (SESN's and the authors' code).
    linears = 380 * 256 + (256 * 10 + 10)
    assert non_scale_parameter_count(model) == convs + norms + linears


# ------------------------------------------------------------------------------ CNN baseline


@torch.no_grad()
def test_cnn_baseline_builds_and_runs_with_the_sesn_head():
    torch.manual_seed(0)
    model = build_model({"name": "cnn"}).eval()
    randomise_batch_norms(model)
    x = torch.randn(3, 1, 28, 28)
    logits, calls = trace(model, x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    convs = calls_of(calls, nn.Conv2d)
    shapes = [(c[0].in_channels, c[0].out_channels, c[0].kernel_size) for c in convs]
    assert shapes == [(1, 32, (7, 7)), (32, 63, (7, 7)), (63, 95, (7, 7))]
    assert convs[0][1].shape[-2:] == (56, 56), "upsampled ×2 like the SESN network"
    assert all(c[2].shape[-2:] == c[1].shape[-2:] for c in convs), "same padding"
    first, second = calls_of(calls, nn.Linear)
    assert (first[0].in_features, first[0].out_features) == (380, 256)
    assert (second[0].in_features, second[0].out_features) == (256, 10)
    (dropout,) = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert dropout.p == 0.7
    assert not [m for m in model.modules() if isinstance(m, InternalScales)]


# ------------------------------------------------------------------------------ K follows σ_max


def kernel_size_rule(sigma_max: float, k: float = 4.0) -> int:
    return max(3, 2 * math.ceil(k * sigma_max) + 1)


def largest_scale_footprint(model: nn.Module, canvas: int = 80) -> int:
    """Width of the nonzero response of the largest scale to a centred unit impulse: the
    support of that scale, which is K (SPEC §2)."""
    x = torch.zeros(1, 1, canvas, canvas)
    x[0, 0, canvas // 2, canvas // 2] = 1.0
    _, calls = trace(model, x)
    (lift,) = scale_layers(calls)
    response = lift[2][0, :, -1].abs().amax(0)  # [H, W], largest scale
    rows = torch.nonzero(response.amax(1) > 1e-6 * response.max()).flatten()
    return int(rows.max() - rows.min() + 1)


@torch.no_grad()
def test_forward_uses_the_kernel_size_of_the_current_scales():
    """Change σ_b in place after a forward: the next forward uses K of the new σ_max and equals
    a model built with that σ_b (nothing from the first forward is reused)."""
    cfg = {"name": "toy", "sigma_basis": 1.0, "isr": 2.0, "implementation": "dense"}
    model = build_model(cfg).eval()
    assert largest_scale_footprint(model) == kernel_size_rule(2.0) == 17
    (scales,) = [m for m in model.modules() if isinstance(m, InternalScales)]
    scales.sigma_basis.fill_(2.3)
    assert largest_scale_footprint(model) == kernel_size_rule(4.6) == 39
    fresh = build_model({**cfg, "sigma_basis": 2.3}).eval()
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(x), fresh(x), atol=1e-6)
