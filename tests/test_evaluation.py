"""Evaluation in bounded memory (issue #9): chunked logits equal the whole-batch forward pass, the
chunk size follows the memory budget, kernels reused across chunks follow weight and scale
changes, and the allocator hands evaluation memory back."""

from __future__ import annotations

import resource
import sys

import pytest
import torch

from scalelearn import allocator
from scalelearn.nn import evaluation, fast_conv
from scalelearn.nn.hermite import HermiteBasis
from scalelearn.nn.models import build_model

MODELS = {
    "toy_rows": ({"name": "toy", "scale_mode": "fixed", "sigma_basis": 1.0, "isr": 3.0}, 40),
    "toy_learned": ({"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0}, 24),
    "sesn": ({"name": "sesn", "scale_mode": "single_ratio_squared"}, 28),
    "toy_dense": ({"name": "toy", "implementation": "dense", "sigma_basis": 1.0}, 24),
    "cnn": ({"name": "cnn"}, 28),
}


def trained_looking(cfg: dict, dtype=torch.float32, seed: int = 0):
    """A model in eval mode whose batch-norm statistics are not the identity."""
    torch.manual_seed(seed)
    model = build_model(cfg).to(dtype)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(
    "name, dtype",
    [(name, torch.float64) for name in sorted(MODELS)] + [("toy_rows", torch.float32)],
)
def test_chunked_logits_equal_the_whole_batch(name, dtype):
    cfg, size = MODELS[name]
    model = trained_looking(cfg, dtype)
    x = torch.randn(5, 1, size, size, dtype=dtype, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(x)
    chunked = evaluation.evaluate_logits(model, x, chunk=2)  # chunks of 2, 2 and 1
    tolerance = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {}
    torch.testing.assert_close(chunked, whole, **tolerance)
    assert torch.equal(chunked.argmax(1), whole.argmax(1))


def test_chunks_respect_the_budget():
    cfg, size = MODELS["toy_rows"]
    model = trained_looking(cfg)
    per_image = evaluation.bytes_per_image(model, (1, size, size))
    # Larger than the conv output alone (16 maps at 3 scales, float32): the estimate covers it.
    assert per_image > 16 * 3 * size * size * 4
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    evaluator = evaluation.ChunkedEvaluator(model, budget=5 * per_image + 1)
    assert evaluator.chunk((1, size, size)) == 5
    logits = evaluator(torch.randn(12, 1, size, size))
    assert logits.shape == (12, 10)
    assert seen[-3:] == [5, 5, 2]  # the probe's one image first, then the chunks
    assert evaluation.images_per_chunk(model, (1, size, size), budget=1) == 1


def test_chunk_size_grows_with_the_kernel_and_the_canvas():
    small = trained_looking({"name": "toy", "sigma_basis": 2.0, "isr": 3.0})
    large = trained_looking({"name": "toy", "sigma_basis": 4.0, "isr": 6.0})
    assert evaluation.bytes_per_image(large, (1, 64, 64)) > evaluation.bytes_per_image(
        small, (1, 64, 64)
    )
    assert evaluation.bytes_per_image(small, (1, 96, 96)) > evaluation.bytes_per_image(
        small, (1, 48, 48)
    )


def test_reused_kernels_follow_weight_and_scale_changes():
    """Inside one reuse_kernels block, a changed weight or changed scales give fresh kernels."""
    cfg, size = MODELS["toy_learned"]
    model = trained_looking(cfg)
    x = torch.randn(4, 1, size, size)
    with torch.inference_mode(), fast_conv.reuse_kernels():
        first = model(x)
        again = model(x)
        with torch.no_grad():
            model.conv.weight.mul_(1.5)  # an optimiser step or load_state_dict does the same
        after_weight = model(x)
        with torch.no_grad():
            model.internal_scales.theta.add_(0.2)
        after_scales = model(x)
    assert torch.equal(first, again)
    with torch.no_grad():
        expected_after_scales = model(x)
        model.internal_scales.theta.sub_(0.2)
        expected_after_weight = model(x)
    torch.testing.assert_close(after_weight, expected_after_weight)
    torch.testing.assert_close(after_scales, expected_after_scales)
    assert not torch.allclose(after_weight, first)
    assert not torch.allclose(after_scales, after_weight)


def test_nothing_is_reused_while_autograd_records():
    cfg, size = MODELS["toy_learned"]
    model = trained_looking(cfg).train()
    x = torch.randn(2, 1, size, size)
    with fast_conv.reuse_kernels():
        model(x).sum().backward()
        first = model.conv.weight.grad.clone()
        model.zero_grad()
        model(x).sum().backward()  # a second graph through the same weights must work
    torch.testing.assert_close(model.conv.weight.grad, first)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_evaluation_reuses_its_memory_from_call_to_call():
    """Evaluation's chunks reuse the blocks the previous ones freed: a second evaluation of the
    same batch touches almost no fresh pages (mapping large blocks afresh, glibc's default, made
    every chunk fault in its memory again: 3-4x slower)."""
    allocator.reuse_freed_memory()
    cfg, size = MODELS["toy_learned"]
    model = trained_looking(cfg).eval()
    x = torch.randn(160, 1, size, size)
    # Chunks of 16 MiB at most: a first call faults in thousands of pages whatever earlier tests
    # left in the heap (with 4 MiB it touched ~1,000, where runs of scales use less).
    evaluator = evaluation.ChunkedEvaluator(model, budget=16 * 2**20)
    assert evaluator.chunk(tuple(x.shape[1:])) < len(x)  # several chunks

    def faults_of_one_call() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        evaluator(x)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    allocator.release_freed_memory()  # what earlier tests left in the heap goes back
    first = faults_of_one_call()
    again = min(faults_of_one_call() for _ in range(3))
    assert first > 1000
    assert again < first / 10


def test_checkpointed_lifting_gives_the_same_step(monkeypatch):
    """A training batch larger than the lifting's memory budget goes through in checkpointed
    chunks: same logits and same gradients (float64) as the whole batch at once."""
    from scalelearn.nn import models

    cfg, size = MODELS["toy_learned"]
    results = []
    for budget in (2**40, 1):  # no chunks; one image per chunk
        monkeypatch.setattr(models, "TRAIN_LIFT_BUDGET", budget)
        model = trained_looking(cfg, torch.float64).train()
        x = torch.randn(
            5, 1, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
        )
        basis = model.basis()
        assert model.lift_chunk(x, basis) == (5 if budget > 1 else 1)
        logits = model(x)
        torch.nn.functional.cross_entropy(logits, torch.arange(5)).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (whole, whole_grads), (chunked, chunked_grads) = results
    torch.testing.assert_close(chunked, whole, rtol=1e-10, atol=1e-12)
    assert whole_grads.keys() == chunked_grads.keys()
    assert "basis.internal_scales.theta" in whole_grads
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("gigabytes, whole", [(80, True), (24, False)])
def test_gpu_training_lifts_the_paper_batch_whole_on_a_large_card(monkeypatch, gigabytes, whole):
    """On a GPU the lifting's training budget is a quarter of the card, at most 16 GiB: every toy
    network of the paper (K up to 193, E3's σ_b 4 and ISR 6) takes its batch of 128 whole on an
    80 GB card (checkpointed chunks recompute the lifting: an H100 trained K 123 at 3,766 img/s
    in chunks); a 24 GB card chunks it."""
    from types import SimpleNamespace

    from scalelearn.nn import models

    card = SimpleNamespace(total_memory=gigabytes * 10**9)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    budget = evaluation.memory_budget(
        torch.device("cuda"), models.TRAIN_LIFT_BUDGET, models.CUDA_TRAIN_LIFT_BUDGET
    )
    model = build_model({"name": "toy", "sigma_basis": 4.0, "isr": 6.0})
    basis = model.basis()
    assert basis.profiles.shape[-1] == 193
    x = torch.empty(128, 1, 168, 168, device="meta")  # not the CPU's pass-by-pass lifting
    need = models._BACKWARD_FACTOR * fast_conv.working_bytes(x, model.conv.weight, basis, "fft")
    assert (need <= budget) == whole


def test_scale_max_without_autograd_equals_the_training_max():
    from scalelearn.nn.conv import scale_max_projection

    x = torch.randn(2, 3, 4, 5, 6)
    x[0, 0, 1] = x[0, 0, 2]  # ties
    x[1, 2, 3, 0, 0] = float("nan")
    with torch.no_grad():
        fast = scale_max_projection(x)
    expected = x.max(dim=2).values
    torch.testing.assert_close(fast, expected, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(fast[1, 2, 0, 0])


@pytest.mark.skipif(allocator.allocated_bytes() is None, reason="needs glibc's mallinfo2")
@pytest.mark.parametrize("method", sorted(fast_conv._METHODS))
def test_working_bytes_is_the_memory_a_forward_call_takes(method):
    """`fast_conv.working_bytes` (what evaluation sizes its chunks by) against the bytes malloc
    hands out during forward calls of each method (bench's sampler, every 2 ms): within 10 %
    above (it is meant as an upper bound, the sampler misses short peaks) and not more than twice
    too large (the toy lifting on the 84 canvas, K 25, 16 images)."""
    from scalelearn.bench import _PeakMemory

    allocator.reuse_freed_memory()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 84, 84, generator=generator)
    weight = torch.randn(16, 1, 25, generator=generator)
    basis = HermiteBasis("hermite_a", 5)(torch.tensor([1.0, 1.732, 3.0]))
    with torch.inference_mode():
        fast_conv._apply(x, weight, basis, method)  # warm-up
        with _PeakMemory(torch.device("cpu")) as peak:
            for _ in range(3):
                fast_conv._apply(x, weight, basis, method)
    estimate = fast_conv.working_bytes(x, weight, basis, method) / 2**20
    assert estimate / 2 <= peak.peak_mib <= 1.1 * estimate


def test_sesn_estimate_counts_every_scale_layer():
    """SESN's first two blocks run fused on the CPU (bias, ReLU and pool in one pass): their
    layers must still be seen by the memory probe, whose estimate is at least each layer's
    input plus its working memory per image."""
    from scalelearn.nn import fast_conv

    model = trained_looking({"name": "sesn"})
    inputs = {
        model.conv1: torch.zeros(1, 1, 56, 56),
        model.conv2: torch.zeros(1, 32, 4, 28, 28),
        model.conv3: torch.zeros(1, 63, 4, 14, 14),
    }
    nominal = evaluation._NOMINAL_BATCH
    with torch.no_grad():
        needed = [
            x.numel() * 4
            + fast_conv.working_bytes(x.expand(nominal, *x.shape[1:]), conv.weight, conv.basis())
            // nominal
            for conv, x in inputs.items()
        ]
    assert evaluation.bytes_per_image(model, (1, 28, 28)) >= max(needed)
