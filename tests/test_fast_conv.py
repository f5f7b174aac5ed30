"""The fast scale-equivariant layers against the dense reference (issue #3): outputs and gradients
with respect to the input, the weights and the internal scales, for every method of
scalelearn.nn.fast_conv, both bases, supports that differ per scale and kernels larger than the
image; whole models; the choice of method; and the `scalelearn bench` command."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from scalelearn import bench
from scalelearn.cli import main
from scalelearn.errors import ScalelearnError
from scalelearn.nn import cpu_fft, fast_conv
from scalelearn.nn.conv import h2h_dense, z2h_dense
from scalelearn.nn.cpu_kernels import add_lifting_kernel_grad, channel_mix, transposed
from scalelearn.nn.hermite import HermiteBasis
from scalelearn.nn.models import build_model

# (basis, effective size, scales, H, W); the supports differ between scales wherever S > 1.
CASES = {
    "a_k49_over_image": ("hermite_a", 5, [2.0, 3.46, 6.0], 30, 26),  # K 49, supports 17/29/49
    "b_small": ("hermite_b", 5, [1.0, 1.6, 2.1], 15, 17),  # K 19, supports 9/15/19
    "a_tiny_image": ("hermite_a", 3, [1.0, 4.0], 9, 12),  # K 33, far beyond the image
    "b_sesn": ("hermite_b", 7, [1.5, 1.89, 2.38, 3.0], 20, 20),  # SESN's basis, K 25
    "a_one_scale": ("hermite_a", 5, [1.5], 16, 16),
}
METHODS = sorted(fast_conv._METHODS)


def conv_and_grads(function, basis_args, scales, x, weight, grad_out):
    """-> (output, grad x, grad weight, grad scales) of one layer function."""
    scales = scales.detach().requires_grad_(True)
    x = x.detach().requires_grad_(True)
    weight = weight.detach().requires_grad_(True)
    y = function(x, weight, HermiteBasis(*basis_args)(scales))
    return (y, *torch.autograd.grad(y, [x, weight, scales], grad_out))


def assert_all_close(actual, expected, rtol):
    names = ("output", "grad x", "grad weight", "grad scales")
    for name, a, e in zip(names, actual, expected, strict=True):
        a, e = a.detach(), e.detach()
        assert float((a - e).abs().max()) <= rtol * float(e.abs().max()), name


def layer_inputs(case, lifting, in_channels, dtype, seed=0):
    basis, eff, scales, height, width = CASES[case]
    generator = torch.Generator().manual_seed(seed)
    num_scales = len(scales)
    shape = (
        (2, in_channels, height, width) if lifting else (2, in_channels, num_scales, height, width)
    )
    x = torch.randn(shape, generator=generator, dtype=dtype)
    weight = torch.randn(3, in_channels, eff * eff, generator=generator, dtype=dtype)
    grad_out = torch.randn(2, 3, num_scales, height, width, generator=generator, dtype=dtype)
    return (basis, eff), torch.tensor(scales, dtype=dtype), x, weight, grad_out


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("lifting", [True, False], ids=["z2h", "h2h"])
def test_every_method_matches_dense_in_float64(method, case, lifting):
    in_channels = 1 if lifting and case != "b_small" else 2
    args = layer_inputs(case, lifting, in_channels, torch.float64)
    reference = conv_and_grads(z2h_dense if lifting else h2h_dense, *args)
    actual = conv_and_grads(fast_conv._METHODS[method], *args)
    assert actual[0].shape == reference[0].shape
    assert_all_close(actual, reference, rtol=1e-10)


def _mix_and_grads(mix, t, z, grad):
    t, z = t.detach().requires_grad_(True), z.detach().requires_grad_(True)
    y = mix(t, z)
    return (y, *torch.autograd.grad(y, [t, z], grad))


def _complex(generator, *shape, dtype=torch.float64):
    return torch.complex(
        torch.randn(*shape, generator=generator, dtype=dtype),
        torch.randn(*shape, generator=generator, dtype=dtype),
    )


@pytest.mark.parametrize("out_channels", [8, 3], ids=["two-copies", "one-copy"])
def test_channel_mix_matches_the_matmul_of_the_gpu(out_channels):
    """`rows`' channel mix on the CPU (numba kernels in the FFT's layout) and the batched matmul
    that runs elsewhere give the same spectrum and gradients (float64). The matmul's result is
    reordered for the inverse FFT in two copies where Cout·B·H complex numbers are a multiple of
    4 KiB (8·2·16 complex128 here), else in one: both layouts are checked."""
    generator = torch.Generator().manual_seed(3)
    t = _complex(generator, 2, out_channels, 5, 9)  # [S, Cout, J, k]
    z = _complex(generator, 2, 2, 5, 16, 9)  # [S, B, J, H, k]
    grad = _complex(generator, 2, out_channels, 2, 16, 9)  # [S, Cout, B, H, k]
    expected = list(_mix_and_grads(fast_conv._matmul_mix, t, z, grad))
    einsum = torch.einsum("sojk,sbjhk->sobhk", t, z)
    torch.testing.assert_close(expected[0], einsum, rtol=1e-12, atol=1e-12)
    # The CPU kernels write the layer's output layout, [B, Cout, S, H, k].
    expected[0] = expected[0].permute(2, 1, 0, 3, 4)
    actual = _mix_and_grads(channel_mix, t, z, grad.permute(2, 1, 0, 3, 4))
    for got, wanted in zip(actual, expected, strict=True):
        torch.testing.assert_close(got, wanted, rtol=1e-12, atol=1e-12)


def test_channel_mix_gives_the_same_bits_for_every_thread_count():
    """Each output of the numba kernels is summed by one thread in a fixed order."""
    generator = torch.Generator().manual_seed(4)
    t = _complex(generator, 3, 16, 5, 13, dtype=torch.float32)
    z = _complex(generator, 3, 4, 5, 20, 13, dtype=torch.float32)
    grad = _complex(generator, 4, 16, 3, 20, 13, dtype=torch.float32)  # [B, Cout, S, H, k]
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(_mix_and_grads(channel_mix, t, z, grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other, strict=True))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_transposed_is_the_transpose_and_its_gradient_too(dtype):
    """`cpu_kernels.transposed` (tiles of 32) on sides that are not multiples of 32, a
    conjugated view and a strided one, also conjugating (`cpu_fft.h2h` uses both ways; its
    gradients: the float64 parity tests), and `_BatchedMatmul` for the incoming gradient."""
    generator = torch.Generator().manual_seed(5)
    x = _complex(generator, 37, 50, dtype=dtype)
    for view in (x, x.conj(), x[:, ::3], x.real.contiguous()):
        got = transposed(view)
        assert got.is_contiguous() and torch.equal(got, view.t().resolve_conj())
    for view in (x, x.conj(), x[:, ::3]):
        got = transposed(view, conj=True)
        assert got.is_contiguous() and torch.equal(got, view.mH.resolve_conj())
    # [F, B, Cout] seen as a view of [B, Cout, F], as the inverse FFT's gradient arrives.
    a = _complex(generator, 12, 3, 4, dtype=dtype).requires_grad_(True)
    b = _complex(generator, 12, 4, 5, dtype=dtype).requires_grad_(True)
    incoming = _complex(generator, 3, 5, 12, dtype=dtype).permute(2, 0, 1)
    got = torch.autograd.grad(fast_conv._bmm(a, b), (a, b), incoming)
    expected = torch.autograd.grad(torch.bmm(a, b), (a, b), incoming.contiguous())
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def _kernel_grad(g_hat, x_hat, passes=((0, None),)):
    total = torch.zeros(*g_hat.shape[1:], dtype=g_hat.dtype)
    for start, stop in passes:
        add_lifting_kernel_grad(g_hat[start:stop], x_hat[start:stop], total)
    return total


def test_lifting_kernel_gradient_is_the_batch_sum_pass_by_pass():
    """cpu_kernels.add_lifting_kernel_grad, float64 against einsum, added to what is there; in
    float32 the same bits in one call as in passes of images, and for 1-3 threads."""
    generator = torch.Generator().manual_seed(5)
    g_hat = _complex(generator, 3, 4, 2, 10, 6)  # [B, Cout, S, k1, k2]
    x_hat = _complex(generator, 3, 10, 6)  # [B, k1, k2]
    expected = torch.einsum("boskl,bkl->oskl", g_hat, x_hat.conj())
    torch.testing.assert_close(_kernel_grad(g_hat, x_hat), expected, rtol=1e-12, atol=1e-12)
    total = expected.clone()
    add_lifting_kernel_grad(g_hat, x_hat, total)
    torch.testing.assert_close(total, 2 * expected, rtol=1e-12, atol=1e-12)
    g32, x32 = g_hat.to(torch.complex64), x_hat.to(torch.complex64)
    whole = _kernel_grad(g32, x32)
    assert torch.equal(whole, _kernel_grad(g32, x32, ((0, 1), (1, 3))))
    assert torch.equal(whole, _kernel_grad(g32, x32, ((0, 2), (2, 3))))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(_kernel_grad(g32, x32))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(whole, other) for other in results)


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_threading_layer_follows_the_thread_count(threads):
    """numba's OpenMP layer kept a second core busy in one-thread training jobs (two jobs on two
    cores took twice as long): with one torch thread the kernels take the workqueue layer; with
    more, OpenMP where numba can load it (its workers answer between torch's parallel ops twice
    as fast), unless the user chose a layer. A fresh process: the layer is read when numba is
    imported."""
    code = (
        f"import torch; torch.set_num_threads({threads})\n"
        "from scalelearn.nn.cpu_kernels import channel_mix, _numba\n"
        "t = torch.ones(1, 2, 1, 3, dtype=torch.complex64)\n"
        "channel_mix(t, torch.ones(1, 1, 1, 4, 3, dtype=torch.complex64))\n"
        "print(_numba().threading_layer())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_THREADING_LAYER")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    if threads == 1:
        assert result.stdout.split()[-1] == "workqueue"
        return
    try:
        from numba.np.ufunc import omppool  # noqa: F401  (needs libgomp)
    except ImportError:
        pytest.skip("numba's OpenMP layer cannot load here")
    assert result.stdout.split()[-1] == "omp"


@pytest.mark.parametrize("case", ["a_k49_over_image", "b_sesn"])
def test_public_layers_match_dense_in_float32(case):
    layers = ((True, fast_conv.z2h_fast, z2h_dense), (False, fast_conv.h2h_fast, h2h_dense))
    for lifting, fast, dense in layers:
        args = layer_inputs(case, lifting, 2, torch.float32, seed=1)
        assert_all_close(conv_and_grads(fast, *args), conv_and_grads(dense, *args), rtol=2e-5)


def _layer(
    batch,
    cin,
    cout,
    size,
    scales,
    basis="hermite_a",
    eff=5,
    lifting=True,
    device="cpu",
    learned=False,
):
    """(x, weight, basis) placeholders of a layer shape, for the cost model only; `learned`: the
    basis of scales that require a gradient, as training with learned scales computes it."""
    x = torch.empty(batch, cin, *(() if lifting else (len(scales),)), size, size, device=device)
    weight = torch.empty(cout, cin, eff * eff, device=device)
    scales = torch.tensor(scales, device=device, requires_grad=learned)
    return x, weight, HermiteBasis(basis, eff).to(device)(scales)


@pytest.mark.parametrize("symmetric", [True, False], ids=["hermite", "asymmetric"])
def test_kernel_spectra_split_by_parity_match_dense(symmetric):
    """The fft method builds each function's spectrum as purely real or purely imaginary from
    the parity of its profiles (fast_conv._parity_split): Hermite profiles are exactly even or
    odd; profiles of neither parity (here, Hermite profiles with a random asymmetric part) must
    contribute both parts. Both against dense, float64, outputs and gradients (of the profiles
    too where they have no parity)."""
    from scalelearn.nn.hermite import ScaleBasis

    basis_args, scales, x, weight, grad_out = layer_inputs("b_sesn", False, 2, torch.float64)
    basis = HermiteBasis(*basis_args)(scales)
    profiles = basis.profiles.detach()
    count = basis.num_functions
    if symmetric:
        parts = fast_conv._parity_split(basis)
        assert sorted(parts[0].tolist() + parts[1].tolist()) == list(range(count))
        assert 0 < len(parts[1]) < count
    else:
        generator = torch.Generator().manual_seed(8)
        profiles = profiles + 0.1 * torch.rand(profiles.shape, generator=generator).double()
    # A basis is zero outside each scale's support (ScaleBasis.supports), as the layers assume.
    offsets = (torch.arange(profiles.shape[-1]) - profiles.shape[-1] // 2).abs()
    inside = offsets <= torch.tensor([n // 2 for n in basis.supports])[:, None, None]

    def layer(function, x, weight, profiles):
        basis_at = ScaleBasis(profiles * inside, basis.row_index, basis.col_index, basis.supports)
        return function(x, weight, basis_at)

    if not symmetric:
        asymmetric = layer(lambda x, weight, basis: basis, x, weight, profiles)
        assert all(len(part) == count for part in fast_conv._parity_split(asymmetric))

    results = []
    for function in (fast_conv._fft, h2h_dense):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, profiles)]
        y = layer(function, *leaves)
        # Even and odd profiles get their gradient along even and odd changes only: the
        # gradient of the scales (test_every_method_matches_dense_in_float64), not of every
        # profile value.
        leaves = leaves if not symmetric else leaves[:2]
        results.append((y, *torch.autograd.grad(y, leaves, grad_out)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def _is_smooth(n: int, primes) -> bool:
    for prime in primes:
        while n % prime == 0:
            n //= prime
    return n == 1


def test_fft_lengths():
    """The smallest fast length at least the padded size, never more than needed: 5-smooth (any);
    on the CPU even and 7-smooth (MKL's odd real transforms are slow); for the CPU lifting
    5-smooth, a multiple of 4 and not of 25."""
    assert [fast_conv._fft_size(n) for n in (26, 40, 193, 264, 132)] == [27, 40, 200, 270, 135]
    cpu = {n: fast_conv._fft_size(n, "cpu") for n in range(10, 400)}
    # SESN's H→H layers: 14 + 12 or 13 (conv3), 28 + 12, 13 or 14 (conv2).
    assert [cpu[n] for n in (26, 27, 40, 41, 42, 97)] == [28, 28, 40, 42, 42, 98]
    lifting = {n: fast_conv._fft_size(n, "cpu_lifting") for n in range(20, 400)}
    sizes = (26, 68, 90, 97, 132, 193, 229, 264)
    assert [lifting[n] for n in sizes] == [32, 72, 96, 108, 144, 216, 240, 288]
    for lengths, fast in [
        (cpu, lambda n: n % 2 == 0 and _is_smooth(n, (2, 3, 5, 7))),
        (lifting, lambda n: n % 4 == 0 and n % 25 != 0 and _is_smooth(n, (2, 3, 5))),
    ]:
        for size, length in lengths.items():
            assert fast(length) and length >= size
            assert all(lengths[n] == length for n in range(size, length + 1) if n in lengths)


def test_sesn_layers_take_even_lengths_per_run_of_scales_on_the_cpu():
    sesn = [1.5, 1.89, 2.38, 3.0]  # K 25: conv3 on 14² needs 14 + 12 -> 28, conv2 on 28² 40
    conv3 = _layer(32, 63, 95, 14, sesn, "hermite_b", 7, False)
    assert fast_conv._fft_rule(*conv3[:2]) == "cpu"
    assert fast_conv._fft_plan(conv3[2], 14, 14, "cpu")[0] == (28, 28)
    # Each scale's own support (13, 15, 19, 25): shorter transforms for the smaller scales.
    runs = fast_conv._fft_runs(conv3[2], 14, 14, "cpu")
    assert [(scales, lengths) for scales, lengths, _ in runs] == [
        ((0, 1), (20, 20)),
        ((1, 3), (24, 24)),
        ((3, 4), (28, 28)),
    ]
    assert [halves for _, _, halves in runs] == [(6, 6), (9, 9), (12, 12)]
    conv2 = _layer(32, 32, 63, 28, sesn, "hermite_b", 7, False)[2]
    assert [lengths for _, lengths, _ in fast_conv._fft_runs(conv2, 28, 28, "cpu")] == [
        (36, 36),
        (40, 40),
    ]
    # Off the CPU and for the CPU lifting, one run at the largest kernel's lengths.
    assert fast_conv._fft_runs(conv3[2], 14, 14, "any") == [((0, 4), (27, 27), (12, 12))]
    assert fast_conv._fft_rule(*_layer(32, 1, 32, 56, sesn, "hermite_b", 7)[:2]) == "cpu_lifting"
    x, weight = (t.to("meta") for t in conv3[:2])
    assert fast_conv._fft_rule(x, weight) == "any"  # off the CPU (CUDA): 27


def test_choice_follows_the_measured_winners(monkeypatch):
    """The cheapest method of the timings recorded next to the cost model in fast_conv, on the
    CPU they were measured on (AVX-512)."""
    monkeypatch.setattr(fast_conv, "_CPU_DIRECT", True)
    toy = [2.0, 3.4641, 6.0]  # E2, K 49
    sesn = [1.5, 1.89, 2.38, 3.0]
    quick = {13: [1.0, 1.2247, 1.5], 19: [1.0, 1.4565, 2.1213], 25: [1.0, 1.732, 3.0]}
    # Fixed scales (E1) on 168², batch 8: fft (toy training step, 2 threads, rows / fft: K 49
    # 54 / 45 ms, K 97 64 / 55; K 123 117.3 / 131.7 img/s, `bench`'s step).
    assert fast_conv._choose(*_layer(8, 1, 16, 168, toy)) == "fft"
    assert fast_conv._choose(*_layer(8, 1, 16, 168, [2.0, 4.899, 12.0])) == "fft"  # K 97
    assert fast_conv._choose(*_layer(8, 1, 16, 168, [2.0, 5.5, 15.12])) == "fft"  # K 123
    assert fast_conv._choose(*_layer(32, 1, 32, 56, sesn, "hermite_b", 7)) == "fft"
    assert fast_conv._choose(*_layer(8, 1, 16, 84, quick[25])) != "direct"
    assert fast_conv._choose(*_layer(32, 32, 63, 28, sesn, "hermite_b", 7, False)) == "fft"
    assert fast_conv._choose(*_layer(32, 63, 95, 14, sesn, "hermite_b", 7, False)) == "fft"
    # The quick preset's E1 (fixed scales, 84², batch 32): direct for the smallest kernels, fft
    # from K 19 to 49 (its training step with the fused head, 1 and 2 threads: fast_conv).
    assert fast_conv._choose(*_layer(32, 1, 16, 84, quick[13])) == "direct"
    for scales in (quick[19], quick[25], [1.0, 2.06, 4.24], [1.0, 2.449, 6.0]):
        assert fast_conv._choose(*_layer(32, 1, 16, 84, scales)) == "fft"
    # Learned scales: rows and separable also carry the gradient back through their row pass,
    # and fft wins (measured 1.2-1.35x faster than rows on the 84 canvas, 1.0-1.15x on 168).
    for scales, size, batch in ((quick[25], 84, 32), (quick[19], 84, 32), (toy, 168, 8)):
        assert fast_conv._choose(*_layer(batch, 1, 16, size, scales, learned=True)) == "fft"
    assert fast_conv._choose(*_layer(32, 1, 16, 84, quick[13], learned=True)) == "direct"
    # E3's worst case (ISR 6): σ_b 4 on 168 (K 193), σ_b 2 on 84 (K 97), batch 8; `bench`'s
    # training step, fft / rows: 83.1 / 58.0 and 361.1 / 266.8 img/s.
    for sigma, size in ((4.0, 168), (2.0, 84)):
        worst = [sigma, sigma * 6**0.5, sigma * 6]
        assert fast_conv._choose(*_layer(8, 1, 16, size, worst, learned=True)) == "fft"
    # Evaluation (no autograd) weighs the forward pass alone, where oneDNN's convolution is fast,
    # and the CPU lifting's fft is its fused head (whole evaluation calls, img/s, fast_conv).
    with torch.inference_mode():
        assert fast_conv._choose(*_layer(32, 1, 16, 84, quick[13])) == "direct"
        assert fast_conv._choose(*_layer(32, 1, 16, 84, [1.0, 2.06, 4.24])) == "separable"  # K 35
        # K 49 and above: fft ahead of rows (168², K 123 264.4 / 223.6, K 193 212.2 / 175.9;
        # 84², K 97 1099.1 / 740.3), and of separable on 168² at K 25 (404.3 / 373.0).
        assert fast_conv._choose(*_layer(32, 1, 16, 84, [2.0, 3.4641, 6.0])) == "fft"
        assert fast_conv._choose(*_layer(16, 1, 16, 168, [2.0, 2.4495, 3.0])) == "fft"
        for scales in (toy, [2.0, 5.5, 15.12], [4.0, 9.798, 24.0]):
            assert fast_conv._choose(*_layer(22, 1, 16, 168, scales)) == "fft"
        assert fast_conv._choose(*_layer(90, 1, 16, 84, [2.0, 4.899, 12.0])) == "fft"
        assert fast_conv._choose(*_layer(128, 32, 63, 28, sesn, "hermite_b", 7, False)) == "fft"
    # oneDNN is pathological for huge kernels: direct and separable are not considered for them,
    # unless the image crops the kernel small.
    assert not {"direct", "separable"} & set(fast_conv._costs(*_layer(1, 1, 1, 168, [2.0, 15.12])))
    assert {"direct", "separable"} <= set(fast_conv._costs(*_layer(1, 1, 1, 8, [2.0, 15.12])))


def test_avx2_cpus_do_not_take_onednns_convolution(monkeypatch):
    """On an AVX2-only CPU oneDNN's conv2d (`direct`) lost to every other method at the quick
    preset's smallest kernels, training and evaluation (fast_conv._direct_fitted): the choice
    there is the best of the others, which still run where the kernel fits."""
    assert fast_conv._direct_fitted("AVX512") and not fast_conv._direct_fitted("AVX2")
    assert not fast_conv._direct_fitted("DEFAULT")  # aarch64 and others: never timed
    assert fast_conv._CPU_DIRECT == fast_conv._direct_fitted(
        torch.backends.cpu.get_cpu_capability()
    )
    monkeypatch.setattr(fast_conv, "_CPU_DIRECT", False)
    k13 = _layer(32, 1, 16, 84, [1.0, 1.2247, 1.5])  # E1's ISR 1.5 on 84²
    k7 = _layer(32, 1, 16, 84, [0.5, 0.6124, 0.75])  # E3's σ_b 0.5, ISR 1.5
    for args in (k13, k7, _layer(1, 1, 1, 8, [2.0, 15.12])):
        assert set(fast_conv._costs(*args)) == {"fft", "rows", "separable"}
    for grad in (True, False):
        with torch.set_grad_enabled(grad):
            for args in (k13, k7, _layer(32, 1, 16, 84, [1.0, 1.2247, 1.5], learned=True)):
                assert fast_conv._choose(*args) != "direct"
    k35 = _layer(60, 1, 16, 84, [1.0, 2.0591, 4.24])  # E1's ISR 4.24: a per-scale test's call
    with torch.inference_mode():  # measured fastest there: 72 ms against 83 (fft) and 82 (rows)
        assert fast_conv._choose(*k13) == "separable"
        # and here `fft`: 256 images 638 ms against 908 (separable; _SEPARABLE_FORWARD_AVX2)
        assert fast_conv._choose(*k35) == "fft"
    # Off the CPU the capability plays no part.
    x, weight, basis = k13
    assert "direct" in fast_conv._costs(x.to("meta"), weight.to("meta"), basis)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_takes_fft_and_agrees_with_dense():
    """On a GPU every layer takes `fft` (measured fastest or within 5 % there; README "GPU")."""
    toy, sesn = [2.0, 3.4641, 6.0], [1.5, 1.89, 2.38, 3.0]
    for args in (
        _layer(8, 1, 16, 168, toy, device="cuda"),
        _layer(32, 32, 63, 28, sesn, "hermite_b", 7, False, device="cuda"),
    ):
        for grad in (True, False):
            with torch.set_grad_enabled(grad):
                assert fast_conv._choose(*args) == "fft"
    torch.manual_seed(0)
    x = torch.randn(2, 1, 30, 26, dtype=torch.float64, device="cuda")
    weight = torch.randn(4, 1, 25, dtype=torch.float64, device="cuda")
    basis = HermiteBasis("hermite_a", 5)(torch.tensor(toy, dtype=torch.float64, device="cuda"))
    torch.testing.assert_close(fast_conv.z2h_fast(x, weight, basis), z2h_dense(x, weight, basis))


def test_a_named_method_is_the_one_that_runs():
    """`_apply(..., method)` (what `bench --methods` times) runs that method, whatever the cost
    model picks: bit for bit its function's float32 output (the methods round differently)."""
    x, weight, basis = _layer(2, 1, 3, 20, [1.0, 1.6, 2.1], "hermite_b", 5)
    torch.manual_seed(0)
    x, weight = torch.randn_like(x), torch.randn_like(weight)
    outputs = {method: fast_conv._apply(x, weight, basis, method) for method in METHODS}
    for method in METHODS:
        assert torch.equal(outputs[method], fast_conv._METHODS[method](x, weight, basis)), method
        torch.testing.assert_close(outputs[method], outputs["direct"], rtol=1e-4, atol=1e-4)
    assert not torch.equal(outputs["fft"], outputs["rows"])  # else the check above proves little


def _model_pair(cfg):
    """The same network (same weights) with the fast and the dense layers, in float64."""
    torch.manual_seed(0)
    fast = build_model({**cfg, "implementation": "fast"}).double()
    dense = build_model({**cfg, "implementation": "dense"}).double()
    dense.load_state_dict(fast.state_dict())
    return fast, dense


@pytest.mark.parametrize(
    "cfg, size",
    [
        ({"name": "toy", "scale_mode": "single_ratio_squared", "learn_sigma_basis": True}, 40),
        ({"name": "sesn", "scale_mode": "single_ratio_squared", "learn_sigma_basis": True}, 28),
    ],
    ids=["toy", "sesn"],
)
def test_models_give_the_same_logits_and_gradients(cfg, size):
    fast, dense = _model_pair(cfg)
    # Smooth images: on white noise the smallest scale wins the max almost everywhere, and the
    # gradient of θ (which moves only the larger scales) would be nearly zero.
    coarse = torch.randn(
        3, 1, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    x = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear")
    logits, grads = [], []
    for model in (fast, dense):
        model.eval()  # no dropout draws; BatchNorm uses its (identical) running statistics
        out = model(x)
        out.square().sum().backward()
        logits.append(out)
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-9, atol=1e-12)
    assert grads[0].keys() == grads[1].keys()
    scale_keys = {"basis.internal_scales.sigma_basis", "basis.internal_scales.theta"}
    assert scale_keys <= grads[0].keys()
    assert grads[1]["basis.internal_scales.theta"].abs() > 1e-2
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "method, pass_bytes", [("fft", 1 << 40), ("fft", 1), ("rows", cpu_fft.PASS_BYTES)]
)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_toy_training_step_with_the_fused_head_equals_the_modules(
    method, pass_bytes, momentum, monkeypatch
):
    """In CPU training the fast toy model runs its head fused (`ToyModel._fused_head`: scale
    max, ReLU, batch statistics and pool in one pass, batch norm on the pooled values; with the
    `fft` lifting one autograd function, in one pass or image by image): the same logits,
    gradients and BatchNorm running statistics and step count as the dense model's modules, in
    float64, over two steps."""
    monkeypatch.setattr(fast_conv, "_choose", lambda x, weight, basis: method)
    monkeypatch.setattr(cpu_fft, "PASS_BYTES", pass_bytes)
    fast, dense = _model_pair({"name": "toy", "scale_mode": "single_ratio_squared"})
    generator = torch.Generator().manual_seed(6)
    with torch.no_grad():
        weight = torch.randn(16, generator=generator, dtype=torch.float64)  # both signs
        for model in (fast, dense):
            model.bn.momentum = momentum
            model.bn.weight.copy_(weight)
    coarse = torch.randn(3, 1, 6, 6, generator=generator, dtype=torch.float64)
    x = torch.nn.functional.interpolate(coarse, size=40, mode="bilinear")
    fused = []
    monkeypatch.setattr(
        fast, "_fused_head", lambda *a: fused.append(1) or type(fast)._fused_head(fast, *a)
    )
    assert_training_steps_agree(fast, dense, x)
    assert len(fused) == 2
    assert dense.bn.num_batches_tracked == 2


def assert_training_steps_agree(fast, dense, x, steps: int = 2, grad_atol: float | None = 1e-12):
    """`steps` training steps of two float64 models on x (loss: the logits' squares): the same
    logits, parameter gradients and buffers. grad_atol None: the gradients to 1e-9 of each one's
    largest element (sums of thousands of terms can leave elements near zero with the rounding
    of the large ones)."""
    for _ in range(steps):
        logits = []
        for model in (fast, dense):
            model.train()
            model.zero_grad()
            out = model(x)
            out.square().sum().backward()
            logits.append(out)
        torch.testing.assert_close(logits[0], logits[1], rtol=1e-9, atol=1e-12)
        parameters = zip(fast.named_parameters(), dense.named_parameters(), strict=True)
        for (name, a), (_, b) in parameters:
            if b.grad is not None:
                atol = 1e-9 * float(b.grad.abs().max()) if grad_atol is None else grad_atol
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=atol, msg=name)
        for (name, a), (_, b) in zip(fast.named_buffers(), dense.named_buffers(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


def test_sesn_training_step_on_the_cpu_equals_the_modules():
    """SESN's blocks in CPU training (bias, ReLU and pool fused, `SESNNet._conv_relu_pool`) and
    its H→H spectra: the fast model's logits, gradients and BatchNorm statistics equal the dense
    model's modules in float64 (dropout drawn alike)."""
    fast, dense = _model_pair({"name": "sesn", "scale_mode": "single_ratio_squared"})
    coarse = torch.randn(
        3, 1, 5, 5, generator=torch.Generator().manual_seed(9), dtype=torch.float64
    )
    x = torch.nn.functional.interpolate(coarse, size=28, mode="bilinear")
    logits = []
    for model in (fast, dense):
        model.train()
        torch.manual_seed(10)
        out = model(x)
        out.square().sum().backward()
        logits.append(out)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-9, atol=1e-12)
    for (name, a), (_, b) in zip(fast.named_parameters(), dense.named_parameters(), strict=True):
        if b.grad is None:
            assert a.grad is None, name
            continue
        # Biases before a batch norm get a gradient of rounding size: compared absolutely.
        scale = float(b.grad.abs().max()) if b.grad.abs().max() > 1e-9 else 1.0
        assert float((a.grad - b.grad).abs().max()) <= 1e-9 * scale, name
    for (name, a), (_, b) in zip(fast.named_buffers(), dense.named_buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


def _lifting_runs(generator, runs, dtype=torch.float64):
    """Kernels K̂ [Cout 3, S', k2, k1] and lengths of one run of two scales at L (15, 20), or of
    two runs (one scale at (15, 20), two at (16, 24)), as `fast_conv._fft_runs` makes them."""
    if runs == 1:
        return [_complex(generator, 3, 2, 11, 15, dtype=dtype)], [(15, 20)]
    kernels = [_complex(generator, 3, 1, 11, 15, dtype=dtype)]
    kernels.append(_complex(generator, 3, 2, 13, 16, dtype=dtype))
    return kernels, [(15, 20), (16, 24)]


@pytest.mark.parametrize("runs", [1, 2])
def test_lifting_with_the_head_equals_lifting_then_head(runs):
    """cpu_fft.lifting_pooled_relu_moments (the gradient written into the transforms' padded
    buffers, one per run of scales) against cpu_fft.lifting followed by
    cpu_kernels.pooled_relu_moments, float64."""
    from scalelearn.nn.cpu_kernels import pooled_relu_moments

    generator = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 12, 16, generator=generator, dtype=torch.float64)
    kernels, lengths = _lifting_runs(generator, runs)
    increasing = torch.tensor([True, False, True])
    grads = [torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)]
    grads += [torch.randn(3, generator=generator, dtype=torch.float64) for _ in range(2)]
    results = []
    for fused in (True, False):
        x_leaf = x.clone().requires_grad_(True)
        leaves = [x_leaf, *(kernel.clone().requires_grad_(True) for kernel in kernels)]
        if fused:
            outputs = cpu_fft.lifting_pooled_relu_moments(
                x_leaf, leaves[1:], lengths, increasing, 4, 4
            )
        else:
            y = cpu_fft.lifting(x_leaf, leaves[1:], lengths)
            outputs = pooled_relu_moments(y, increasing, 4, 4)
        torch.autograd.backward(outputs, grads)
        results.append((*outputs, *(leaf.grad for leaf in leaves)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _sesn_block_case(layer: str, runs: int, generator):
    """(x, kernels, lengths, the fused block, the layer alone) in float64: the lifting of one
    channel (`_lifting_runs`) or an H→H layer with one run of three scales at (15, 20) or runs
    at (14, 18) and (16, 24)."""
    if layer == "lifting":
        x = torch.randn(3, 1, 12, 16, generator=generator, dtype=torch.float64)
        kernels, lengths = _lifting_runs(generator, runs)
        return x, kernels, lengths, cpu_fft.lifting_bias_relu_pool, cpu_fft.lifting
    x = torch.randn(2, 3, 3, 9, 11, generator=generator, dtype=torch.float64)
    plan = [(3, (15, 20))] if runs == 1 else [(1, (14, 18)), (2, (16, 24))]
    kernels = [_complex(generator, s, h, w // 2 + 1, 3, 4) for s, (h, w) in plan]
    lengths = [run_lengths for _, run_lengths in plan]
    return x, kernels, lengths, cpu_fft.h2h_bias_relu_pool, cpu_fft.h2h


@pytest.mark.parametrize("layer", ["lifting", "h2h"])
@pytest.mark.parametrize("runs", [1, 2])
@pytest.mark.parametrize("learn", [True, False], ids=["all", "bias only"])
def test_layer_with_the_sesn_block_equals_layer_then_block(layer, runs, learn, monkeypatch):
    """cpu_fft's SESN blocks (bias, ReLU, 2×2 pool inside the layer's autograd function: the
    lifting image by image, the H→H layer reading each run's inverse transform in place; the
    gradient written into each run's padded buffer) against the layer followed by
    cpu_kernels.bias_relu_pool, float64: outputs and the gradients of x, the kernels and the
    bias (also where only the bias takes one), with one run of scales and with two."""
    from scalelearn.nn.cpu_kernels import bias_relu_pool

    monkeypatch.setattr(cpu_fft, "PASS_BYTES", 1)  # the lifting: one image per pass
    generator = torch.Generator().manual_seed(11)
    x, kernels, lengths, block, layer_alone = _sesn_block_case(layer, runs, generator)
    batch, channels, scales, height, width = layer_alone(x, kernels, lengths).shape
    bias = torch.randn(channels, generator=generator, dtype=torch.float64)
    grad_shape = (batch, channels, scales, height // 2, width // 2)
    grad = torch.randn(grad_shape, generator=generator, dtype=torch.float64)
    results = []
    for fused in (True, False):
        leaves = [x.clone().requires_grad_(learn), bias.clone().requires_grad_(True)]
        leaves += [kernel.clone().requires_grad_(learn) for kernel in kernels]
        if fused:
            out = block(leaves[0], leaves[2:], lengths, leaves[1])
        else:
            out = bias_relu_pool(layer_alone(leaves[0], leaves[2:], lengths), leaves[1])
        out.backward(grad)
        assert 0 < (out > 0).float().mean() < 1  # the ReLU cuts some
        results.append((out, *(leaf.grad for leaf in leaves)))
    for a, b in zip(*results, strict=True):
        if b is None:
            assert a is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("block", [False, True], ids=["h2h", "sesn block"])
@pytest.mark.parametrize("runs", [1, 2])
def test_h2h_of_kernel_factors_equals_h2h_of_their_product(block, runs):
    """cpu_fft.h2h given the factors of its kernel spectra (training: the backward conjugates and
    doubles the kernel's gradient on the factors) against h2h given their product K̂ =
    kernel_product(spectra, placed) under autograd, float64: outputs and the gradients of x,
    the spectra, placed and the bias; an even and an odd transform length along W (the paired
    bins differ)."""
    generator = torch.Generator().manual_seed(12)
    x = torch.randn(2, 3, 3, 9, 11, generator=generator, dtype=torch.float64)
    plan = [(3, (15, 20))] if runs == 1 else [(1, (14, 18)), (2, (16, 21))]
    factors = [
        (
            torch.randn(s, h, w // 2 + 1, 5, generator=generator, dtype=torch.float64),
            torch.randn(5, 3, 4, 2, generator=generator, dtype=torch.float64),
        )
        for s, (h, w) in plan
    ]
    lengths = [run_lengths for _, run_lengths in plan]
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    results = []
    for given in ("factors", "product"):
        leaves = [x.clone(), bias.clone(), *(t.clone() for pair in factors for t in pair)]
        leaves = [leaf.requires_grad_(True) for leaf in leaves]
        pairs = list(zip(leaves[2::2], leaves[3::2], strict=True))
        kernels = pairs if given == "factors" else [cpu_fft.kernel_product(*p) for p in pairs]
        if block:
            out = cpu_fft.h2h_bias_relu_pool(leaves[0], kernels, lengths, leaves[1])
        else:
            out = cpu_fft.h2h(leaves[0], kernels, lengths) + 0 * leaves[1].sum()
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(13)).double()
        results.append((out, *torch.autograd.grad(out, leaves, grad)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_lifting_runs_equal_one_run_at_the_largest_lengths():
    """A run of scales at its own, shorter lengths gives what the longest lengths give (the
    kernels of its scales are zero beyond their support): cpu_fft.lifting of a Hermite basis
    by runs against one run, outputs and gradients, float64."""
    basis = HermiteBasis("hermite_a", 5)(torch.tensor([1.0, 1.5, 3.0], dtype=torch.float64))
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(2, 1, 20, 24, generator=generator, dtype=torch.float64)
    weight = torch.randn(4, 1, 25, generator=generator, dtype=torch.float64)
    runs = fast_conv._fft_runs(basis, 20, 24, "cpu_lifting")
    assert len(runs) > 1
    grad = torch.randn(2, 4, 3, 20, 24, generator=generator, dtype=torch.float64)
    results = []
    for plan in (runs, [((0, 3), *fast_conv._fft_plan(basis, 20, 24, "cpu_lifting"))]):
        leaves = [x.clone().requires_grad_(True), weight.clone().requires_grad_(True)]
        y = cpu_fft.lifting(leaves[0], *fast_conv._lifting_spectra(leaves[1], basis, plan))
        results.append((y, *torch.autograd.grad(y, leaves, grad)))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_toy_heads_lift_in_runs_of_scales_where_that_saves_a_tenth():
    """The CPU lifting's heads transform each run of scales at its own lengths where the runs'
    spectra come to at most 0.9 of one run's (E3's worst case: 0.67), else in one run (E2:
    0.96); `_fft` itself, whose output is one tensor, always in one run."""
    worst = _layer(8, 1, 16, 168, [4.0, 4.0 * 6**0.5, 24.0])  # K 193
    runs = fast_conv._fft_runs(worst[2], 168, 168, "cpu_lifting")
    assert [(scales, lengths) for scales, lengths, _ in runs] == [
        ((0, 1), (192, 192)),
        ((1, 2), (216, 216)),
        ((2, 3), (288, 288)),
    ]
    assert len(fast_conv._joined_runs(worst[2], 168, 168, "cpu_lifting")) == 1
    e2 = _layer(8, 1, 16, 168, [2.0, 2.0 * 3**0.5, 6.0])[2]  # K 49: 180, 192, 192
    assert fast_conv._fft_runs(e2, 168, 168, "cpu_lifting") == [((0, 3), (192, 192), (24, 24))]


def _lifting_results(x, kernels, lengths, increasing, grads):
    """Outputs and gradients of the three cpu_fft liftings, float32."""
    results = []
    for name in ("lifting", "lifting_pooled_relu_moments"):
        x_leaf = x.clone().requires_grad_(True)
        leaves = [x_leaf, *(kernel.clone().requires_grad_(True) for kernel in kernels)]
        if name == "lifting":
            outputs = (cpu_fft.lifting(x_leaf, leaves[1:], lengths),)
            torch.autograd.backward(outputs, grads[0])
        else:
            outputs = cpu_fft.lifting_pooled_relu_moments(
                x_leaf, leaves[1:], lengths, increasing, 4, 4
            )
            torch.autograd.backward(outputs, grads[1:])
        results += [*outputs, *(leaf.grad for leaf in leaves)]
    with torch.inference_mode():
        results += cpu_fft.lifting_scale_max_pool(x, kernels, lengths, 4, 4)
    return results


@pytest.mark.parametrize("runs", [1, 2])
def test_lifting_pass_by_pass_gives_the_bits_of_one_pass(runs, monkeypatch):
    """cpu_fft transforms a batch a few images at a time (PASS_BYTES): the outputs and gradients
    of every lifting are the same bits for one pass, a pass per image and passes of two images
    (the last one short), and evaluation's passes, split by output channels where an image's
    spectrum exceeds PASS_BYTES, too (x's gradient to rounding); the evaluation head equals
    scale_max_pool of the lifting. With one run of scales and with two at different lengths."""
    from scalelearn.nn.cpu_kernels import scale_max_pool

    generator = torch.Generator().manual_seed(8)
    x = torch.randn(5, 1, 12, 16, generator=generator)
    kernels, lengths = _lifting_runs(generator, runs, torch.float32)
    increasing = torch.tensor([True, False, True])
    grads = [torch.randn(5, 3, 2 if runs == 1 else 3, 12, 16, generator=generator)]
    grads += [torch.randn(5, 3, 4, 4, generator=generator)]
    grads += [torch.randn(3, generator=generator) for _ in range(2)]
    spectrum = sum(kernel.numel() * kernel.element_size() for kernel in kernels)  # one image's
    results = {}
    for passes, size in (("one", 1 << 40), ("per image", 1), ("of two", 2 * spectrum)):
        monkeypatch.setattr(cpu_fft, "PASS_BYTES", size)
        assert len(cpu_fft._passes(5, kernels)) == {"one": 1, "per image": 5, "of two": 3}[passes]
        assert len(cpu_fft._channel_groups(kernels)) == (3 if passes == "per image" else 1)
        results[passes] = _lifting_results(x, kernels, lengths, increasing, grads)
    x_grads = (1, 5 + runs)  # x's gradient from `lifting` and from the fused head
    for passes in ("per image", "of two"):
        for index, (a, b) in enumerate(zip(results["one"], results[passes], strict=True)):
            if index in x_grads:
                # Through MKL's batched 2-D inverse transform, which rounds by batch size at
                # some lengths (16 × 24 here; 15 × 20 not). The networks' inputs take no gradient.
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
            else:
                assert torch.equal(a, b), (passes, index)
    y = results["one"][0]
    for a, b in zip(results["one"][-2:], scale_max_pool(y.detach(), 4, 4), strict=True):
        assert torch.equal(a, b)


def test_bench_json_smoke(capsys):
    main(["bench", "--config", "tiny", "--steps", "1", "--warmup", "0", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [row["implementation"] for row in rows] == ["fast", "dense"]
    for row in rows:
        assert row["config"] == "tiny" and row["steps"] == 1 and row["images_per_s"] > 0
        assert row["speedup"] > 0
        # Evaluation throughput and peak memory, training and evaluation (issue #9).
        assert row["eval_steps"] == 2 and row["eval_batch"] == 5 and row["eval_images_per_s"] > 0
        assert row["eval_chunk"] >= 1
        assert row["eval_over_train"] == pytest.approx(
            row["eval_images_per_s"] / row["images_per_s"]
        )
        for key in ("peak_mib", "eval_peak_mib", "peak_rss_mib", "eval_peak_rss_mib"):
            assert key in row
        if sys.platform.startswith("linux"):
            assert row["peak_rss_mib"] > 10 and row["eval_peak_rss_mib"] > 10


def test_bench_keeps_the_memory_call_out_of_the_times():
    # The call that measures peak memory starts with freed memory handed back to the OS and
    # runs beside the sampling thread: timing it would slow the median of two calls.
    calls = []

    def timed(implementation):
        calls.append(implementation)
        return float(len(calls))  # the n-th call takes n seconds

    times, peaks = bench._alternate({"fast": 2, "dense": 1}, timed, torch.device("cpu"))
    assert calls == ["fast", "dense", "fast", "dense", "fast"]
    assert times == {"fast": [3.0, 5.0], "dense": [4.0]}
    assert set(peaks) == {"fast", "dense"}


def test_bench_table_and_errors(capsys):
    main(["bench", "--config", "tiny", "--steps", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert "tiny" in out and "img/s" in out and "eval/s" in out and "RSS tr" in out
    with pytest.raises(ScalelearnError, match="unknown --config"):
        _run_bench(["--config", "nope"])
    with pytest.raises(ScalelearnError, match="CUDA"):
        _run_bench(["--config", "tiny", "--device", "cpu", "--bf16"])


def test_bench_batches_methods_and_profile(capsys):
    main(
        ["bench", "--config", "tiny", "--steps", "1", "--warmup", "0", "--batch", "3"]
        + ["--eval-batch", "4", "--json"]
    )
    rows = json.loads(capsys.readouterr().out)
    assert {(row["batch"], row["eval_batch"]) for row in rows} == {(3, 4)}

    # --methods: every method the cost model considers, on every layer, at the training batch;
    # exactly one chosen per layer and mode, and it is the cost model's choice.
    main(["bench", "--config", "tiny", "--methods", "--batch", "3", "--json"])
    rows = json.loads(capsys.readouterr().out)
    model = build_model({**bench.CONFIGS["tiny"]["model"], "implementation": "fast"})
    x = torch.zeros(3, *bench.CONFIGS["tiny"]["input"])
    with torch.no_grad():
        basis = model.conv.basis()
    costs = fast_conv._costs(x, model.conv.weight, basis)
    assert {row["layer"] for row in rows} == {"conv"}
    assert {row["method"] for row in rows} == set(costs)
    for row in rows:
        assert row["shape"] == [3, 1, 24, 24] and row["train_ms"] > 0 and row["eval_ms"] > 0
    for mode, grad in (("train", True), ("eval", False)):
        chosen = [row["method"] for row in rows if row[f"chosen_{mode}"]]
        with torch.set_grad_enabled(grad):  # training's basis carries the learned scales' gradient
            assert chosen == [fast_conv._choose(x, model.conv.weight, model.conv.basis())]
    main(["bench", "--config", "tiny", "--methods", "--batch", "3"])
    out = capsys.readouterr().out
    assert "chosen" in out and "fastest" in out and "tiny" in out

    main(["bench", "--config", "tiny", "--profile", "--batch", "2"])
    out = capsys.readouterr().out
    assert "== tiny, train" in out and "== tiny, eval" in out and "aten::" in out


def test_bench_methods_reports_the_choice_of_training_with_learned_scales(capsys):
    """`bench --methods` marks the method training takes: with learned scales (e3_toy_worst_84,
    K 97) their gradient through the row pass counts, and `fft` is chosen where a basis without a
    gradient would make the cost model pick `rows`; evaluation (forward only, the fused head)
    takes `fft`."""
    config = bench.CONFIGS["e3_toy_worst_84"]
    main(["bench", "--config", "e3_toy_worst_84", "--methods", "--batch", "8", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [row["method"] for row in rows if row["chosen_train"]] == ["fft"]
    assert [row["method"] for row in rows if row["chosen_eval"]] == ["fft"]
    model = build_model({**config["model"], "implementation": "fast"})
    with torch.no_grad():
        basis = model.conv.basis()
    x = torch.zeros(8, *config["input"])
    assert fast_conv._choose(x, model.conv.weight, basis) == "rows"  # else this proves little


def test_bench_deterministic_takes_the_settings_of_training(capsys, fresh_determinism):
    """--deterministic: torch's deterministic algorithms (errors, not warnings, on the CPU) without
    the NaN fill of new tensors, as `scalelearn train` runs; --methods and --profile exclude each
    other."""
    from scalelearn.cli import build_parser

    main(["bench", "--config", "tiny", "--steps", "1", "--eval-steps", "0", "--deterministic"])
    assert "tiny" in capsys.readouterr().out
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.utils.deterministic.fill_uninitialized_memory is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--methods", "--profile"])
    assert "not allowed with argument" in capsys.readouterr().err


def _extent(image: np.ndarray) -> int:
    """Side of the smallest box holding every nonzero pixel of a uint8 image [H, W]."""
    rows, cols = np.nonzero(image)
    return max(rows.max() - rows.min(), cols.max() - cols.min()) + 1


@pytest.mark.parametrize("name", ["e2_toy_84", "e5_sesn"])
def test_bench_inputs_are_digits_rendered_as_the_datasets_are(name):
    """bench's default inputs are what training sees (issue #9: the CPU's scale max is data-
    dependent): MNIST digits on a zero background, as big as the protocol makes them (84 canvas:
    14 px digits times a scale in [1, b], b = 4.76; MNIST-Scale: 28 px times [0.3, 1]),
    normalised to mean 0 and std 1, with their true labels; `noise` keeps normal pixels."""
    from scalelearn.data.mnist import load_embedded

    spec = {**bench.CONFIGS[name], "batch": 6, "eval_batch": 10}
    images, labels, eval_images, raw = bench._batches(spec, torch.device("cpu"), seed=3)
    assert images.shape == (6, *spec["input"]) and eval_images.shape == (10, *spec["input"])
    assert raw.dtype == torch.uint8 and raw.shape == images.shape
    every = torch.cat([images, eval_images])
    assert abs(float(every.mean())) < 1e-4 and float(every.std()) == pytest.approx(1, abs=1e-4)
    # The normalisation keeps the order of the grey levels: background (0) is the minimum.
    assert torch.equal(images == images.amin(), raw == 0)
    extents = [_extent(image[0].numpy()) for image in raw]
    digit = 14 if name == "e2_toy_84" else 28
    largest = digit * (bench.BENCH_WIDTH if name == "e2_toy_84" else 1.0)
    assert all(4 <= e <= largest + 3 for e in extents), extents
    assert max(extents) > 0.5 * largest  # not all drawn at the smallest scale
    assert float((raw == 0).float().mean()) > 0.4  # mostly background, as digits are
    # Each image is a distinct digit of the pool, with that digit's label.
    _, drawn_labels, index = bench._digit_images(spec, 16, np.random.default_rng(3))
    assert len(set(index.tolist())) == 16
    assert torch.equal(labels, drawn_labels[:6])
    assert np.array_equal(drawn_labels.numpy(), load_embedded()[1][index])
    again = bench._batches(spec, torch.device("cpu"), seed=3)
    assert torch.equal(again[0], images) and torch.equal(again[1], labels)

    noise = bench._batches(spec, torch.device("cpu"), seed=3, inputs="noise")[0]
    assert float((noise == noise.amin()).float().mean()) < 0.01  # no background


def test_bench_without_the_embedded_digits_names_the_noise_option(monkeypatch, tmp_path):
    from scalelearn.data import mnist

    monkeypatch.setattr(mnist, "embedded_path", lambda: tmp_path / "mnist_5k.csv.gz")
    with pytest.raises(ScalelearnError, match="is missing.*--inputs noise"):
        bench._batches(bench.CONFIGS["tiny"], torch.device("cpu"), seed=0)
    assert bench._batches(bench.CONFIGS["tiny"], torch.device("cpu"), 0, "noise")[0].shape[0] == 2


def _run_bench(argv):
    """The bench verb's function, without main()'s conversion of errors into an exit."""
    from scalelearn.cli import build_parser

    args = build_parser().parse_args(["bench", *argv])
    args.func(args)


def test_kernels_taller_than_the_image_train_without_crashing():
    """oneDNN's conv2d corrupts the heap when a kernel is taller than its (implicitly padded)
    input: the toy model on a 36 px image with K 73 aborted with `munmap_chunk(): invalid
    pointer` in its first training step. In a subprocess, so that a crash fails this test only."""
    script = (
        "import torch, torch.nn.functional as F\n"
        "from scalelearn.nn.models import build_model\n"
        "torch.set_num_threads(2)\n"
        "m = build_model({'name': 'toy', 'scale_mode': 'single_ratio_squared',\n"
        "                 'learn_sigma_basis': True, 'sigma_basis': 1.5, 'isr': 6.0})\n"
        "x = torch.randn(8, 1, 36, 36, generator=torch.Generator().manual_seed(0))\n"
        "assert m.basis().kernel_size == 73\n"
        "for _ in range(3):\n"
        "    F.cross_entropy(m(x), torch.arange(8)).backward()\n"
        "m.eval()\n"
        "with torch.inference_mode():\n"
        "    m(torch.randn(7, 1, 36, 36))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
