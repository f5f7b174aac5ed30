"""The networks of the paper (SPEC §5): the toy model of E1–E4, the SESN MNIST-Scale network of E5,
and a plain-CNN baseline with the same head.

Scale-equivariant networks own one InternalScales module and one HermiteBasis: the basis is
computed once per forward pass from the current scales and used by every layer.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from scalelearn.nn.conv import ScaleConvH2H, ScaleConvZ2H, scale_max_projection
from scalelearn.nn.hermite import HermiteBasis, ScaleBasis, kernel_size
from scalelearn.nn.scales import InternalScales
from scalelearn.settings import MODEL_DEFAULTS


class ScaleEquivariantNet(nn.Module):
    """Base of the networks with learnable internal scales."""

    def __init__(self, cfg: dict):
        super().__init__()
        self.internal_scales = InternalScales(
            cfg["scale_mode"],
            cfg["num_scales"],
            cfg["sigma_basis"],
            cfg["isr"],
            cfg["learn_sigma_basis"],
        )
        self.basis = HermiteBasis(
            cfg["basis"],
            cfg["effective_size"],
            cfg["kernel_size_k"],
            cfg["basis_mult"],
            cfg["basis_max_order"],
        )

    def current_basis(self) -> ScaleBasis:
        return self.basis(self.internal_scales())

    def scale_report(self) -> dict:
        """Internal scales, σ_b, ISR and K as plain numbers (for metrics and summaries)."""
        scales = self.internal_scales().detach()
        return {
            "internal_scales": [float(s) for s in scales],
            "sigma_basis": float(scales.min()),
            "isr": float(scales.max() / scales.min()),
            "kernel_size": kernel_size(scales, self.basis.kernel_size_k),
        }


class ToyModel(ScaleEquivariantNet):
    """E1–E4: [B, 1, H, W] (H = W = 168) -> logits [B, 10].

    Z2→H (1→16, no bias) → max over scales → ReLU → BatchNorm2d → max-pool to 4×4 → Linear(256→10).
    The pool is MaxPool2d(H/4, stride H/4) (42 on the paper's 168 canvas), written as an adaptive
    pool so smaller canvases (CI) keep the same head.
    """

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        functions = self.basis.num_functions
        self.conv = ScaleConvZ2H(1, 16, functions, bias=False, implementation=cfg["implementation"])
        self.bn = nn.BatchNorm2d(16)
        self.pool = nn.AdaptiveMaxPool2d(4)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        basis = self.current_basis()
        x = F.relu(scale_max_projection(self.conv(x, basis)))
        x = self.pool(self.bn(x))
        return self.fc(x.flatten(1))


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

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        c1, c2, c3 = self.channels
        functions, impl = self.basis.num_functions, cfg["implementation"]
        self.conv1 = ScaleConvZ2H(1, c1, functions, bias=True, implementation=impl)
        self.conv2 = ScaleConvH2H(c1, c2, functions, bias=True, implementation=impl)
        self.conv3 = ScaleConvH2H(c2, c3, functions, bias=True, implementation=impl)
        self.bn1 = nn.BatchNorm3d(c1)
        self.bn2 = nn.BatchNorm3d(c2)
        self.head = nn.Sequential(*_head(c3))

    @staticmethod
    def _pool(x: Tensor) -> Tensor:
        return F.max_pool3d(x, (1, 2, 2))

    def forward(self, x: Tensor) -> Tensor:
        basis = self.current_basis()
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.bn1(self._pool(F.relu(self.conv1(x, basis))))
        x = self.bn2(self._pool(F.relu(self.conv2(x, basis))))
        x = F.relu(scale_max_projection(self.conv3(x, basis)))
        return self.head(x)


class CNNBaseline(nn.Module):
    """Plain CNN with the SESN network's layout and head, Conv2d(k = 7) layers."""

    internal_scales = None

    def __init__(self, cfg: dict):
        super().__init__()
        c1, c2, c3 = SESNNet.channels
        k = cfg["kernel_size"]
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


MODELS = {"toy": ToyModel, "sesn": SESNNet, "cnn": CNNBaseline}


def build_model(cfg: dict) -> nn.Module:
    """A model from its config (MODEL_DEFAULTS[name] updated with `cfg`)."""
    name = cfg.get("name")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name]({**MODEL_DEFAULTS[name], **cfg})
