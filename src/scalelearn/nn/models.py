"""The networks of the paper (SPEC §5): the toy model of E1–E4, the SESN MNIST-Scale network of E5,
and a plain-CNN baseline with the same head; and their typed configs.

They are built from the public layers of scalelearn.nn, as a user would build their own network:
one InternalScales and one HermiteBasis per network, joined in one SharedBasis that every
scale-equivariant layer holds; the basis is computed once per forward pass.

Each config dataclass has one field per key of a config's `model:` section (the YAML maps onto it
one to one); its defaults are MODEL_DEFAULTS[name].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from scalelearn.nn import fast_conv
from scalelearn.nn.compiled import CompiledOnCuda
from scalelearn.nn.conv import (
    ScaleConvH2H,
    ScaleConvZ2H,
    ScaleMaxProjection,
    scale_max_projection,
)
from scalelearn.nn.evaluation import memory_budget
from scalelearn.nn.hermite import HermiteBasis, ScaleBasis, kernel_size
from scalelearn.nn.scales import InternalScales, min_scale
from scalelearn.nn.shared_basis import SharedBasis
from scalelearn.settings import MODEL_DEFAULTS


def _check_name(config) -> None:
    """A config class serves one network: its `name` must be that network's."""
    expected = type(config).__dataclass_fields__["name"].default
    if isinstance(expected, str) and config.name != expected:
        raise ValueError(
            f"{type(config).__name__} is the config of model {expected!r}, got name {config.name!r}"
        )


def _toy(key: str):
    return MODEL_DEFAULTS["toy"][key]


def _sesn(key: str):
    return MODEL_DEFAULTS["sesn"][key]


@dataclass(frozen=True)
class ScaleNetConfig:
    """The `model:` keys of a scale-equivariant network (SPEC §2–§5).

    name: the network, "toy" (ToyModel) or "sesn" (SESNNet).
    basis: Hermite basis variant, "hermite_a" or "hermite_b" (SPEC §2).
    effective_size: eff; the basis has F = eff² functions.
    num_scales: N, the number of internal scales.
    scale_mode: parameterisation of the internal scales (SPEC §3, table in scalelearn.nn.scales):
        fixed, direct, ratio, ratio_squared, single_ratio, single_ratio_squared ("learn ISR").
    sigma_basis: σ_b, the smallest internal scale at initialisation, in pixels of the input.
    isr: internal scale range σ_max / σ_min at initialisation.
    learn_sigma_basis: train σ_b too (ignored in `direct` mode, where σ_b is unused).
    kernel_size_k: k of the kernel size K = max(3, 2·⌈k·σ_max⌉ + 1).
    basis_mult: divisor of hermite_b's sub-sigmas σ / mult^m.
    basis_max_order: hermite_b's maximum total order i + j.
    implementation: "fast" (default) or "dense" (the reference); the same numbers.
    """

    name: str
    basis: str
    effective_size: int
    num_scales: int
    scale_mode: str
    sigma_basis: float
    isr: float
    learn_sigma_basis: bool
    kernel_size_k: float
    basis_mult: float
    basis_max_order: int
    implementation: str

    def __post_init__(self):
        _check_name(self)

    def shared_basis(self) -> SharedBasis:
        """A new SharedBasis (InternalScales + HermiteBasis) as this config describes."""
        scales = InternalScales(
            self.scale_mode,
            self.num_scales,
            self.sigma_basis,
            self.isr,
            self.learn_sigma_basis,
            min_scale(self.kernel_size_k),
        )
        hermite = HermiteBasis(
            self.basis,
            self.effective_size,
            self.kernel_size_k,
            self.basis_mult,
            self.basis_max_order,
        )
        return SharedBasis(scales, hermite)


@dataclass(frozen=True)
class ToyConfig(ScaleNetConfig):
    """ToyModel's config (E1–E4); defaults MODEL_DEFAULTS["toy"]. Fields: see ScaleNetConfig."""

    name: str = _toy("name")
    basis: str = _toy("basis")
    effective_size: int = _toy("effective_size")
    num_scales: int = _toy("num_scales")
    scale_mode: str = _toy("scale_mode")
    sigma_basis: float = _toy("sigma_basis")
    isr: float = _toy("isr")
    learn_sigma_basis: bool = _toy("learn_sigma_basis")
    kernel_size_k: float = _toy("kernel_size_k")
    basis_mult: float = _toy("basis_mult")
    basis_max_order: int = _toy("basis_max_order")
    implementation: str = _toy("implementation")


@dataclass(frozen=True)
class SESNConfig(ScaleNetConfig):
    """SESNNet's config (E5); defaults MODEL_DEFAULTS["sesn"]. Fields: see ScaleNetConfig."""

    name: str = _sesn("name")
    basis: str = _sesn("basis")
    effective_size: int = _sesn("effective_size")
    num_scales: int = _sesn("num_scales")
    scale_mode: str = _sesn("scale_mode")
    sigma_basis: float = _sesn("sigma_basis")
    isr: float = _sesn("isr")
    learn_sigma_basis: bool = _sesn("learn_sigma_basis")
    kernel_size_k: float = _sesn("kernel_size_k")
    basis_mult: float = _sesn("basis_mult")
    basis_max_order: int = _sesn("basis_max_order")
    implementation: str = _sesn("implementation")


@dataclass(frozen=True)
class CNNConfig:
    """CNNBaseline's config; defaults MODEL_DEFAULTS["cnn"].

    name: "cnn".
    kernel_size: side of every Conv2d kernel.
    """

    name: str = MODEL_DEFAULTS["cnn"]["name"]
    kernel_size: int = MODEL_DEFAULTS["cnn"]["kernel_size"]

    def __post_init__(self):
        _check_name(self)


ModelConfig = ToyConfig | SESNConfig | CNNConfig


class ScaleEquivariantNet(nn.Module):
    """Base of the networks with learnable internal scales: owns the network's SharedBasis."""

    def __init__(self, config: ScaleNetConfig):
        super().__init__()
        self.config = config
        self.basis = config.shared_basis()
        self._register_load_state_dict_pre_hook(_from_previous_layout, with_module=True)

    @property
    def internal_scales(self) -> InternalScales:
        return self.basis.internal_scales

    def scale_report(self) -> dict:
        """Internal scales, σ_b, ISR and K as plain numbers (for metrics and summaries)."""
        scales = self.internal_scales().detach()
        return {
            "internal_scales": [float(s) for s in scales],
            "sigma_basis": float(scales.min()),
            "isr": float(scales.max() / scales.min()),
            "kernel_size": kernel_size(scales, self.basis.hermite.kernel_size_k),
        }


def _from_previous_layout(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
):
    """Reads checkpoints written before the layers shared a SharedBasis: there the network held
    `internal_scales.*` and `basis.*` (the HermiteBasis buffers) itself and its layers held no
    copy. Each old entry goes to every path the shared module now has (`basis.`, `conv.basis.`)."""
    old_scales = [k for k in state_dict if k.startswith(prefix + "internal_scales.")]
    if not old_scales:
        return
    old_buffers = [k for k in state_dict if k.startswith(prefix + "basis.")]
    paths = [
        name + "."
        for name, child in module.named_modules(remove_duplicate=False)
        if child is module.basis
    ]
    for key in old_scales + old_buffers:
        value = state_dict.pop(key)
        name = key[len(prefix) :].split(".", 1)[1]
        part = "internal_scales." if key in old_scales else "hermite."
        for path in paths:
            state_dict[f"{prefix}{path}{part}{name}"] = value


# Working memory the toy model's lifting (conv, scale max, ReLU) may hold in a training step,
# forward and backward, in bytes, on the CPU; on a GPU a quarter of its memory, at most
# CUDA_TRAIN_LIFT_BUDGET (evaluation.memory_budget): larger batches go through it in checkpointed
# chunks. 16 GiB lets every toy network of the paper take its batch of 128 whole on a card of
# 64 GB or more (estimated 7.0 GiB at K 49, 11.0 at K 123, 13.8 at K 193); with 8 GiB the
# networks from K ~100 recomputed half their lifting (H100: e1_toy_isr7.56 3,766 img/s chunked).
TRAIN_LIFT_BUDGET = 2**30
CUDA_TRAIN_LIFT_BUDGET = 2**34
# Forward + backward of the lifting, over its forward working set (fast_conv.working_bytes).
_BACKWARD_FACTOR = 2


def _library_pool(x: Tensor) -> bool:
    """Whether a max pool of `x` runs as PyTorch's own op: where autograd records (its backward
    needs the arg-max indices) and off the CPU (the faster CPU evaluation forms of the models'
    pools were not measured there)."""
    return x.device.type != "cpu" or (torch.is_grad_enabled() and x.requires_grad)


def _toy_head(
    z: Tensor,
    training: bool,
    bn_weight: Tensor,
    bn_bias: Tensor,
    bn_mean: Tensor,
    bn_var: Tensor,
    bn_momentum: float,
    bn_eps: float,
    fc_weight: Tensor,
    fc_bias: Tensor,
) -> Tensor:
    """The toy model after the lifting, [B, 16, S, H, W] -> logits [B, 10]: scale max, ReLU,
    BatchNorm2d (training: on batch statistics, bn_mean and bn_var updated in place; else on
    bn_mean and bn_var), AdaptiveMaxPool2d(4), Linear. The modules' own operations in function
    form, so one compiled graph per mode serves every toy model of the same shapes (`scalelearn
    cost` builds dozens)."""
    x = F.relu(scale_max_projection(z))
    x = F.batch_norm(x, bn_mean, bn_var, bn_weight, bn_bias, training, bn_momentum, bn_eps)
    return F.linear(F.adaptive_max_pool2d(x, 4).flatten(1), fc_weight, fc_bias)


# Training: static shapes (the batch and the epoch's last, smaller one). Evaluation: its chunk
# sizes vary with the kernel size and the batch remainders, so its batch size becomes dynamic
# after the first change instead of compiling a graph per size (torch.compile stops compiling
# after 8 and runs every further size eagerly).
TOY_TRAINING_HEAD = CompiledOnCuda(_toy_head)
TOY_EVAL_HEAD = CompiledOnCuda(_toy_head, dynamic=None)


class ToyModel(ScaleEquivariantNet):
    """E1–E4: [B, 1, H, W] (H = W = 168) -> logits [B, 10].

    Z2→H (1→16, no bias) → max over scales → ReLU → BatchNorm2d → max-pool to 4×4 → Linear(256→10).
    The pool is MaxPool2d(H/4, stride H/4) (42 on the paper's 168 canvas), written as an adaptive
    pool so smaller canvases (CI) keep the same head.

    Memory: the lifting holds S·16 maps per image and their spectra (about 30 MB per image at K 97
    on the 168 canvas). Where a training batch would need more than TRAIN_LIFT_BUDGET, the
    lifting runs in chunks under activation checkpointing (each chunk recomputed in the backward
    pass), so a step's memory stays bounded whatever the batch size; the values are those of the
    whole batch (per-image operations; only the summation order of the weight gradient changes).
    """

    def __init__(self, config: ToyConfig | None = None):
        config = config or ToyConfig()
        super().__init__(config)
        self.conv = ScaleConvZ2H(1, 16, self.basis, False, config.implementation)
        self.projection = ScaleMaxProjection()
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def _lift(self, x: Tensor, basis: ScaleBasis) -> Tensor:
        """[B, 1, H, W] -> [B, 16, H, W]: the per-image part of the network."""
        return F.relu(self.projection(self.conv.convolve(x, basis)))

    def lift_chunk(self, x: Tensor, basis: ScaleBasis) -> int:
        """Images per checkpointed chunk of the lifting in a training step (len(x): no chunks)."""
        if not torch.is_grad_enabled() or self.conv.implementation != "fast":
            return len(x)
        working = fast_conv.working_bytes(x, self.conv.weight, basis)  # the whole batch
        per_image = _BACKWARD_FACTOR * working // len(x)
        budget = memory_budget(x.device, TRAIN_LIFT_BUDGET, CUDA_TRAIN_LIFT_BUDGET)
        return max(1, min(len(x), budget // per_image))

    def forward(self, x: Tensor) -> Tensor:
        basis = self.basis()  # once per pass, also for every checkpointed chunk
        chunk = self.lift_chunk(x, basis)
        if chunk >= len(x) and self._head().compiles(x):
            return self._compiled_head(self.conv(x))
        if chunk >= len(x) and self._fuses_head(x):
            return self.fc(self._fused_head(x, basis).flatten(1))
        if chunk >= len(x) and self._pools_first(x):
            return self.fc(self._pooled_head(*self.conv(x, extremes=(4, 4))).flatten(1))
        if chunk >= len(x):
            x = F.relu(self.projection(self.conv(x)))
        else:
            x = torch.cat(
                [
                    checkpoint(self._lift, x[start : start + chunk], basis, use_reentrant=False)
                    for start in range(0, len(x), chunk)
                ]
            )
        x = self._pool(self.bn(x))
        return self.fc(x.flatten(1))

    def _head(self) -> CompiledOnCuda:
        return TOY_TRAINING_HEAD if self.training else TOY_EVAL_HEAD

    def _compiled_head(self, z: Tensor) -> Tensor:
        """[B, 16, S, H, W] -> logits [B, 10] through TOY_TRAINING_HEAD or TOY_EVAL_HEAD (compiled
        on CUDA): what forward's modules compute, in training BatchNorm's step counter included."""
        bn = self.bn
        if self.training:
            bn.num_batches_tracked.add_(1)  # as BatchNorm2d's training forward counts
        # Contiguous: the lifting's output is a view into its padded FFT buffer, whose strides
        # change with the kernel size, and every new stride would compile the head again.
        return self._head()(
            z.contiguous(),
            self.training,
            bn.weight,
            bn.bias,
            bn.running_mean,
            bn.running_var,
            bn.momentum,
            bn.eps,
            self.fc.weight,
            self.fc.bias,
        )

    def _fuses_head(self, x: Tensor) -> bool:
        """Whether `_fused_head` runs: CPU training of the fast implementation, pools' exact
        windows."""
        return (
            self.training
            and torch.is_grad_enabled()
            and x.device.type == "cpu"
            and self.conv.implementation == "fast"
            and self.conv.bias is None
            and self.bn.track_running_stats
            and x.shape[-2] % 4 == 0
            and x.shape[-1] % 4 == 0
            and self.basis.num_scales < 256
            and not torch.compiler.is_compiling()
        )

    def _fused_head(self, x: Tensor, basis: ScaleBasis) -> Tensor:
        """Training on the CPU: [B, 1, H, W] -> [B, 16, 4, 4], pool(bn(relu(scale max of the
        lifting))) with batch statistics, BatchNorm2d's running statistics and step counter
        updated as its training forward does. Batch norm scales each channel by a monotone map,
        so, as in `_pooled_head`, it commutes with the window's max (its min for a negative
        weight) and acts on the pooled values; its batch statistics, and their gradient, come
        with the pooling from one pass over the lifting's output (`fast_conv.z2h_fast_pooled`),
        where scale max, ReLU, batch norm and the pool made eight over [B, 16, H, W] maps,
        forward and backward."""
        self.conv._check_input(x)
        bn = self.bn
        pooled, mean, variance = fast_conv.z2h_fast_pooled(
            x, self.conv.weight, basis, bn.weight >= 0, 4, 4
        )
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1 / bn.num_batches_tracked.item()
            count = x.shape[0] * x.shape[-2] * x.shape[-1]
            bn.running_mean.mul_(1 - factor).add_(factor * mean)
            bn.running_var.mul_(1 - factor).add_(factor * count / (count - 1) * variance)
        scale = bn.weight * torch.rsqrt(variance + bn.eps)
        return (pooled - mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]

    def _pools_first(self, x: Tensor) -> bool:
        """Whether `_pooled_head` runs: CPU evaluation (eval mode, no autograd) of pools' exact
        windows."""
        return (
            not self.training
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and x.shape[-2] % 4 == 0
            and x.shape[-1] % 4 == 0
            and not torch.compiler.is_compiling()
        )

    def _pooled_head(self, maxima: Tensor, minima: Tensor) -> Tensor:
        """The max and min over each pool window of the lifting's scale max (`ScaleConvZ2H`'s
        `extremes`) [B, 16, 4, 4] -> [B, 16, 4, 4], the same values as pool(bn(relu(scale
        max))) in eval mode, pooled first. ReLU and eval-mode batch norm act on each element by
        a monotone map (rounding keeps it monotone), so they commute with the max of a window:
        BN with a positive scale takes the window's max, with a negative one its min. One pass
        over the lifting's output instead of four over [B, 16, H, W] maps (CPU evaluation of
        E2's toy model, 256 images: scale max, ReLU, BN and pool took a fifth), and where the
        lifting runs pass by pass (`cpu_fft`), each pass's output is pooled from the cache."""
        increasing = (self.bn.weight >= 0)[:, None, None]
        return self.bn(F.relu(torch.where(increasing, maxima, minima)))

    def _pool(self, x: Tensor) -> Tensor:
        """[B, 16, H, W] -> [B, 16, 4, 4]: `self.pool`, AdaptiveMaxPool2d(4)."""
        batch, channels, height, width = x.shape
        if _library_pool(x) or height % 4 or width % 4:
            return self.pool(x)
        # Evaluation on the CPU, windows of H/4 × W/4: the same values from two reductions over
        # contiguous runs, without the arg-max indices adaptive_max_pool2d computes (1.6 against
        # 5.2-6.9 ms on [20, 16, 168, 168] with 2 threads; the pool was a tenth of the toy's
        # evaluation).
        rows = x.reshape(batch, channels, height, 4, width // 4).amax(-1)
        return rows.reshape(batch, channels, 4, height // 4, 4).amax(3)


def _head(channels: int) -> list[nn.Module]:
    """The E5 head on [B, C, 14, 14]: pool to 2×2, BN, Linear(4C→256), BN, ReLU, Dropout, Linear.

    The first Linear has no bias, as in SESN's MNIST models (SES and CNN) and the authors' code:
    the BatchNorm1d after it subtracts the batch mean, so a bias there would have no effect.
    """
    return [
        nn.MaxPool2d(8, stride=8, padding=2),
        nn.BatchNorm2d(channels),
        nn.Flatten(),
        nn.Linear(channels * 4, 256, bias=False),
        nn.BatchNorm1d(256),
        nn.ReLU(),
        nn.Dropout(0.7),
        nn.Linear(256, 10),
    ]


class SESNNet(ScaleEquivariantNet):
    """E5, SESN's MNIST network: [B, 1, 28, 28] -> logits [B, 10].

    ×2 nearest upsample → Z2→H(1→32) → ReLU → pool 2 → BN3d → H→H(32→63) → ReLU → pool 2 → BN3d
    → H→H(63→95) → max over scales → ReLU → head. The ReLU after each SES layer follows SESN's own
    model; the authors' generic network omits the one between SES layers (SPEC §12).
    """

    channels = (32, 63, 95)

    def __init__(self, config: SESNConfig | None = None):
        config = config or SESNConfig()
        super().__init__(config)
        c1, c2, c3 = self.channels
        basis, impl = self.basis, config.implementation
        self.conv1 = ScaleConvZ2H(1, c1, basis, True, impl)
        self.conv2 = ScaleConvH2H(c1, c2, basis, True, impl)
        self.conv3 = ScaleConvH2H(c2, c3, basis, True, impl)
        self.bn1 = nn.BatchNorm3d(c1)
        self.bn2 = nn.BatchNorm3d(c2)
        self.projection = ScaleMaxProjection()
        self.head = nn.Sequential(*_head(c3))

    @staticmethod
    def _pool(x: Tensor) -> Tensor:
        """2×2 spatial max pool of every scale, SESN's MaxPool3d((1, 2, 2)): [B, C, S, H, W] ->
        [B, C, S, H/2, W/2] (odd sides floored)."""
        if _library_pool(x):
            return F.max_pool3d(x, (1, 2, 2))
        # Evaluation on the CPU (of the dense layers: the fast ones take `_conv_relu_pool`'s
        # fused pass): the same values from elementwise maxima of the four strided
        # sub-grids. max_pool3d also computes the arg-max indices, single-threaded per plane:
        # 50 against 8-10 ms on [49, 32, 4, 56, 56] with 2 threads, a fifth of SESN's evaluation.
        # The result is contiguous, as max_pool3d's is whatever the input's layout (the layers
        # return strided views): BatchNorm3d's CPU kernel rounds differently on other layouts.
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        top = torch.maximum(x[..., 0:h:2, 0:w:2], x[..., 0:h:2, 1:w:2])
        bottom = torch.maximum(x[..., 1:h:2, 0:w:2], x[..., 1:h:2, 1:w:2])
        return torch.maximum(top, bottom, out=x.new_empty(top.shape))

    def _conv_relu_pool(self, conv: nn.Module, x: Tensor) -> Tensor:
        """pool(relu(conv(x))). On the CPU (fast layers) the bias, ReLU and pool are one numba
        pass each way (`cpu_kernels.bias_relu_pool`): the same values and gradients, where the
        bias's addition, ReLU and max_pool3d (one thread per plane, with int64 indices) took a
        tenth of SESN's training step, forward and backward; after the `fft` lifting (conv1),
        pass by pass with it (`cpu_fft.lifting_bias_relu_pool`), so that its output is never
        whole."""
        fused = x.device.type == "cpu" and conv.implementation == "fast" and conv.bias is not None
        if not fused or torch.compiler.is_compiling():
            return self._pool(F.relu(conv(x)))
        # Through the module, so that its hooks see the call (evaluation's memory probe).
        return conv(x, relu_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.bn1(self._conv_relu_pool(self.conv1, x))
        x = self.bn2(self._conv_relu_pool(self.conv2, x))
        x = F.relu(self.projection(self.conv3(x)))
        return self.head(x)


class CNNBaseline(nn.Module):
    """Plain CNN with the SESN network's layout and head, Conv2d(k = 7) layers."""

    internal_scales = None

    def __init__(self, config: CNNConfig | None = None):
        super().__init__()
        self.config = config = config or CNNConfig()
        c1, c2, c3 = SESNNet.channels
        k = config.kernel_size
        self.features = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(1, c1, k, padding=k // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c1),
            nn.Conv2d(c1, c2, k, padding=k // 2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(c2),
            nn.Conv2d(c2, c3, k, padding=k // 2),
            nn.ReLU(),
            *_head(c3),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)

    def scale_report(self) -> dict:
        return {}


# name -> (network, its config)
MODELS = {
    "toy": (ToyModel, ToyConfig),
    "sesn": (SESNNet, SESNConfig),
    "cnn": (CNNBaseline, CNNConfig),
}


def model_config(cfg: dict | ModelConfig) -> ModelConfig:
    """The typed config of a `model:` section: MODEL_DEFAULTS[cfg["name"]] updated with `cfg`.

    Raises ValueError naming an unknown model name or key.
    """
    if not isinstance(cfg, dict):
        return cfg
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; allowed: {', '.join(MODELS)}")
    config_class = MODELS[name][1]
    allowed = [f.name for f in fields(config_class)]
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown keys {unknown} for model {name!r}; allowed: {', '.join(allowed)}"
        )
    return config_class(**cfg)


def build_model(cfg: dict | ModelConfig) -> nn.Module:
    """A model from its config: a `model:` mapping (MODEL_DEFAULTS[name] updated with it) or a
    ToyConfig / SESNConfig / CNNConfig."""
    config = model_config(cfg)
    return MODELS[config.name][0](config)


def config_dict(config: ModelConfig) -> dict:
    """The `model:` mapping of a typed config (the inverse of model_config)."""
    return asdict(config)
