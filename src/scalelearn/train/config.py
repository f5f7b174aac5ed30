"""The typed training config: one field per key of a config's `train:` section (one to one), with
the defaults of TRAIN_DEFAULTS (SPEC §6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from scalelearn.errors import ScalelearnError
from scalelearn.settings import AUGMENTS, TRAIN_DEFAULTS


def _default(key: str):
    value = TRAIN_DEFAULTS[key]
    if isinstance(value, list):
        return field(default_factory=lambda: list(value))
    return field(default=value)


@dataclass(frozen=True)
class TrainConfig:
    """How one network is trained (SPEC §6). Epoch counts are epochs of the training split.

    epochs: number of training epochs.
    batch_size: training mini-batch size.
    lr: Adam learning rate of the weights (everything but the internal scales).
    lr_milestones: epochs at which the weights' learning rate is multiplied by `lr_gamma`.
    lr_gamma: that factor.
    scale_lr: Adam learning rate of the internal-scale parameters (their own group).
    scale_warmup_epochs: the scale learning rate ramps up linearly from 0 over these epochs.
    scale_lr_milestones: epochs at which the scale learning rate is multiplied by
        `scale_lr_gamma`.
    scale_lr_gamma: that factor.
    augment: "none", or "rescale": a fresh random rescale of every training image per load
        (SESN's "+" augmentation).
    eval_batch_size: mini-batch size of validation and test.
    accelerator: Lightning accelerator ("auto", "cpu", "gpu", ...).
    threads: CPU threads of training (part of the config: on a CPU the numbers depend on it in
        the last bits).
    """

    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    lr_milestones: list[int] = _default("lr_milestones")
    lr_gamma: float = _default("lr_gamma")
    scale_lr: float = _default("scale_lr")
    scale_warmup_epochs: int = _default("scale_warmup_epochs")
    scale_lr_milestones: list[int] = _default("scale_lr_milestones")
    scale_lr_gamma: float = _default("scale_lr_gamma")
    augment: str = _default("augment")
    eval_batch_size: int = _default("eval_batch_size")
    accelerator: str = _default("accelerator")
    threads: int = _default("threads")

    def __post_init__(self):
        if self.augment not in AUGMENTS:
            raise ScalelearnError(
                f"train.augment is {self.augment!r}; allowed: {', '.join(AUGMENTS)}"
            )

    @classmethod
    def from_dict(cls, train: dict) -> TrainConfig:
        """From a `train:` mapping; a missing key takes its default, an unknown key is an error."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(train) - set(allowed))
        if unknown:
            raise ScalelearnError(f"unknown train keys {unknown}; allowed: {', '.join(allowed)}")
        return cls(**train)

    def to_dict(self) -> dict:
        """The `train:` mapping (every key)."""
        return asdict(self)
