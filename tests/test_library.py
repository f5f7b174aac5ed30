"""scalelearn as a library (issue #11): the README example runs and is the file the README shows,
the typed configs map one to one onto the YAML sections and take their defaults from the one
source, and the DataModule serves a user's own Trainer with a seeded order per epoch."""

import re
import runpy
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import yaml

from scalelearn.data.loader import Batches
from scalelearn.errors import ScalelearnError
from scalelearn.nn.models import (
    MODELS,
    CNNConfig,
    SESNConfig,
    ToyConfig,
    build_model,
    model_config,
)
from scalelearn.settings import MODEL_DEFAULTS, TRAIN_DEFAULTS
from scalelearn.train.config import TrainConfig
from scalelearn.train.datamodule import ScaleDataModule
from scalelearn.train.module import ScaleLearner

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "library_example.py"
SCHEMA = ROOT / "src" / "scalelearn" / "config.schema.yaml"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_readme_shows_the_example_file_verbatim():
    readme = (ROOT / "README.md").read_text()
    block = re.search(
        r"<!-- BEGIN examples/library_example.py -->\n```python\n(.*?)```\n"
        r"<!-- END examples/library_example.py -->",
        readme,
        re.S,
    )
    assert block, "README must show examples/library_example.py between its markers"
    assert block.group(1) == EXAMPLE.read_text()


def test_example_trains_and_prints_learned_scales(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "ScaleConvZ2H(1, 8, basis=hermite_a" in out and "ISR=2, K=17" in out
    found = re.search(r"learned scales \[(.*)\], ISR ([\d.]+)", out)
    assert found, out
    learned = [float(v) for v in found.group(1).split(",")]
    assert learned != pytest.approx([1.0, 2**0.5, 2.0], abs=1e-3), "the scales were learned"
    assert float(found.group(2)) == pytest.approx(learned[-1] / learned[0], abs=1e-3)


def test_model_configs_are_the_yaml_keys_with_the_one_set_of_defaults():
    schema = yaml.safe_load(SCHEMA.read_text())
    model_keys = set(schema["$defs"]["model"]["properties"])
    for name, (network, config_class) in MODELS.items():
        config = config_class()
        assert asdict(config) == MODEL_DEFAULTS[name], name
        assert {f.name for f in fields(config_class)} <= model_keys, name
        assert type(build_model(config)) is network
        assert model_config({"name": name}) == config
    assert model_config({"name": "toy", "isr": 4.0}) == ToyConfig(isr=4.0)
    assert build_model(SESNConfig(num_scales=2)).internal_scales.num_scales == 2
    with pytest.raises(ValueError, match=r"unknown keys \['kernel_size'\] for model 'toy'"):
        model_config({"name": "toy", "kernel_size": 7})
    with pytest.raises(ValueError, match="ToyConfig is the config of model 'toy'"):
        ToyConfig(name="sesn")
    with pytest.raises(ValueError, match="unknown model name"):
        model_config({"name": "resnet"})
    assert CNNConfig(kernel_size=3).kernel_size == 3


def test_train_config_is_the_yaml_train_section():
    assert TrainConfig().to_dict() == TRAIN_DEFAULTS
    assert {f.name for f in fields(TrainConfig)} == set(TRAIN_DEFAULTS)
    first, second = TrainConfig(), TrainConfig()
    assert first.lr_milestones is not second.lr_milestones, "no shared mutable default"
    assert TrainConfig.from_dict({"epochs": 2}).epochs == 2
    with pytest.raises(ScalelearnError, match=r"unknown train keys \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 2})
    with pytest.raises(ScalelearnError, match="train.augment"):
        TrainConfig(augment="flip")


def tiny_arrays(n=24, size=12, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val", "test"):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 10, n)
    return arrays


class RecordingLearner(ScaleLearner):
    """ScaleLearner that records the labels of every training batch, per epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: dict[int, list] = {}

    def training_step(self, batch, batch_idx):
        self.seen.setdefault(self.current_epoch, []).extend(batch[1].tolist())
        return super().training_step(batch, batch_idx)


def test_datamodule_serves_a_users_trainer_in_the_seeded_order():
    arrays = tiny_arrays()
    data = ScaleDataModule(arrays, batch_size=8, eval_batch_size=16, seed=5)
    data.setup()
    pixels = arrays["train_images"] / 255.0
    assert (data.mean, data.std) == pytest.approx((pixels.mean(), pixels.std()))
    model = ToyConfig(effective_size=2, sigma_basis=0.8, isr=1.5, kernel_size_k=2.0)
    learner = RecordingLearner(model, TrainConfig(epochs=3), 5, data.mean, data.std)
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(learner, datamodule=data)
    expected = Batches(arrays["train_images"], arrays["train_labels"], 8, shuffle=True, seed=5)
    for epoch in range(3):
        expected.set_epoch(epoch)
        order = expected.order()
        assert learner.seen[epoch] == arrays["train_labels"][order.numpy()].tolist(), epoch
    assert learner.seen[0] != learner.seen[1], "a new order every epoch"
    images, labels = next(iter(data.test_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (16, 1, 12, 12)
    assert trainer.test(learner, datamodule=data, verbose=False)[0]["test_acc"] >= 0
    with pytest.raises(ScalelearnError, match="does not exist; build it first"):
        ScaleDataModule("/nowhere/data.npz", 8).setup()
