"""Fast scale-equivariant convolutions: the same numbers as `z2h_dense` / `h2h_dense` (SPEC §4).

The filter at scale s is κ_s = Σ_f W[…, f] · basis[f, s]. Three exact ways to apply it; `_choose`
picks one per call from a cost estimate:
- direct: per scale, one conv2d with κ_s cropped to its support n_s (values outside are exactly
  zero) and to the image (offsets beyond ±(H−1) never meet a pixel); padding = the crop's half size.
- fft: circular convolution over (H, W) at lengths L ≥ H + K//2, long enough that no wrap-around
  reaches the H×W outputs; on the CPU each run of scales at the lengths its own supports need
  (`_fft_runs`). Every basis function is separable, so its 2-D spectrum is the outer product of
  two 1-D spectra of its profiles; the channel sum is a matmul per frequency. On the CPU the
  lifting of one channel and the H→H layers are each one autograd function with its gradient
  written out (`cpu_fft.lifting`, `cpu_fft.h2h`).
- rows: the rows (H axis) directly with every profile, then the columns (W axis) by a 1-D FFT
  whose per-frequency matmul also mixes the channels. It wins where Cin·P is small next to Cout
  (the toy model's lifting layer): the 2-D inverse FFT of every output map is the costly step of
  `fft`, and here only a 1-D one is left. On the CPU the channel mix reads and writes the FFT's
  layout (`cpu_kernels.channel_mix`, numba); elsewhere it is a batched matmul between layout
  copies.
- separable: the rows directly as in `rows`, then the columns directly too: one conv2d per scale
  with 1×(2w+1) kernels that also mix the channels. No transform and no transposing copy; it wins
  where the kernels are small and the image is not (the toy model's evaluation, and its training
  with fixed scales at moderate K on the 84 canvas).
In CPU training and evaluation of the toy model, the `fft` lifting runs over each image's ink
window instead of the canvas where that saves transforms (`windows`, `_windowed`).
In evaluation, `reuse_kernels()` keeps every layer's weight-dependent kernel (cropped kernels,
spectra) across calls while the weights and scales stay the same, and `working_bytes` estimates
the memory of one call, from which evaluation chooses how many images go through at once.
All keep the dense path's convention: cross-correlation as F.conv2d, basis[f, s, u, v] with u along
H and v along W, zero padding, stride 1. Gradients reach x, the weights and the profiles (hence the
scales) through autograd.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalelearn.nn import windows
from scalelearn.nn.cpu_fft import (
    h2h,
    h2h_bias_relu_pool,
    images_per_pass,
    kernel_product,
    lifting,
    lifting_bias_relu_pool,
    lifting_pooled_relu_moments,
    lifting_scale_max_pool,
)
from scalelearn.nn.cpu_kernels import (
    bias_relu_pool,
    channel_mix,
    pooled_relu_moments,
    scale_max_pool,
    transposed,
)
from scalelearn.nn.hermite import ScaleBasis

# --------------------------------------------------------------------------------------- helpers


def _scale_input(x: Tensor, scale: int) -> Tensor:
    """The input seen at one scale: x itself for Z2→H ([B, Cin, H, W]), x[:, :, s] for H→H."""
    return x if x.dim() == 4 else x[:, :, scale]


def _half_sizes(basis: ScaleBasis, height: int, width: int) -> list[tuple[int, int]]:
    """Half size (rows, cols) of every scale's kernel, cropped to its support and to the image."""
    return [(min(n // 2, height - 1), min(n // 2, width - 1)) for n in basis.supports]


def _crop(profiles: Tensor, half: int) -> Tensor:
    """Profiles [..., K] centred at K//2 -> offsets −half … half: [..., 2·half + 1]."""
    centre = profiles.shape[-1] // 2
    return profiles[..., centre - half : centre + half + 1]


def _conv2d(x: Tensor, kernel: Tensor, padding: tuple[int, int], groups: int = 1) -> Tensor:
    """F.conv2d with zero padding, padded explicitly where the kernel is taller or wider than the
    image: oneDNN's CPU convolution corrupts the heap there (`free(): invalid size`, then a
    crash; toy model, 36 px image, K 73 cropped to 71 rows), and the cropped kernels of the
    direct and the rows method reach 2·H − 1."""
    height, width = x.shape[-2:]
    if kernel.shape[-2] <= height and kernel.shape[-1] <= width:
        return F.conv2d(x, kernel, padding=padding, groups=groups)
    x = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    return F.conv2d(x, kernel, groups=groups)


def _fft_size(minimum: int, rule: str = "any") -> int:
    """Smallest n ≥ minimum that is a fast FFT length under `rule` (`_fft_rule`):

    - any (cuFFT; `rows`' transforms along W): prime factors 2, 3 and 5;
    - cpu (`fft` on the CPU but for the lifting below: SESN's H→H layers): even, prime factors 2,
      3, 5 and 7. MKL's real transforms of odd lengths take up to twice as long here (r2c / c2r
      of maps shaped as SESN's conv3 output, [32, 95, 4, 14, 14], 2 threads, ms: 27 19.5 / 21.7,
      28 8.6 / 21.0; as conv2's, [32, 63, 4, 28, 28]: 45 34.7 / 44.8, 42 20.6 / 31.8), and a
      factor 7 makes a smaller spectrum than the next even 5-smooth length (41 -> 42, not 48).
      Whole steps, old and new lengths alternating: `e5_sesn` (K 27) training -11 %, evaluation
      -15 % (1 thread -12 / -16 %), fixed scales at K 29 -10 / -12 %, at K 25 -5 / -11 % (README
      "Throughput"). Where a spectral product over channels dominates, a much larger spectrum
      costs more than it saves (27 -> 32: `e5_sesn` 64.7 -> 61.6 img/s);
    - cpu_lifting (the CPU lifting of one channel, `cpu_fft`, where a call is its transforms):
      prime factors 2, 3 and 5, a multiple of 4 and not of 25. MKL's transforms of the other
      lengths cost more per element here; lifting forward / gradient transform per image of the
      toy model, ms, 2 threads: 270 3.38 / 2.12 against 288 3.37 / 1.51, 200 1.67 / 1.10 against
      216 1.62 / 0.85, 135 1.02 / 0.96 against 144 0.62 / 0.37 (README "Throughput").
    """
    primes = (2, 3, 5, 7) if rule == "cpu" else (2, 3, 5)
    n = minimum
    while True:
        rest = n
        for prime in primes:
            while rest % prime == 0:
                rest //= prime
        fast = rest == 1
        if rule == "cpu":
            fast = fast and n % 2 == 0
        elif rule == "cpu_lifting":
            fast = fast and n % 4 == 0 and n % 25 != 0
        if fast:
            return n
        n += 1


def _profile_spectrum(profiles: Tensor, half: int, length: int, real: bool) -> Tensor:
    """conj(DFT) of profiles [S, P, K] at `length`, offset m stored at index m mod length.

    -> [S, P, length] (fft) or [S, P, length//2 + 1] (rfft). A cross-correlation
    y[h] = Σ_m x[h+m]·g[m] is Y = X·conj(G) in Fourier space.
    """
    segment = _crop(profiles, half)
    gap = segment.new_zeros(*segment.shape[:-1], length - 2 * half - 1)
    circular = torch.cat([segment[..., half:], gap, segment[..., :half]], dim=-1)
    return (torch.fft.rfft(circular) if real else torch.fft.fft(circular)).conj()


class _BatchedMatmul(torch.autograd.Function):
    """torch.bmm whose backward makes the incoming gradient contiguous and resolved first.

    The gradient that reaches the spectral products is a permuted view, sometimes with the
    conjugate bit set; complex bmm on such operands falls back to one copy per matrix (13k copies
    and ~3× the time in SESN's H→H layers, measured).
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        ctx.save_for_backward(a, b)
        return torch.bmm(a, b)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b = ctx.saved_tensors
        grad = grad.resolve_conj()
        # On the CPU `_fft`'s gradient arrives as a view of [B, Cout, S·k1·k2]: transposed in tiles.
        natural = grad.permute(1, 2, 0)
        if grad.device.type == "cpu" and not grad.is_contiguous() and natural.is_contiguous():
            grad = transposed(natural.reshape(-1, len(grad))).view(grad.shape)
        grad = grad.contiguous()
        grad_a = torch.bmm(grad, b.mH) if ctx.needs_input_grad[0] else None
        grad_b = torch.bmm(a.mH, grad) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b


def _bmm(a: Tensor, b: Tensor) -> Tensor:
    """Batched matmul of [N, n, k] and [N, k, m], both made contiguous (a strided batch also
    falls back to one copy per matrix)."""
    return _BatchedMatmul.apply(a.contiguous(), b.contiguous())


# ------------------------------------------------------------------------------- kernel reuse

# {(kind, id(weight), shapes): (weight, weight version, profiles, kernel)} inside reuse_kernels().
_kernel_cache: dict | None = None


@contextlib.contextmanager
def reuse_kernels():
    """Within the block, each layer's kernel (the weight-dependent part of every method) is
    computed once and reused while its weight (same tensor, same version), its basis profiles
    and its shapes stay the same. For evaluation only: nothing is cached while autograd records,
    so the cached tensors never carry a graph."""
    global _kernel_cache
    previous, _kernel_cache = _kernel_cache, {}
    try:
        yield
    finally:
        _kernel_cache = previous


def _reused(compute, weight: Tensor, basis: ScaleBasis, *shapes) -> Tensor:
    """compute(weight, basis, *shapes), or the kernel kept for the same (compute, weight,
    profiles, shapes)."""
    # Only parameters are kept: a converted copy (float64 tests) is a new tensor on every call.
    if _kernel_cache is None or torch.is_grad_enabled() or not isinstance(weight, nn.Parameter):
        return compute(weight, basis, *shapes)
    key = (compute.__name__, id(weight), shapes)
    kept = _kernel_cache.get(key)
    if (
        kept is not None
        and kept[0] is weight
        and kept[1] == weight._version
        and kept[2].shape == basis.profiles.shape
        and torch.equal(kept[2], basis.profiles)
    ):
        return kept[3]
    kernel = compute(weight, basis, *shapes)
    _kernel_cache[key] = (weight, weight._version, basis.profiles, kernel)
    return kernel


# ---------------------------------------------------------------------------------------- direct


def _cropped_kernel(weight: Tensor, basis: ScaleBasis, scale: int, half: tuple[int, int]) -> Tensor:
    """κ_scale cropped to offsets ±half: weight [Cout, Cin, F] -> [Cout, Cin, 2h+1, 2w+1]."""
    rows = _crop(basis.profiles[scale, basis.row_index], half[0])  # [F, 2h+1]
    cols = _crop(basis.profiles[scale, basis.col_index], half[1])  # [F, 2w+1]
    functions = rows[:, :, None] * cols[:, None, :]
    out_channels, in_channels, count = weight.shape
    kernel = weight.reshape(-1, count) @ functions.reshape(count, -1)
    return kernel.view(out_channels, in_channels, *functions.shape[1:])


def _direct(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """One conv2d per scale with the cropped kernel -> [B, Cout, S, H, W]."""
    halves = _half_sizes(basis, *x.shape[-2:])
    kernels = [_reused(_cropped_kernel, weight, basis, s, half) for s, half in enumerate(halves)]
    ys = [
        _conv2d(_scale_input(x, s), kernel, half)
        for s, (kernel, half) in enumerate(zip(kernels, halves, strict=True))
    ]
    return torch.stack(ys, dim=2)


# ------------------------------------------------------------------------------------------- fft


def _fft_plan(basis: ScaleBasis, height: int, width: int, rule: str = "any"):
    """-> (lengths (L_H, L_W), halves (h, w)): the largest kernel's half sizes, cropped to the
    image; L ≥ size + half keeps the wrap-around of the circular convolution off the outputs;
    the lengths are fast ones under `rule` (`_fft_size`)."""
    halves = (min(basis.kernel_size // 2, height - 1), min(basis.kernel_size // 2, width - 1))
    sizes = (height + halves[0], width + halves[1])
    return tuple(_fft_size(size, rule) for size in sizes), halves


def _fft_runs(basis: ScaleBasis, height: int, width: int, rule: str = "any"):
    """-> [((first, stop), lengths, halves)]: the scales first ≤ s < stop whose transforms run
    together, at their lengths and half sizes. On the CPU, each run of consecutive scales whose
    own kernels (cropped to their supports, `hermite.supports`) need the same lengths: a small
    scale's circular convolution needs shorter transforms than the largest kernel's.
    - rule "cpu" (SESN's H→H layers): conv3 at 14², K 25, supports 13 / 15 / 19 / 25: lengths
      20, 24, 24, 28 instead of 28 for all four, 0.75 of the spectrum; conv2 at 28² 0.91.
      `e5_sesn`, one process alternating (2 threads, 2026-11-27): training steps 475-501 ->
      417-432 ms, evaluation of 256 images 1.27-1.46 -> 1.16-1.25 s.
    - rule "cpu_lifting" (the toy model's heads, `_cpu_fft_lifting`): where the runs' spectra
      come to at most _LIFTING_RUNS_SHARE of one run's. Toy steps / evaluation calls of 256
      images alternating (2 threads, ms): E3's worst case (168², K 193, σ 4 / 9.8 / 24:
      lengths 192, 216, 288, 0.67 of the spectrum) 110-131 -> 77-87 / 1211-1442 -> 881-1172;
      at 84² (K 97, 96 / 108 / 144) 23-25 -> 20 / 237-290 -> 187-202; `e2_toy_84` (0.86) 19-23
      -> 16-20 / 178-332 -> 176-190; `e2_toy` at K 51 (180 / 192 / 216, 0.83) 61-77 -> 55-78 /
      704-956 -> 674-956, a tie; at K 49 (180 / 192 / 192) 0.96.
    Otherwise (rule "any": CUDA, one call per layer) one run at `_fft_plan`'s lengths."""
    if rule == "any":
        return _whole_run(basis, height, width, rule)
    runs = []
    for scale, half in enumerate(_half_sizes(basis, height, width)):
        lengths = (_fft_size(height + half[0], rule), _fft_size(width + half[1], rule))
        if runs and runs[-1][1] == lengths:
            (first, _), _, widest = runs[-1]
            runs[-1] = ((first, scale + 1), lengths, tuple(map(max, widest, half)))
        else:
            runs.append(((scale, scale + 1), lengths, half))
    if rule == "cpu_lifting":
        whole = _whole_run(basis, height, width, rule)
        if _spectrum(runs) > _LIFTING_RUNS_SHARE * _spectrum(whole):
            return whole
    return runs


# The CPU lifting splits its scales into runs where that leaves at most this share of the
# spectrum (`_fft_runs`): each run adds its own transform calls, kernel gradient and head pass.
_LIFTING_RUNS_SHARE = 0.9


def _spectrum(runs) -> int:
    """The bins of one image's spectrum, for one channel, over every run."""
    return sum((stop - first) * h * (w // 2 + 1) for (first, stop), (h, w), _ in runs)


def _whole_run(basis: ScaleBasis, height: int, width: int, rule: str):
    """[((0, S), lengths, halves)]: every scale in one run, at `_fft_plan`'s lengths."""
    return [((0, basis.profiles.shape[0]), *_fft_plan(basis, height, width, rule))]


def _joined_runs(basis: ScaleBasis, height: int, width: int, rule: str):
    """The runs of `_fft`, whose output is one tensor: `_fft_runs`, but one run for the CPU
    lifting, where joining the runs' outputs took about what the shorter transforms saved
    (SESN's lifting, `e5_sesn` alternating, 2 threads: training +2-3 %, evaluation +2 %). The toy
    model's heads and SESN's first block read each run's output in place (`_cpu_fft_lifting`)."""
    if rule == "cpu_lifting":
        return _whole_run(basis, height, width, rule)
    return _fft_runs(basis, height, width, rule)


def _function_spectra(weight: Tensor, basis: ScaleBasis, lengths, halves, scales=None):
    """The 1-D spectra of every basis function's row and column profile at the scales first ≤
    s < stop (default: all), in weight's dtype: -> (rows [S, F, L_H], cols [S, F, L_W//2 + 1])."""
    first, stop = scales or (0, basis.profiles.shape[0])
    profiles = basis.profiles[first:stop].to(weight.dtype)
    rows = _profile_spectrum(profiles, halves[0], lengths[0], real=False)[:, basis.row_index]
    cols = _profile_spectrum(profiles, halves[1], lengths[1], real=True)[:, basis.col_index]
    return rows, cols


def _parity_split(basis: ScaleBasis) -> tuple[Tensor, Tensor]:
    """-> (the functions whose spectrum has a real part, those whose spectrum has an imaginary
    part), as indices.

    A profile even about its centre has a real spectrum, an odd one an imaginary spectrum, and a
    separable function's spectrum is the product of its two profiles': real where their
    parities agree, imaginary where they differ. Hermite profiles are exactly even or odd (by
    their order; read off the values here, at every scale), so each function falls in one part
    and each part's matmul runs over half the functions. A profile of neither parity puts its
    functions in both. The profiles' gradient is then exact along even (odd) changes of an even
    (odd) profile, which is every change the scales make to Hermite profiles."""
    profiles = basis.profiles.detach()
    mirrored = profiles.flip(-1)
    even = (mirrored == profiles).all(-1).all(0)  # [P]
    odd = (mirrored == -profiles).all(-1).all(0)
    rows, cols = basis.row_index, basis.col_index
    real = (even[rows] & even[cols]) | (odd[rows] & odd[cols])
    imaginary = (even[rows] & odd[cols]) | (odd[rows] & even[cols])
    return (~imaginary).nonzero().flatten(), (~real).nonzero().flatten()


def _kernel_spectrum(weight: Tensor, basis: ScaleBasis, lengths, halves, scales) -> Tensor:
    """weight [Cout, Cin, F] -> kernel spectra [S', L_H, L_W//2 + 1, Cin, Cout] (complex) of the
    scales first ≤ s < stop (S' of them): on the CPU the product of `_kernel_factors`."""
    if weight.device.type == "cpu":
        return kernel_product(*_kernel_factors(weight, basis, lengths, halves, scales))
    # Both parts of every function in one matmul, then (real, imag) moved last.
    functions = _function_products(weight, basis, lengths, halves, scales)
    out_channels, in_channels, count = weight.shape
    parts = torch.view_as_real(functions).transpose(-1, -2).reshape(-1, count)
    spectrum = parts @ weight.reshape(-1, count).T
    spectrum = spectrum.view(*functions.shape[:3], 2, out_channels, in_channels)
    return torch.view_as_complex(spectrum.permute(0, 1, 2, 5, 4, 3).contiguous())


def _function_products(weight: Tensor, basis: ScaleBasis, lengths, halves, scales) -> Tensor:
    """The 2-D spectra of every basis function at the scales first ≤ s < stop -> [S', L_H,
    L_W//2 + 1, F] (complex)."""
    rows, cols = _function_spectra(weight, basis, lengths, halves, scales)
    return rows.transpose(1, 2)[:, :, None] * cols.transpose(1, 2)[:, None]


def _kernel_factors(weight: Tensor, basis: ScaleBasis, lengths, halves, scales):
    """The CPU's kernel spectra as two factors (`cpu_fft.kernel_product`): weight [Cout, Cin, F]
    -> (spectra [S', L_H, L_W//2 + 1, F] (real), placed [F, Cin, Cout, 2]).

    Their one real matmul writes the spectra interleaved (real, imaginary) in the [Cin, Cout]
    layout of the batched product: the spectra's inner axis holds each function's real or
    imaginary spectrum (`_parity_split`), and the weights sit in the real or the imaginary slot
    of placed to match (zeros in the other). The transposing copy into that layout that CUDA
    still makes took longer than the matmul on the CPU (SESN's conv3: 24 ms forward, 16 backward
    per step); measured against it, 45 against 70 ms forward and backward for conv3, 33 against
    53 for conv2. (On CUDA the copy is cheap, and reading the parities would wait for the GPU.)
    `cpu_fft.h2h` takes the factors in training: its backward folds the conjugation and doubling
    of the kernel's gradient into them."""
    functions = _function_products(weight, basis, lengths, halves, scales)
    out_channels, in_channels, count = weight.shape
    real, imaginary = _parity_split(basis)
    spectra = torch.cat([functions.real[..., real], functions.imag[..., imaginary]], dim=-1)
    per_function = weight.permute(2, 1, 0).reshape(count, -1)  # [F, Cin·Cout]
    in_real, in_imaginary = per_function[real], per_function[imaginary]
    placed = torch.stack(  # [F_real + F_imaginary, Cin·Cout, 2]
        [
            torch.cat([in_real, torch.zeros_like(in_imaginary)]),
            torch.cat([torch.zeros_like(in_real), in_imaginary]),
        ],
        dim=-1,
    )
    return spectra, placed.view(-1, in_channels, out_channels, 2)


def _lifting_spectrum(weight: Tensor, basis: ScaleBasis, lengths, halves, scales) -> Tensor:
    """weight [Cout, 1, F] -> kernel spectra [Cout, S', L_W//2 + 1, L_H] (complex) of the scales
    first ≤ s < stop, the layout of `cpu_fft.lifting` (the H frequencies last)."""
    rows, cols = _function_spectra(weight, basis, lengths, halves, scales)
    # [S, F, L_H] and [S, F, k2] -> [F, S, k2, L_H]
    functions = cols.transpose(0, 1)[..., None] * rows.transpose(0, 1)[:, :, None]
    count = weight.shape[-1]
    spectrum = weight.reshape(-1, count) @ torch.view_as_real(functions).reshape(count, -1)
    return torch.view_as_complex(spectrum.view(weight.shape[0], *functions.shape[1:], 2))


def _lifting_spectra(weight: Tensor, basis: ScaleBasis, runs) -> tuple[list, list]:
    """-> (kernels, lengths) of `cpu_fft.lifting`, one of each per run of scales."""
    kernels = [_reused(_lifting_spectrum, weight, basis, *run[1:], run[0]) for run in runs]
    return kernels, [lengths for _, lengths, _ in runs]


def _h2h_spectra(weight: Tensor, basis: ScaleBasis, runs) -> tuple[list, list]:
    """-> (kernels, lengths) of `cpu_fft.h2h`, one of each per run of scales: the factors of
    the kernel spectra where autograd records (training), else the spectra (kept across
    evaluation's chunks, `reuse_kernels`)."""
    if torch.is_grad_enabled():
        kernels = [_kernel_factors(weight, basis, *run[1:], run[0]) for run in runs]
    else:
        kernels = [_reused(_kernel_spectrum, weight, basis, *run[1:], run[0]) for run in runs]
    return kernels, [lengths for _, lengths, _ in runs]


def _cpu_lifting(x: Tensor, weight: Tensor) -> bool:
    """Whether `fft` runs as `cpu_fft.lifting`: one input channel, lifted, on the CPU."""
    return x.device.type == "cpu" and x.dim() == 4 and weight.shape[1] == 1


def _fft_rule(x: Tensor, weight: Tensor) -> str:
    """The rule of `fft`'s transform lengths for this call (`_fft_size`)."""
    if _cpu_lifting(x, weight):
        return "cpu_lifting"
    return "cpu" if x.device.type == "cpu" else "any"


def _fft(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """2-D FFT convolution -> [B, Cout, S, H, W], run by run of scales (`_fft_runs`)."""
    height, width = x.shape[-2:]
    rule = _fft_rule(x, weight)
    runs = _joined_runs(basis, height, width, rule)
    if rule == "cpu_lifting":
        return lifting(x, *_lifting_spectra(weight, basis, runs))
    if rule == "cpu" and x.dim() == 5:
        return h2h(x, *_h2h_spectra(weight, basis, runs))
    ys = [_fft_run(x, weight, basis, *run) for run in runs]
    return ys[0] if len(ys) == 1 else torch.cat(ys, dim=2)


def _fft_run(x: Tensor, weight: Tensor, basis: ScaleBasis, scales, lengths, halves) -> Tensor:
    """The scales first ≤ s < stop of `_fft` at these lengths -> [B, Cout, stop − first, H, W]."""
    height, width = x.shape[-2:]
    spectrum = _reused(_kernel_spectrum, weight, basis, lengths, halves, scales)
    num_scales, k1, k2, in_channels, out_channels = spectrum.shape  # [S', k1, k2, Cin, Cout]
    if x.dim() == 5:
        x = x[:, :, scales[0] : scales[1]]
    x_hat = torch.fft.rfft2(x, s=lengths)  # [B, Cin, (S',) k1, k2]
    batch = x.shape[0]
    if x.dim() == 4 and in_channels == 1:
        # Lifting a single channel: a broadcast product (a matmul with inner size 1 is slower).
        y_hat = x_hat[:, :, None] * spectrum[..., 0, :].permute(3, 0, 1, 2)
    else:
        if x.dim() == 4:
            x_hat = x_hat[:, :, None].expand(-1, -1, num_scales, -1, -1)
        x_hat = x_hat.permute(2, 3, 4, 0, 1).reshape(-1, batch, in_channels)
        y_hat = _bmm(x_hat, spectrum.reshape(-1, in_channels, out_channels))
        y_hat = y_hat.view(num_scales, k1, k2, batch, out_channels).permute(3, 4, 0, 1, 2)
    return torch.fft.irfft2(y_hat, s=lengths)[..., :height, :width]


# ------------------------------------------------------------------------------------------ rows


def _frequency_last(t: Tensor) -> Tensor:
    """[S, k, C, B, H] -> contiguous [S, C, B, H, k], the layout of the inverse FFT along W, in
    two copies that each read and write in long runs: whole rows of H first, then a 2-D
    transpose of every small [k, H] plane."""
    return t.permute(0, 2, 3, 1, 4).contiguous().transpose(-1, -2).contiguous()


def _frequency_first(t: Tensor) -> Tensor:
    """[S, C, B, H, k] -> contiguous [S, k, C, B, H]: the inverse of `_frequency_last`."""
    return t.transpose(-1, -2).contiguous().permute(0, 3, 1, 2, 4).contiguous()


class _FrequencyLast(torch.autograd.Function):
    """`_frequency_last`, whose backward is `_frequency_first` (autograd's own would make the
    gradient contiguous in one slow permuted copy)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        return _frequency_last(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _frequency_first(grad.resolve_conj())


def _row_pass(x: Tensor, profiles: Tensor, scale: int, half: int) -> Tensor:
    """Every input channel at one scale convolved along H with every profile of that scale,
    cropped to ±half: [B, Cin, (S,) H, W] -> [B, Cin·P, H, W], channel i·P + p."""
    in_channels = x.shape[1]
    kernels = _crop(profiles[scale], half).repeat(in_channels, 1)[:, None, :, None]
    return _conv2d(_scale_input(x, scale), kernels, (half, 0), groups=in_channels)


def _placed_weight(weight: Tensor, basis: ScaleBasis) -> Tensor:
    """W[o, i, f] placed at the row profile of f: [Cout, Cin, P, F], zero where row(f) ≠ p."""
    out_channels, in_channels, count = weight.shape
    placed = weight.new_zeros(out_channels, in_channels, basis.profiles.shape[1], count)
    placed[:, :, basis.row_index, torch.arange(count, device=weight.device)] = weight
    return placed


def _rows(x: Tensor, weight: Tensor, basis: ScaleBasis, crop: bool = True) -> Tensor:
    """Rows directly, columns by a 1-D FFT -> [B, Cout, S, H, W] (a view of a padded buffer;
    on the CPU with crop False, that buffer [B, Cout, S, H, L ≥ W] itself).

    z = every input channel convolved along H with every profile p: [S, B, Cin·P, H, W]; then
    y[o] = Σ_(i,p) T[o, i, p] ⋆_W z[i, p] with T[o, i, p] = Σ_(f: row(f) = p) W[o, i, f]·col(f),
    a channel mix [Cout, Cin·P] per scale and frequency of the W axis: on the CPU in the FFT's
    layout (`channel_mix`), elsewhere as a batched matmul.
    """
    height, width = x.shape[-2:]
    profiles = basis.profiles.to(weight.dtype)
    z = [
        _row_pass(x, profiles, s, half)
        for s, (half, _) in enumerate(_half_sizes(basis, height, width))
    ]
    half_w = min(basis.kernel_size // 2, width - 1)
    length = _fft_size(width + half_w)
    z_hat = torch.fft.rfft(torch.stack(z), n=length)  # [S, B, Cin·P, H, k]
    mixed = _reused(_rows_kernel, weight, basis, half_w, length)  # [S, Cout, Cin·P, k]
    if x.device.type == "cpu":
        # [B, Cout, S, H, k]: the output's own layout, which the head's kernels read in place.
        y = torch.fft.irfft(channel_mix(mixed, z_hat), n=length)
        return y[..., :width] if crop else y
    y = torch.fft.irfft(_matmul_mix(mixed, z_hat), n=length)  # [S, Cout, B, H, length]
    return y[..., :width].permute(2, 1, 0, 3, 4)


def _matmul_mix(mixed: Tensor, z_hat: Tensor) -> Tensor:
    """`channel_mix` as one batched matmul per (scale, frequency): mixed [S, Cout, J, k],
    z_hat [S, B, J, H, k] -> [S, Cout, B, H, k] (a view where no copy is needed)."""
    num_scales, out_channels, mixed_channels, bins = mixed.shape
    batch, height = z_hat.shape[1], z_hat.shape[3]
    a = mixed.permute(0, 3, 1, 2).reshape(num_scales * bins, out_channels, mixed_channels)
    b = z_hat.permute(0, 4, 2, 1, 3).reshape(num_scales * bins, mixed_channels, batch * height)
    y_hat = _bmm(a, b).view(num_scales, bins, out_channels, batch, height)
    # The inverse FFT needs the frequency axis last. A single permuted copy reads across
    # Cout·B·H complex numbers per step; where that stride is a multiple of 4 KiB every read
    # falls into the same cache set (a quarter of the toy model's CPU evaluation at K 49, before
    # `channel_mix`): there, two copies in long runs instead.
    if y_hat.stride(1) * y_hat.element_size() % 4096 == 0:
        return _FrequencyLast.apply(y_hat)
    return y_hat.permute(0, 2, 3, 4, 1)


def _rows_kernel(weight: Tensor, basis: ScaleBasis, half_w: int, length: int) -> Tensor:
    """T of `_rows` in Fourier space along W: weight [Cout, Cin, F] -> [S, Cout, Cin·P, k]."""
    out_channels, _, count = weight.shape
    num_scales = basis.profiles.shape[0]
    profiles = basis.profiles.to(weight.dtype)
    cols = _profile_spectrum(profiles, half_w, length, real=True)[:, basis.col_index]  # [S, F, k]
    bins = cols.shape[-1]
    placed = _placed_weight(weight, basis).reshape(-1, count)  # [Cout·Cin·P, F]
    mixed = placed @ torch.view_as_real(cols).transpose(0, 1).reshape(count, -1)
    mixed = torch.view_as_complex(mixed.view(out_channels, -1, num_scales, bins, 2))
    return mixed.permute(2, 0, 1, 3).contiguous()


# ------------------------------------------------------------------------------------ separable


def _separable_kernels(weight: Tensor, basis: ScaleBasis, halves) -> list[Tensor]:
    """The column kernels of `_separable`: weight [Cout, Cin, F] -> [Cout, Cin·P, 1, 2w_s + 1]
    per scale s, T[o, i·P + p, 0, v] = Σ_(f: row(f) = p) W[o, i, f]·col_f[v]."""
    out_channels, _, count = weight.shape
    profiles = basis.profiles.to(weight.dtype)
    placed = _placed_weight(weight, basis).reshape(-1, count)  # [Cout·Cin·P, F]
    return [
        (placed @ _crop(profiles[s, basis.col_index], half_w)).view(
            out_channels, -1, 1, 2 * half_w + 1
        )
        for s, (_, half_w) in enumerate(halves)
    ]


def _separable(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """Rows and columns directly -> [B, Cout, S, H, W]: per scale the row pass of `rows`
    ([B, Cin·P, H, W]), then one conv2d with the 1×(2w+1) kernels T that also mixes the channels."""
    halves = tuple(_half_sizes(basis, *x.shape[-2:]))
    profiles = basis.profiles.to(weight.dtype)
    kernels = _reused(_separable_kernels, weight, basis, halves)
    ys = [
        _conv2d(_row_pass(x, profiles, s, half_h), kernel, (0, half_w))
        for s, (kernel, (half_h, half_w)) in enumerate(zip(kernels, halves, strict=True))
    ]
    return torch.stack(ys, dim=2)


# -------------------------------------------------------------------------------------- choosing


# Cost model, fitted to forward + backward times measured on the 2-core CPU this project runs on
# (ms, min of 3, idle machine, malloc reusing freed memory as in training; direct / fft / rows):
#   toy lifting, B 8, 1→16, 168², hermite_a, K 49 (E2)        611 /   72 /   74
#   toy lifting, K 193 (E3, σ_b 4, ISR 6)                          – /  143 /  124
#   toy lifting, 84² (quick preset), K 25                       34 /   15 /   15
#   toy lifting, 84², K 97                                         – /   39 /   30
#   SESN lifting, B 32, 1→32, 56², hermite_b, K 25              96 /   78 /  112
#   SESN H→H, B 32, 32→63, 28²                                 2058 /  178 / 1433
#   SESN H→H, B 32, 63→95, 14²                                 1564 /  201 /  768
# Units are ns per multiply-accumulate (MAC) or per FFT "point·log2(length)". `direct`'s constant
# was 0.035 until 2026-11-27, when it moved to its measured share (toy training step, 84², batch
# 32, K 13: 40 ms with 2 threads against 46.9 estimated); its forward share rose with it, so its
# evaluation estimates stayed the same.
_NS_PER_CONV_MAC = 0.030
_NS_PER_FFT2_POINT = 0.34
# `rows` was fitted with the matmul channel mix and its layout copies. Its CPU mix without them
# (`channel_mix`, 2026-11-26 evening) took 30 % off its training time with one thread (toy
# lifting, 84², batch 32, fixed scales: K 25 83-85 -> 55-59 ms, K 49 96 -> 69-70 ms; learned
# scales K 25 107-111 -> 82 ms, `fft` 80-87) and little with two (K 25 46-51 -> 46-49 ms,
# `separable` 44-46), and not its evaluation time: the choices stay those measured, and the
# constants too (the estimates now sit closest to `rows`' one-thread times).
# The lifting of one channel on the CPU (`cpu_fft.lifting`, 2026-11-26 evening) took 0.64-0.69x
# the time of the torch.fft chain these constants were fitted to (2 threads, forward + backward:
# toy K 49 168² B 8 83 -> 57 ms, SESN lifting 56² B 32 109 -> 74 ms). With learned scales it is
# now ahead of `rows` where measured (toy K 193 168² B 8: 117 / 142 ms; K 97 84² B 8: 32 / 41;
# K 25 84² B 32, 1 thread: 91 / 128), but not of `direct` at K 13 (84² B 32: 55 / 28 ms): its
# estimate is scaled by this share there, which ranks all of these as measured.
# In evaluation (forward only) the same share ranks the lifting as measured (B 8, 2 threads, fft /
# rows ms: K 49 168² 24.4 / 27.4, K 193 53.4 / 44.8, K 123 39.2 / 35.4, K 97 84² 12.8 / 12.5; K 25
# 84² separable 4.5 / fft 4.4, kept). Training with fixed scales took the share too on
# 2026-11-27, when the toy model's fused head (training step with `lifting_pooled_relu_moments`)
# had made `fft` the fastest from K 19 (toy training steps, 84², batch 32, ms, 2 threads / 1
# thread; direct, separable, rows, fft): K 13 40 / 83, 51 / 98, 62 / 116, 53 / 103; K 19 95 / 167,
# 61 / 114, 57 / 115, 38 / 83; K 25 -, 71 / 134, 55 / 110, 45 / 80; K 35 -, 78 / 158, 69 / 131,
# 54 / 117; K 49 -, -, 70 / 133, 58 / 103; 168², batch 8, 2 threads, rows / fft: K 49 54 / 45,
# K 97 64 / 55, K 123 72 / 70. The share ranks all of these as measured (K 123 a tie), and the
# learned-scale and evaluation choices above stay.
# With the lifting's own FFT lengths (`_fft_size`, 2026-11-27; 0.78 and `_FORWARD_SHARE` before)
# whole training steps and evaluation calls of 256 images (`scalelearn bench`'s, each method
# forced, 2 threads, img/s, training / evaluation; fft, rows): E3's worst case (168², B 8,
# K 193, L 288) 83.1 / 212.2, 58.0 / 175.9; at 84² (K 97, L 144) 361.1 / 1099.1, 266.8 / 740.3;
# E2 (K 51, L 216) 161.3 / 350.4, 94.8 / 246.0; E1's K 123 (168², L 240) 131.7 / 264.4, 117.3 /
# 223.6. Evaluation by `fft` on the CPU runs the fused head (`cpu_fft.lifting_scale_max_pool`),
# hence its own forward share. Against the other methods (evaluation, B 32 at 84², 8 at 168²;
# direct / separable / fft): 84² K 13 2140 / 1822 / 2225 (1 thread 1104-1144 / - / 884-939),
# K 19 1685 / 1694 / 1782, K 25 1390 / 1633 / 1570, K 35 983 / 1589 / 1221; 168² K 25 263 / 373
# / 404; SESN's lifting (the whole network's evaluation, direct / fft) 178-179 / 181-190; and
# training at 84², K 13, 1 thread, direct 365-392 / fft 395-408. The ties go either way.
_CPU_LIFTING_FFT_SHARE = 0.68
_CPU_LIFTING_FORWARD_SHARE = 0.27
_NS_PER_FFT1_POINT = 0.5  # 1-D transforms along W, plus the channel mix's layout around them
_NS_PER_COMPLEX_MAC = 0.25
_NS_PER_KERNEL_MAC = 0.085
# Without autograd (evaluation) a call is only the forward pass, whose share of the time differs
# by method: oneDNN's forward convolution is fast and its weight gradient slow. Forward-only times
# (ms per image, min of 3, inference_mode, kernels reused; direct / fft / rows): toy K 49
# 5.98 / 3.19 / 3.13, 84² K 25 0.46 / 0.59 / 0.56, 84² K 49 1.30 / 0.70 / 0.67, SESN lifting
# (B 128) 0.59 / 0.82 / 1.05, SESN H→H 28² 14.1 / 1.11 / 14.3; these factors scale the costs above.
# `separable` forward: 0.014 ns per column-pass MAC (toy lifting, K 13-35, 84² B 64: 0.32-0.39 ms
# per image, 168² B 16: 1.6-1.8 ms, 2 threads).
_FORWARD_SHARE = {"direct": 0.134, "fft": 0.33, "rows": 0.35, "separable": 0.175}
# oneDNN's CPU conv2d falls off a cliff for large kernels (1→48 channels on 168², forward per
# image: 57×57 0.02 s, 59×59 6.7 s, 123×123 24 s; 0.74 s for 123×123 with oneDNN off), so `direct`
# is only considered up to this kernel side.
_DIRECT_MAX_SIDE = 57


def _direct_fitted(capability: str) -> bool:
    """Whether `direct` is considered on a CPU of this PyTorch capability
    (`torch.backends.cpu.get_cpu_capability()`): only AVX-512, the Xeon its constants were fitted
    on. On an AVX2-only CPU (AMD EPYC, Zen 3, 2026-11-27) oneDNN's conv2d lost everywhere it was
    timed (toy lifting, 84², batch 32, fixed scales, 1 thread, ms, forward + backward / forward;
    direct, separable, fft, rows): K 7 143 / 27, 55 / 27, 152 / 77, 123 / 55; K 13 511 / 111,
    119 / 72, 145 / 83, 168 / 82; K 19 642 / 147, 169 / 89, 160 / 65, 111 / 76; whole training
    steps at K 13 487 against 172-207 ms, evaluation of 256 images 951 against 580-729 ms. The
    quick preset's E1 runs at K 13 took 350 s there, those at larger kernels 124-151 s."""
    return capability.startswith("AVX512")


_CPU_DIRECT = _direct_fitted(torch.backends.cpu.get_cpu_capability())

# `separable`'s column pass is oneDNN's conv2d too, and in evaluation on that AVX2 CPU it ran
# further behind `fft` than the Xeon's constants say: whole evaluation calls of 256 images (toy,
# 84², fixed scales, 1 thread, 2026-11-27, ms; fft / rows / separable) K 13 566 / 638 / 514,
# K 19 585 / 572 / 705, K 25 666 / 590 / 830, K 35 638 / 727 / 908, K 49 775 / 830 / -: 1.3-1.5x
# the estimates' separable / fft. Its forward estimate is scaled by this factor off AVX-512,
# which puts `separable` first at K 13 and `fft` from K 19 (rows' small lead at K 19 and 25 is
# within the noise). Training steps (116 / 123 ms for separable / fft at K 13, 179 / 139 at
# K 19, 226 / 179 at K 35) were ranked so already.
_SEPARABLE_FORWARD_AVX2 = 1.4

# `separable`, ns per MAC of its column pass (B·H·W·Cout·Cin·P·Σ_s K_s). Whole calls of the toy
# lifting (fixed scales, forward + backward, 2 threads, the row pass and the stack included):
# 84² B 32 K 13 / 19 / 25 / 35 25 / 32 / 45 / 52 ms, 168² B 8 K 25 56 ms, 0.043-0.063 ns per
# MAC; the constant sits above that because the other methods' estimates run about 1.5x above
# their own times at these shapes (rows: 61-71 estimated, 41-53 ms measured), and the ranking is
# what matters. The column conv2d itself runs at 0.0055 ns per MAC forward up to K 41 (0.015 from
# K 43, where oneDNN changes algorithm), its weight gradient ~6x slower; the gradient of its
# input (learned scales) adds 0.026-0.03.
_NS_PER_SEPARABLE_MAC = 0.08
_NS_PER_SEPARABLE_INPUT_MAC = 0.03
_SEPARABLE_MAX_SIDE = 41


def _costs(x: Tensor, weight: Tensor, basis: ScaleBasis, backward: bool = True) -> dict[str, float]:
    """Estimated time (ns) of every method for this call: forward + backward, or only forward.

    The backward pass of `rows` and `separable` also carries the gradient back through their
    row pass where x or the profiles (learned scales) need one, which `fft` and `direct` get
    almost for free (measured: the toy lifting with learned scales took `rows` 1.27-1.44x its
    time with fixed ones, `fft` 1.0-1.11x).
    """
    batch, in_channels, height, width = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    out_channels, _, count = weight.shape
    scales, profiles = basis.profiles.shape[:2]
    learned = basis.profiles.requires_grad
    sides = [(2 * h + 1, 2 * w + 1) for h, w in _half_sizes(basis, height, width)]
    costs = {}
    direct = _CPU_DIRECT or x.device.type != "cpu"
    if direct and max(max(side) for side in sides) <= _DIRECT_MAX_SIDE:
        macs = batch * height * width * in_channels * out_channels * sum(a * b for a, b in sides)
        costs["direct"] = _NS_PER_CONV_MAC * macs

    lifting = _cpu_lifting(x, weight)
    costs["fft"] = 0.0
    # The toy model's heads lift by `_fft_runs`, a little faster than this estimate.
    for (first, stop), (length_h, length_w), _ in _joined_runs(
        basis, height, width, _fft_rule(x, weight)
    ):
        run = stop - first
        area, bins = length_h * length_w, length_h * (length_w // 2 + 1)
        maps = batch * (in_channels * (run if x.dim() == 5 else 1) + out_channels * run)
        costs["fft"] += (
            _NS_PER_FFT2_POINT * maps * area * math.log2(area)
            + _NS_PER_COMPLEX_MAC * batch * in_channels * out_channels * run * bins
            + _NS_PER_KERNEL_MAC * in_channels * out_channels * count * run * bins
        )
    if lifting:
        costs["fft"] *= _CPU_LIFTING_FFT_SHARE
    length_w = _fft_plan(basis, height, width)[0][1]  # `rows`' transforms along W
    mix = scales * (length_w // 2 + 1) * out_channels * in_channels * profiles * batch * height

    def rows_pass(lines: int) -> float:
        """`lines` rows of length L_W through a 1-D FFT, plus one channel mix."""
        return _NS_PER_FFT1_POINT * lines * length_w * math.log2(length_w) + (
            _NS_PER_COMPLEX_MAC * mix
        )

    costs["rows"] = rows_pass(batch * scales * (in_channels * profiles + out_channels) * height)
    column_macs = batch * height * width * out_channels * in_channels * profiles
    column_macs *= sum(side for _, side in sides)
    if max(side for _, side in sides) <= _SEPARABLE_MAX_SIDE:
        costs["separable"] = _NS_PER_SEPARABLE_MAC * column_macs
    if not backward:
        shares = dict(_FORWARD_SHARE)
        if lifting:
            shares["fft"] = _CPU_LIFTING_FORWARD_SHARE
        if not direct:
            shares["separable"] *= _SEPARABLE_FORWARD_AVX2
        return {method: cost * shares[method] for method, cost in costs.items()}
    if x.requires_grad or learned:
        # The gradient of the row pass's output: its spectrum, a second channel mix, and a
        # second FFT of Cin·P maps per scale (rows); the transposed column convolution (separable).
        costs["rows"] += rows_pass(batch * scales * in_channels * profiles * height)
        if "separable" in costs:
            costs["separable"] += _NS_PER_SEPARABLE_INPUT_MAC * column_macs
    return costs


def working_bytes(x: Tensor, weight: Tensor, basis: ScaleBasis, method: str | None = None) -> int:
    """Upper bound of the memory one forward call holds at once (its intermediates and output,
    without autograd's saved tensors), in bytes, for the method `_choose` picks (or `method`).

    The sum of every intermediate's size: the methods free some before others exist, so the
    true peak is lower. Used to bound evaluation memory (scalelearn.nn.evaluation).
    """
    method = method or _choose(x, weight, basis)
    batch, in_channels, height, width = x.shape[0], x.shape[1], x.shape[-2], x.shape[-1]
    out_channels = weight.shape[0]
    scales, profiles = basis.profiles.shape[:2]
    inputs = scales if x.dim() == 5 else 1
    real = max(x.element_size(), 4)  # the spectral methods run in float32 at least
    complex_ = 2 * real
    outputs = batch * out_channels * scales * height * width
    if method == "direct":
        return 2 * outputs * real  # the per-scale outputs and their stack
    if method == "separable":  # one scale's row pass, the per-scale outputs and their stack
        return (batch * in_channels * profiles * height * width + 2 * outputs) * real
    rule = _fft_rule(x, weight) if method == "fft" else "any"  # `rows`: its lengths along W
    (length_h, length_w), _ = _fft_plan(basis, height, width, rule)
    if rule == "cpu_lifting":
        # x̂, the output, and one pass's ŷ, its inverse along H, that inverse's copy for the one
        # along W, and the pass's output (copied into the whole one where there are passes), at
        # the largest kernel's lengths (runs of smaller scales, `_fft_runs`, hold less).
        spectrum = out_channels * scales * length_h * (length_w // 2 + 1) * complex_
        output = out_channels * scales * height * length_w * real
        x_hat = spectrum // (out_channels * scales)
        step = images_per_pass(batch, spectrum)
        return batch * (x_hat + output) + step * (3 * spectrum + output)
    if method == "fft":
        # At the largest kernel's lengths: runs of smaller scales (`_fft_runs`) hold less.
        bins = length_h * (length_w // 2 + 1)
        x_hat = batch * in_channels * max(inputs, scales) * bins * complex_
        y_hat = batch * out_channels * scales * bins * complex_
        # x̂ and its batched layout, ŷ, its layout for the inverse FFT and the one inside it,
        # and where scales run apart, their outputs' concatenation.
        concatenated = outputs * real if len(_joined_runs(basis, height, width, rule)) > 1 else 0
        inverse = batch * out_channels * scales * length_h * length_w * real
        return 2 * x_hat + 3 * y_hat + inverse + concatenated
    bins = length_w // 2 + 1
    z = batch * scales * in_channels * profiles * height * width * real
    z_hat = batch * scales * in_channels * profiles * height * bins * complex_
    y_hat = batch * scales * out_channels * height * bins * complex_
    # z and its stack, ẑ, ŷ, the padded inverse; off the CPU the matmul's layouts of ẑ and ŷ.
    layouts = 1 if x.device.type == "cpu" else 2
    inverse = batch * out_channels * scales * height * length_w * real
    return 2 * z + layouts * (z_hat + y_hat) + inverse


def _choose(x: Tensor, weight: Tensor, basis: ScaleBasis) -> str:
    """The method with the smallest estimated cost, forward + backward where autograd records,
    else forward only (a pure function of the device type, the shapes, the grad mode and whether
    x and the profiles require a gradient, never of the thread count, so the choice, and with it
    the rounding, is the same on every run of a config).

    On a GPU, `fft`: timed on an H200 (`scalelearn bench --methods --device cuda`, batch 8 and
    128, every layer of every bench config), it was the fastest method or within 5 % of it for
    every layer, training and evaluation; the CPU cost model picked `rows` for the toy model
    there, up to 2.9x slower (README "GPU")."""
    if x.device.type == "cuda":
        return "fft"
    costs = _costs(x, weight, basis, backward=torch.is_grad_enabled())
    return min(costs, key=costs.get)


_METHODS = {"direct": _direct, "fft": _fft, "rows": _rows, "separable": _separable}


def _spectral_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype of every method but `direct`: float32 at least, outside autocast. cuFFT has no
    bfloat16, and bfloat16 spectra (or separable's bfloat16 passes) would lose the agreement with
    dense."""
    return torch.promote_types(torch.promote_types(x.dtype, weight.dtype), torch.float32)


def _apply(
    x: Tensor, weight: Tensor, basis: ScaleBasis, method: str | None = None, **options
) -> Tensor:
    """One call by `method` (default: `_choose`'s; `scalelearn bench --methods` times each), with
    that method's `options` (`_rows`' crop)."""
    method = method or _choose(x, weight, basis)
    if method == "direct":
        return _direct(x, weight, basis, **options)
    dtype = _spectral_dtype(x, weight)
    with torch.autocast(x.device.type, enabled=False):
        return _METHODS[method](x.to(dtype), weight.to(dtype), basis, **options)


def _cpu_fft_lifting(x: Tensor, weight: Tensor, basis: ScaleBasis, method: str):
    """(x, kernels K̂, lengths) for the lifting's heads in `cpu_fft` (the toy model's, SESN's
    first block), in the spectral dtype, a kernel and lengths per run of scales (`_fft_runs`),
    where `method` (the cost model's pick) is `fft` for a lifting on the CPU, else None."""
    if method != "fft" or not _cpu_lifting(x, weight):
        return None
    dtype = _spectral_dtype(x, weight)
    runs = _fft_runs(basis, *x.shape[-2:], "cpu_lifting")
    return x.to(dtype), *_lifting_spectra(weight.to(dtype), basis, runs)


def _cpu_fft_h2h(x: Tensor, weight: Tensor, basis: ScaleBasis, method: str):
    """(x, kernels, lengths) for `cpu_fft`'s H→H functions, in the spectral dtype, per run of
    scales (`_fft_runs`, `_h2h_spectra`), where `method` (the cost model's pick) is `fft` for an
    H→H layer on the CPU, else None."""
    if method != "fft" or _fft_rule(x, weight) != "cpu" or x.dim() != 5:
        return None
    dtype = _spectral_dtype(x, weight)
    runs = _fft_runs(basis, *x.shape[-2:], "cpu")
    return x.to(dtype), *_h2h_spectra(weight.to(dtype), basis, runs)


def z2h_fast_pooled(x: Tensor, weight: Tensor, basis: ScaleBasis, increasing: Tensor, rows, cols):
    """`z2h_fast`, then `cpu_kernels.pooled_relu_moments` (CPU): x [B, 1, H, W] -> (pooled [B,
    Cout, rows, cols], mean [Cout], variance [Cout]) of relu(max over the scales of the
    lifting), the toy model's training head up to batch norm. Where `fft` lifts on the CPU, the
    two are one autograd function (`cpu_fft.lifting_pooled_relu_moments`), whose backward writes
    the gradient straight into the transform's zero-padded input; where the images' ink lies on
    a constant background in windows small enough, the windows are lifted instead (`windows`)."""
    method = _choose(x, weight, basis)
    with torch.autocast("cpu", enabled=False):
        if method == "fft" and _cpu_lifting(x, weight) and not x.requires_grad:
            head = windows.pooled_relu_moments
            windowed = _windowed(x, weight, basis, head, increasing, rows, cols)
            if windowed is not None:
                return windowed
        plan = _cpu_fft_lifting(x, weight, basis, method)
        if plan is not None:
            return lifting_pooled_relu_moments(*plan, increasing, rows, cols)
    if method == "rows":
        # The head takes the inverse transform's padded rows whole, and its backward writes the
        # zero-padded gradient: no crop, whose backward would fill and copy it again.
        padded = _apply(x, weight, basis, method, crop=False)
        return pooled_relu_moments(padded, increasing, rows, cols, width=x.shape[-1])
    return pooled_relu_moments(_apply(x, weight, basis, method), increasing, rows, cols)


def _windowed(x: Tensor, weight: Tensor, basis: ScaleBasis, head, *options):
    """head (`windows.pooled_relu_moments` or `windows.scale_extremes`) over each image's ink
    window, with its `options`, or None where `windows.plan_windows` finds the canvas's lifting
    cheaper."""

    def runs_of(side: int):
        return _fft_runs(basis, side, side, "cpu_lifting")

    plan = windows.plan_windows(x, basis, runs_of)
    if plan is None:
        return None
    dtype = _spectral_dtype(x, weight)
    weight = weight.to(dtype)

    def spectra_of(side: int):
        return _lifting_spectra(weight, basis, runs_of(side))

    return head(x.to(dtype), weight, basis, plan, spectra_of, *options)


def z2h_fast_extremes(x: Tensor, weight: Tensor, basis: ScaleBasis, rows: int, cols: int):
    """`z2h_fast`, then `cpu_kernels.scale_max_pool` (CPU, no gradient): x [B, 1, H, W] ->
    (maxima, minima) [B, Cout, rows, cols] over every window of the max over the scales of the
    lifting, the toy model's evaluation head up to ReLU. Where `fft` lifts on the CPU, the two
    run pass by pass (`cpu_fft.lifting_scale_max_pool`), over each image's ink window where
    that is cheaper (`windows.scale_extremes`)."""
    method = _choose(x, weight, basis)
    with torch.autocast("cpu", enabled=False):
        if method == "fft" and _cpu_lifting(x, weight):
            windowed = _windowed(x, weight, basis, windows.scale_extremes, rows, cols)
            if windowed is not None:
                return windowed
        plan = _cpu_fft_lifting(x, weight, basis, method)
        if plan is not None:
            return lifting_scale_max_pool(*plan, rows, cols)
    return scale_max_pool(_apply(x, weight, basis, method), rows, cols)


def fast_bias_relu_pool(x: Tensor, weight: Tensor, basis: ScaleBasis, bias: Tensor):
    """`z2h_fast` or `h2h_fast` (by x's rank), then `cpu_kernels.bias_relu_pool` (CPU): x [B,
    Cin, (S,) H, W] -> [B, Cout, S, H/2, W/2], max_pool3d(relu(output + bias), (1, 2, 2)),
    SESN's block. Where `fft` runs on the CPU the two are one autograd function: the lifting of
    one channel pass by pass (`cpu_fft.lifting_bias_relu_pool`: its output is never whole), an
    H→H layer scale by scale (`cpu_fft.h2h_bias_relu_pool`: the pool reads each scale's output
    in place); either writes its gradient straight into the transforms' padded input."""
    method = _choose(x, weight, basis)
    with torch.autocast("cpu", enabled=False):
        plan = _cpu_fft_lifting(x, weight, basis, method)
        if plan is not None:
            return lifting_bias_relu_pool(*plan, bias)
        plan = _cpu_fft_h2h(x, weight, basis, method)
        if plan is not None:
            return h2h_bias_relu_pool(*plan, bias)
    return bias_relu_pool(_apply(x, weight, basis, method), bias)


def z2h_fast(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """Z2→H: x [B, Cin, H, W] -> [B, Cout, S, H, W], the same as `z2h_dense`."""
    return _apply(x, weight, basis)


def h2h_fast(x: Tensor, weight: Tensor, basis: ScaleBasis) -> Tensor:
    """H→H (scale_size 1): x [B, Cin, S, H, W] -> [B, Cout, S, H, W], y_s = x_s ⋆ κ_s, the same
    as `h2h_dense`."""
    return _apply(x, weight, basis)
