"""Allowed values and defaults, in one place, without torch.

Everything the config schema (`config.schema.yaml` beside this file) can state is read from it:
the allowed values (`enum`) and the training defaults (`default`). The Python code (the networks,
the training, the MNIST sources, the command-line choices) imports these names instead of keeping
its own copy, so the schema and the code cannot disagree.

The model defaults are not in the schema (each network has its own, which a JSON schema cannot
express per `name`); they are written here once, and tests/test_settings.py checks every key and
value of them against the schema.

This module imports only the standard library and PyYAML: the Snakefile's config validation and
grid expansion use it without torch installed (`snakemake --use-conda` from a bare Snakemake).
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@cache
def load_schema() -> dict:
    """The config schema as a mapping (read once; do not mutate it)."""
    with open(SCHEMA_PATH) as handle:
        return yaml.safe_load(handle)


def _defs(*keys: str) -> dict:
    node = load_schema()["$defs"]
    for key in keys:
        node = node[key]
    return node


def _enum(*keys: str) -> tuple[str, ...]:
    return tuple(_defs(*keys)["enum"])


# --- allowed values (from the schema) ---------------------------------------------------------

MODEL_NAMES = _enum("model", "properties", "name")  # ("toy", "sesn", "cnn")
BASES = _enum("model", "properties", "basis")  # ("hermite_a", "hermite_b")
# Parameterisations of the internal scales (SPEC §3); table in scalelearn.nn.scales.
SCALE_MODES = _enum("model", "properties", "scale_mode")
IMPLEMENTATIONS = _enum("model", "properties", "implementation")  # ("fast", "dense")
AUGMENTS = _enum("train", "properties", "augment")  # ("none", "rescale")
ACCELERATORS = _enum("train", "properties", "accelerator")
MNIST_SOURCES = tuple(load_schema()["properties"]["mnist"]["properties"]["source"]["enum"])
# Dataset protocols (SPEC §7): scale_distribution (E1-E4), mnist_scale (E5).
DATASET_PROTOCOLS = tuple(
    load_schema()["properties"]["experiments"]["additionalProperties"]["properties"]["dataset"][
        "enum"
    ]
)
SPLITS = tuple(_defs("splits")["required"])  # ("train", "val", "test"), in pool order
# Lightning's profilers `scalelearn train --profiler` offers (a diagnostic, not a config key).
PROFILERS = ("simple", "advanced", "pytorch")

# --- bounds -----------------------------------------------------------------------------------

# Smallest scale (pixels) the projection after an optimiser step allows, for the paper's k = 4
# (kernel_size_k); `min_scale(k)` gives the bound for any k. The basis of SPEC §2 is defined for
# every ISR from σ_min = 1/k up: the smallest scale's support (hermite.supports)
# n_0 = 2·⌊⌊K·σ_0/σ_max⌋/2⌋ + 1 is at least 3 px whenever k·σ_0 ≥ 1, because K ≥ 2k·σ_max + 1 gives
# K·σ_0/σ_max > 2k·σ_0 ≥ 2. Below 1/k a wide ISR gives n_0 = 1 px (σ_0 < 0.25 at k = 4), where every
# odd-order Hermite function is exactly 0: dividing it by its norm at the smallest scale gave a NaN
# basis (the former bound, 0.05, let learnable scales go there; the basis now leaves such a
# function out, see HermiteBasis.forward, but the networks never get there). SESN's own variant B
# asserts the same (`steerable_B`: size_before_pad > 1); SESN never learns scales. 0.4 rather than
# 1/4: in float32 the E5 hermite_b basis (eff 7) divides its finest sub-sigma σ/1.4³ by a norm
# that underflows to 0 up to σ ≈ 0.255, and its gradients in the scales overflow up to σ ≈ 0.33;
# from 0.4 up both paper bases and their gradients are finite (checked for ISR 1 to 100).
# Every scale the paper uses (σ_b ≥ 1) is far above it.
MIN_SCALE = 0.4


def min_scale(kernel_size_k: float) -> float:
    """The smallest internal scale allowed with kernel-size factor k: max(MIN_SCALE, 1/k) px.

    From it up, the smallest scale has a support of at least 3 px whatever σ_max is (see
    MIN_SCALE), so every function of the basis has a non-zero norm there.
    """
    return max(MIN_SCALE, 1.0 / kernel_size_k)


# --- defaults ---------------------------------------------------------------------------------

# Training defaults of every run (SPEC §6): the `default` of each top-level `train` key.
TRAIN_DEFAULTS: dict = {
    key: spec["default"] for key, spec in load_schema()["properties"]["train"]["properties"].items()
}

# Keys shared by the scale-equivariant networks (toy, sesn).
_SCALE_DEFAULTS = {
    "scale_mode": "fixed",
    "learn_sigma_basis": False,
    "kernel_size_k": 4.0,
    "basis_mult": 1.4,
    "basis_max_order": 4,
    "implementation": "fast",
}

# Each network's model config (SPEC §5); an experiment's `model` and grid override single keys.
MODEL_DEFAULTS: dict[str, dict] = {
    "toy": {
        "name": "toy",
        "basis": "hermite_a",
        "effective_size": 5,
        "num_scales": 3,
        "sigma_basis": 2.0,
        "isr": 3.0,
        **_SCALE_DEFAULTS,
    },
    "sesn": {
        "name": "sesn",
        "basis": "hermite_b",
        "effective_size": 7,
        "num_scales": 4,
        "sigma_basis": 1.5,
        "isr": 2.0,
        **_SCALE_DEFAULTS,
    },
    "cnn": {"name": "cnn", "kernel_size": 7},
}


def model_defaults(name: str) -> dict:
    """A copy of the defaults of model `name` (one of MODEL_NAMES)."""
    return copy.deepcopy(MODEL_DEFAULTS[name])


def train_defaults() -> dict:
    """A copy of TRAIN_DEFAULTS (its lists are mutable)."""
    return copy.deepcopy(TRAIN_DEFAULTS)
