"""Scale-equivariant layers with learnable internal scales, for your own PyTorch models.

One network holds one SharedBasis (its InternalScales and its HermiteBasis); every
scale-equivariant layer gets it at construction and computes nothing twice: the basis is built
once per forward pass from the current scales and shared by all layers.

    scales = InternalScales("single_ratio_squared", num_scales=3, sigma_basis=1.5, isr=2.0)
    basis = SharedBasis(scales, HermiteBasis("hermite_a", effective_size=5))
    net = nn.Sequential(
        ScaleConvZ2H(1, 16, basis),   # [B, 1, H, W] -> [B, 16, S, H, W]
        nn.ReLU(),
        ScaleConvH2H(16, 32, basis),  # [B, 16, S, H, W] -> [B, 32, S, H, W]
        ScaleMaxProjection(),         # -> [B, 32, H, W]
    )

After each optimiser step call `scales.constrain_()` (keeps `direct`/`ratio` scales positive and
ordered). `equivariance_error(module, x)` measures how equivariant a layer or network is.
"""

from scalelearn.nn.conv import ScaleConvH2H, ScaleConvZ2H, ScaleMaxProjection, scale_max_projection
from scalelearn.nn.equivariance import equivariance_error
from scalelearn.nn.hermite import BASIS_TYPES, HermiteBasis, ScaleBasis
from scalelearn.nn.scales import SCALE_MODES, InternalScales
from scalelearn.nn.shared_basis import SharedBasis

__all__ = [
    "BASIS_TYPES",
    "SCALE_MODES",
    "HermiteBasis",
    "InternalScales",
    "ScaleBasis",
    "ScaleConvH2H",
    "ScaleConvZ2H",
    "ScaleMaxProjection",
    "SharedBasis",
    "equivariance_error",
    "scale_max_projection",
]
