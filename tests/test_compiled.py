"""The compiled head of the toy model (GPU training and evaluation) and the scale max's backward.

On CUDA the toy model runs its part after the lifting through torch.compile, in training steps
(`models.TOY_TRAINING_HEAD`) and in evaluation (`models.TOY_EVAL_HEAD`). Without a GPU these
tests force that path on the CPU: the function form must compute what the modules compute
(logits, gradients, BatchNorm's running statistics and step counter; evaluation's logits),
inductor's compiled form the same up to rounding and the same from run to run, and a failed
compilation must fall back to eager without running the step twice.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from scalelearn.nn import compiled, models
from scalelearn.nn.conv import _ScaleMax
from scalelearn.nn.evaluation import evaluate_logits
from scalelearn.nn.models import _toy_head, build_model


def test_scale_max_backward_by_selection_equals_max_backward_also_on_ties():
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    x[:, :, 1] = x[:, :, 3]  # ties: max(dim) sends the gradient to one of them only
    grad = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    reference, selected = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference.max(dim=2).values.backward(grad)
    values = _ScaleMax.apply(selected)
    values.backward(grad)
    assert torch.equal(values, x.max(dim=2).values)
    assert torch.equal(selected.grad, reference.grad)


def _toy(dtype=torch.float64):
    torch.manual_seed(0)
    config = {"name": "toy", "scale_mode": "single_ratio_squared", "sigma_basis": 1.0, "isr": 2.0}
    return build_model({**config, "learn_sigma_basis": True}).to(dtype).train()


def _step(model, x, labels):
    """Logits, loss gradients and state after one training forward/backward."""
    logits = model(x)
    F.cross_entropy(logits, labels).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return logits.detach(), grads, copy.deepcopy(model.state_dict())


def _batch(dtype=torch.float64):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 32, 32, generator=generator, dtype=dtype)
    return x, torch.randint(0, 10, (4,), generator=generator)


@pytest.fixture(autouse=True)
def _forget_compilations():
    """torch.compile keeps its graphs per function code, across CompiledOnCuda objects: each
    test starts without them (and without the recompilations of the others counted)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _fresh(monkeypatch, name: str):
    """A fresh models.<name> (the same function and dynamic) that also takes CPU tensors; the
    modules it is compared with run as modules (not the CPU training's fused head)."""
    fresh = compiled.CompiledOnCuda(_toy_head, getattr(models, name).dynamic)
    fresh.devices = ("cpu", "cuda")
    monkeypatch.setattr(models, name, fresh)
    monkeypatch.setattr(models.ToyModel, "_fuses_head", lambda self, x: False)
    monkeypatch.delenv(compiled.ENV, raising=False)
    return fresh


@pytest.fixture
def head(monkeypatch):
    """A fresh TOY_TRAINING_HEAD (training) that also takes CPU tensors."""
    return _fresh(monkeypatch, "TOY_TRAINING_HEAD")


@pytest.fixture
def eval_head(monkeypatch):
    """A fresh TOY_EVAL_HEAD that also takes CPU tensors."""
    return _fresh(monkeypatch, "TOY_EVAL_HEAD")


def test_the_head_function_computes_what_the_modules_compute(head):
    head.compiled = head.fn  # the function path, eager: must equal the modules bit for bit
    modules, function = _toy(), _toy()
    x, labels = _batch()
    head.devices = ()
    expected = _step(modules, x, labels)
    head.devices = ("cpu",)
    got = _step(function, x, labels)
    assert torch.equal(got[0], expected[0])
    for name in expected[1]:
        assert torch.equal(got[1][name], expected[1][name]), name
    for name in expected[2]:  # running mean, var and num_batches_tracked included
        assert torch.equal(got[2][name], expected[2][name]), name


def test_compiled_head_agrees_with_eager_and_repeats_itself(head):
    x, labels = _batch(torch.float32)
    head.devices = ()
    eager = _step(_toy(torch.float32), x, labels)
    head.devices = ("cpu",)
    first = _step(_toy(torch.float32), x, labels)
    assert head.compiled is not None and not head.failed, "inductor did not compile on the CPU"
    second = _step(_toy(torch.float32), x, labels)
    torch.testing.assert_close(first[0], eager[0], rtol=1e-5, atol=1e-5)
    for name in eager[1]:
        torch.testing.assert_close(first[1][name], eager[1][name], rtol=1e-4, atol=1e-6)
    for name in eager[2]:
        torch.testing.assert_close(first[2][name], eager[2][name], rtol=1e-5, atol=1e-6)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(first[1][n], second[1][n]) for n in first[1])


def test_failed_compilation_warns_once_and_runs_the_step_once_eagerly(head, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise torch._dynamo.exc.TorchDynamoException("no working C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: broken)
    x, labels = _batch()
    head.devices = ()
    expected = _step(_toy(), x, labels)
    head.devices = ("cpu",)
    model = _toy()
    with pytest.warns(UserWarning, match="torch.compile failed.*SCALELEARN_COMPILE=0"):
        got = _step(model, x, labels)
    assert head.failed and not head.compiles(x)
    assert torch.equal(got[0], expected[0])
    for name in expected[2]:  # the running statistics were updated once, not twice
        assert torch.equal(got[2][name], expected[2][name]), name
    _step(model, x, labels)  # no second attempt
    assert len(calls) == 1


def test_compiles_only_on_cuda_and_obeys_the_environment(monkeypatch):
    head = compiled.CompiledOnCuda(_toy_head)
    monkeypatch.delenv(compiled.ENV, raising=False)
    cpu = torch.zeros(1)
    assert not head.compiles(cpu)  # CPU numbers stay eager PyTorch's
    head.devices = ("cpu",)
    assert head.compiles(cpu)
    with torch.inference_mode():
        assert head.compiles(cpu)  # evaluation too
    monkeypatch.setenv(compiled.ENV, "0")
    assert not head.compiles(cpu)
    assert models.TOY_TRAINING_HEAD.devices == ("cuda",)


def _evaluate(model, x):
    model.eval()
    return evaluate_logits(model, x, chunk=3)  # chunks of 3 and 1: two shapes


def test_the_evaluation_head_computes_what_the_modules_compute(eval_head):
    """Evaluation (inference mode, BatchNorm on its running statistics, chunks): the function
    form gives the modules' logits bit for bit, the compiled form to rounding, repeatably."""
    model = _toy()
    x, labels = _batch()
    _step(model, x, labels)  # running statistics away from their initial 0 and 1
    eval_head.devices = ()
    expected = _evaluate(model, x)
    eval_head.devices = ("cpu",)
    eval_head.compiled = eval_head.fn
    assert torch.equal(_evaluate(model, x), expected)
    assert model.bn.num_batches_tracked == 1  # evaluation does not count steps
    eval_head.compiled = None
    model = model.float()
    first = _evaluate(model, x.float())
    assert eval_head.compiled is not None and not eval_head.failed
    torch.testing.assert_close(first, expected.float(), rtol=1e-5, atol=1e-5)
    assert torch.equal(_evaluate(model, x.float()), first)


def test_evaluation_compiles_at_most_twice_whatever_the_chunk_sizes(eval_head):
    """Evaluation chunks come in many sizes (the chunk, each batch's remainder): after the first
    change the batch size is dynamic, so no size compiles a graph of its own (torch.compile would
    stop at 8 and run the rest eagerly)."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    eval_head.compiled = torch.compile(eval_head.fn, backend=counter, dynamic=eval_head.dynamic)
    model = _toy(torch.float32).eval()
    with torch.inference_mode():
        for size in (5, 3, 7, 2, 6):
            model._compiled_head(torch.randn(size, 16, 3, 32, 32))
    assert counter.frame_count <= 2


def test_the_head_compiles_once_whatever_the_lifting_output_strides(head):
    """The lifting's output is a view of its padded FFT buffer, strided by the kernel size, which
    learned scales change during training: the head must not compile again for each."""
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    head.compiled = torch.compile(head.fn, backend=counter, dynamic=head.dynamic)
    model = _toy(torch.float32)
    for padded in (40, 44, 52):  # three kernel sizes' buffers, the same [4, 16, 3, 32, 32] view
        z = torch.randn(4, 16, 3, padded, padded)[..., :32, :32].requires_grad_()
        model._compiled_head(z).sum().backward()
    assert counter.frame_count == 1
