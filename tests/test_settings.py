"""scalelearn.settings is the one source of allowed values and defaults: it agrees with the config
schema, the code accepts every value it allows, and it (with the config code) imports no torch."""

import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from scalelearn import settings


def _model_validator():
    """A validator of one model mapping against the schema's `$defs/model` (refs resolved)."""
    schema = settings.load_schema()
    return Draft202012Validator({"$ref": "#/$defs/model", "$defs": schema["$defs"]})


@pytest.mark.parametrize("name", settings.MODEL_NAMES)
def test_model_defaults_are_valid_model_configs(name):
    defaults = settings.MODEL_DEFAULTS[name]
    assert defaults["name"] == name
    errors = [e.message for e in _model_validator().iter_errors(defaults)]
    assert not errors, f"MODEL_DEFAULTS[{name!r}] breaks the schema: {errors}"


def test_every_model_name_has_defaults_and_a_network():
    from scalelearn.nn.models import MODELS

    assert set(settings.MODEL_DEFAULTS) == set(settings.MODEL_NAMES)
    assert set(MODELS) == set(settings.MODEL_NAMES)


def test_every_scale_equivariant_model_sets_every_scale_key():
    """toy and sesn read all of these keys, so each needs a default (cnn has none of them)."""
    scale_keys = {
        "basis",
        "effective_size",
        "num_scales",
        "scale_mode",
        "sigma_basis",
        "isr",
        "learn_sigma_basis",
        "kernel_size_k",
        "basis_mult",
        "basis_max_order",
        "implementation",
    }
    for name in ("toy", "sesn"):
        assert scale_keys <= set(settings.MODEL_DEFAULTS[name]), name


def test_train_defaults_cover_every_train_key():
    schema = settings.load_schema()
    assert set(settings.TRAIN_DEFAULTS) == set(schema["$defs"]["train"]["properties"])
    # The paper's defaults (SPEC §6), spot-checked from the spec rather than the schema.
    assert settings.TRAIN_DEFAULTS["epochs"] == 60
    assert settings.TRAIN_DEFAULTS["batch_size"] == 128
    assert settings.TRAIN_DEFAULTS["lr_milestones"] == [20, 40]


def test_copies_do_not_share_mutable_defaults():
    train = settings.train_defaults()
    train["lr_milestones"].append(99)
    assert settings.TRAIN_DEFAULTS["lr_milestones"] == [20, 40]
    model = settings.model_defaults("toy")
    model["isr"] = 99.0
    assert settings.MODEL_DEFAULTS["toy"]["isr"] != 99.0


def test_allowed_values_are_those_of_the_paper():
    """From the spec, not the schema: a value dropped from (or misspelt in) the schema fails."""
    assert set(settings.SCALE_MODES) == {
        "fixed",
        "direct",
        "ratio",
        "ratio_squared",
        "single_ratio",
        "single_ratio_squared",
    }
    assert set(settings.BASES) == {"hermite_a", "hermite_b"}
    assert set(settings.MODEL_NAMES) == {"toy", "sesn", "cnn"}
    assert settings.SPLITS == ("train", "val", "test")
    assert set(settings.DATASET_PROTOCOLS) == {"scale_distribution", "mnist_scale"}
    assert set(settings.AUGMENTS) == {"none", "rescale"}
    assert set(settings.MNIST_SOURCES) == {"torchvision", "idx_dir", "embedded"}


def test_the_code_uses_the_settings():
    """The old names are the settings' objects, not copies that could drift."""
    from scalelearn.data import datasets, mnist
    from scalelearn.nn import hermite, models, scales
    from scalelearn.train import run

    assert scales.SCALE_MODES is settings.SCALE_MODES
    assert hermite.BASIS_TYPES is settings.BASES
    assert models.MODEL_DEFAULTS is settings.MODEL_DEFAULTS
    assert run.TRAIN_DEFAULTS is settings.TRAIN_DEFAULTS
    assert run.AUGMENTS is settings.AUGMENTS
    assert mnist.SOURCES is settings.MNIST_SOURCES
    assert datasets.SPLITS is settings.SPLITS


@pytest.mark.parametrize("basis", settings.BASES)
def test_every_basis_builds(basis):
    from scalelearn.nn.hermite import function_orders

    assert len(function_orders(basis, 5)) == 25


def test_config_code_imports_no_torch():
    """The Snakefile's config validation and grid expansion must run where torch is missing."""
    code = (
        "import sys; import scalelearn.settings, scalelearn.experiments as e; "
        "c = e.load_config('config/test.yaml'); e.all_runs(c); e.datasets_needed(c); "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'torchvision') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
