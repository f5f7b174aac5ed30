"""scalelearn: learnable internal scales for scale-equivariant CNNs (VISAPP 2024 reproduction)."""

__version__ = "0.1.0"
