"""The public layer API of scalelearn.nn (issue #11): self-contained layers over one SharedBasis,
the basis computed once per forward pass and never reused across a freed graph, printing, and the
paper's networks, built from these layers, against the dense reference of SPEC §4–§5."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from scalelearn.nn import (
    HermiteBasis,
    InternalScales,
    ScaleConvH2H,
    ScaleConvZ2H,
    ScaleMaxProjection,
    SharedBasis,
)
from scalelearn.nn.conv import h2h_dense, z2h_dense
from scalelearn.nn.hermite import ScaleBasis
from scalelearn.nn.models import SESNConfig, ToyConfig, build_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def shared(mode="single_ratio_squared", basis="hermite_a", eff=3, num_scales=3, kernel_size_k=2.0):
    """A SharedBasis with learnable scales 1.2 … 2.4 (K 11 at k = 2: small and fast)."""
    scales = InternalScales(mode, num_scales, 1.2, 2.0, learn_sigma_basis=True)
    return SharedBasis(scales, HermiteBasis(basis, eff, kernel_size_k=kernel_size_k))


def sequential(basis, implementation="fast"):
    """Z2→H → ReLU → H→H → max over scales → head: [B, 1, H, W] -> [B, 5]."""
    return nn.Sequential(
        ScaleConvZ2H(1, 4, basis, bias=True, implementation=implementation),
        nn.ReLU(),
        ScaleConvH2H(4, 6, basis, implementation=implementation),
        ScaleMaxProjection(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    )


def reference_forward(net, x):
    """The same network computed by hand: the basis evaluated afresh from the scales, the dense
    reference layers (SPEC §4), no cache."""
    z2h, _, h2h, _, _, _, fc = net
    scales = z2h.basis.internal_scales()
    basis = z2h.basis.hermite(scales)
    y = z2h_dense(x, z2h.weight, basis) + z2h.bias[:, None, None, None]
    y = h2h_dense(F.relu(y), h2h.weight, basis)
    return fc(y.max(dim=2).values.mean((-1, -2)))


def smooth_images(batch=2, size=16, seed=0, dtype=torch.float64):
    coarse = torch.randn(batch, 1, 5, 5, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return F.interpolate(coarse, size=size, mode="bilinear")


def twin_networks():
    """(net with the public layers, the same parameters for the reference), float64."""
    torch.manual_seed(0)
    net = sequential(shared()).double()
    twin = copy.deepcopy(net)
    return net, twin


def count_basis_evaluations(monkeypatch) -> list:
    calls = []
    original = HermiteBasis.forward

    def counting(self, scales):
        calls.append(1)
        return original(self, scales)

    monkeypatch.setattr(HermiteBasis, "forward", counting)
    return calls


def test_layers_work_alone_in_sequential_with_their_shapes():
    basis = shared(num_scales=4)
    x = torch.randn(2, 1, 12, 14)
    lifted = ScaleConvZ2H(1, 3, basis)(x)
    assert lifted.shape == (2, 3, 4, 12, 14)
    assert ScaleConvH2H(3, 5, basis)(lifted).shape == (2, 5, 4, 12, 14)
    assert ScaleMaxProjection()(lifted).shape == (2, 3, 12, 14)
    assert sequential(basis).float()(x).shape == (2, 5)
    with pytest.raises(TypeError, match="SharedBasis"):
        ScaleConvZ2H(1, 3, basis.internal_scales)
    with pytest.raises(ValueError, match=r"expects x of shape \[B, Cin, H, W\] with Cin = 1"):
        ScaleConvZ2H(1, 3, basis)(lifted)
    with pytest.raises(ValueError, match="with Cin = 3, S = 4; got"):
        ScaleConvH2H(3, 5, basis)(lifted[:, :, :2])


def test_basis_is_computed_once_per_forward_pass(monkeypatch):
    calls = count_basis_evaluations(monkeypatch)
    net = sequential(shared())
    x = torch.randn(2, 1, 12, 12)
    for step in range(1, 3):
        net(x).sum().backward()
        assert len(calls) == step, "one basis per pass, shared by both layers"
    model = build_model({"name": "sesn", "scale_mode": "single_ratio_squared"})
    calls.clear()
    model.eval()  # batch of one
    model(torch.randn(1, 1, 28, 28)).sum().backward()
    assert len(calls) == 1, "SESN's three layers share one basis"


def test_two_training_steps_with_a_shared_basis_match_the_reference():
    """Forward, backward, Adam step, twice: the parameters (scales included) follow the reference
    computed without any cache. A cache that kept the first step's basis would fail here."""
    net, twin = twin_networks()
    x = smooth_images()
    optimisers = [torch.optim.Adam(m.parameters(), lr=0.05) for m in (net, twin)]
    for _ in range(2):
        for model, forward, optimiser in zip(
            (net, twin), (lambda m, x: m(x), reference_forward), optimisers, strict=True
        ):
            optimiser.zero_grad()
            forward(model, x).square().sum().backward()
            optimiser.step()
        for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    scales = net[0].basis.internal_scales
    assert scales.theta.grad.abs() > 0 and scales.sigma_basis.grad.abs() > 0


def test_two_forwards_then_one_backward_and_gradient_accumulation():
    net, twin = twin_networks()
    x1, x2 = smooth_images(seed=1), smooth_images(seed=2)
    # Two forward passes share one basis; one backward sends both gradients to the scales.
    (net(x1).sum() + net(x2).sum()).backward()
    (reference_forward(twin, x1).sum() + reference_forward(twin, x2).sum()).backward()
    # Then accumulation: forward, backward, forward, backward with unchanged parameters; the
    # first backward freed the basis's graph, so the second pass needs a new one.
    for x in (x1, x2):
        net(x).sum().backward()
        reference_forward(twin, x).sum().backward()
    for (name, a), b in zip(net.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_cached_basis_is_reused_only_while_it_is_valid():
    basis = shared()
    scales = basis.internal_scales
    with torch.no_grad():
        first = basis()
        assert basis() is first, "unchanged scales under no_grad: one basis for every batch"
    with_grad = basis()
    assert with_grad is not first and with_grad.profiles.requires_grad
    with torch.no_grad():
        scales.theta.add_(0.1)  # what an optimiser step does
        moved = basis()
    assert moved is not first
    assert not torch.equal(moved.profiles, first.profiles)
    with torch.no_grad():
        assert basis() is moved
        scales.load_state_dict({k: v.clone() for k, v in scales.state_dict().items()})
        assert basis() is not moved, "load_state_dict writes the parameters in place"
    doubled = basis.double()
    assert doubled() is not moved and doubled().profiles.dtype == torch.float64
    assert copy.deepcopy(basis)().profiles.dtype == torch.float64


def test_frozen_scales_get_no_gradient_after_a_no_grad_pass():
    """A basis computed under no_grad carries no graph: the next training pass must not use it."""
    net = sequential(shared())
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        net(x)
    net(x).sum().backward()
    assert net[0].basis.internal_scales.theta.grad is not None


def test_repr_shows_basis_scales_isr_and_k():
    basis = SharedBasis(InternalScales("fixed", 3, 2.0, 3.0), HermiteBasis("hermite_a", 5))
    text = repr(ScaleConvZ2H(1, 16, basis))
    assert "hermite_a" in text and "F=25" in text
    assert "scales=[2, 3.464, 6]" in text and "ISR=3" in text and "K=49" in text
    assert text.count("\n") == 0, "one line per layer"
    model = repr(build_model({"name": "toy"}))
    assert "InternalScales(fixed, num_scales=3" in model and "K=49" in model


# --------------------------------------------------------------- the paper's networks (SPEC §5)


def toy_reference(model, x):
    """SPEC §5 toy model from the dense reference: Z2→H → max over scales → ReLU → BN → pool
    to 4×4 → Linear, with the model's parameters and a basis evaluated from its scales."""
    basis = model.basis.hermite(model.internal_scales())
    y = F.relu(z2h_dense(x, model.conv.weight, basis).max(dim=2).values)
    bn = model.bn
    y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return model.fc(F.adaptive_max_pool2d(y, 4).flatten(1))


def sesn_reference(model, x):
    """SPEC §5 SESN network from the dense reference (eval mode: BN with running statistics)."""
    basis: ScaleBasis = model.basis.hermite(model.internal_scales())

    def bn(layer, y):
        return F.batch_norm(
            y, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, 1e-5
        )

    def pool(y):
        return F.max_pool3d(y, (1, 2, 2))

    def conv(dense, layer, y):
        return dense(y, layer.weight, basis) + layer.bias[:, None, None, None]

    y = F.interpolate(x, scale_factor=2, mode="nearest")
    y = bn(model.bn1, pool(F.relu(conv(z2h_dense, model.conv1, y))))
    y = bn(model.bn2, pool(F.relu(conv(h2h_dense, model.conv2, y))))
    y = F.relu(conv(h2h_dense, model.conv3, y).max(dim=2).values)
    return model.head(y)


@pytest.mark.parametrize(
    "config, size, reference",
    [
        (ToyConfig(scale_mode="single_ratio_squared", learn_sigma_basis=True), 40, toy_reference),
        # k = 2 (K 13 instead of 25) keeps the float64 dense reference quick.
        (
            SESNConfig(scale_mode="ratio", learn_sigma_basis=True, kernel_size_k=2.0),
            28,
            sesn_reference,
        ),
    ],
    ids=["toy", "sesn"],
)
def test_paper_networks_equal_the_dense_reference_architecture(config, size, reference):
    """The networks, built from the public layers on the default (fast) path, give the logits of
    the architecture of SPEC §5 written out with the dense reference, after a training step has
    moved every parameter (scales, BN statistics) off its initial value."""
    torch.manual_seed(0)
    model = build_model(config).double()
    x = smooth_images(batch=3, size=size)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    model(x).square().sum().backward()
    optimiser.step()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(model, x), rtol=1e-9, atol=1e-10)
    assert model.scale_report()["isr"] != pytest.approx(config.isr), "the step moved the scales"


@pytest.mark.parametrize("name", ["toy", "sesn"])
def test_checkpoints_of_the_previous_layout_still_load(name):
    """Before the SharedBasis, a network's state held `internal_scales.*` and `basis.<buffer>`
    once, and its layers only their weights: such a state loads strictly, to the same values."""
    torch.manual_seed(0)
    cfg = {"name": name, "scale_mode": "single_ratio_squared", "learn_sigma_basis": True}
    trained = build_model(cfg)
    with torch.no_grad():
        trained.internal_scales.theta.add_(0.3)
    old = {}
    for key, value in trained.state_dict().items():
        if key.startswith("basis.internal_scales."):
            old[key.removeprefix("basis.")] = value
        elif key.startswith("basis.hermite."):
            old["basis." + key.removeprefix("basis.hermite.")] = value
        elif ".basis." not in key:
            old[key] = value
    fresh = build_model(cfg)
    fresh.load_state_dict(old)
    assert fresh.scale_report() == trained.scale_report()
    for layer in (m for m in fresh.modules() if hasattr(m, "basis") and m is not fresh):
        assert layer.basis is fresh.basis
