"""The fingerprint of a run: one hash of everything that determines its numbers.

A run folder belongs to one resolved run config. Its fingerprint is the sha256 of the canonical
JSON (sorted keys, no spaces) of the resolved run config (model and train keys with every default
filled in, the seed, the expected dataset parameters and the sha256 of the dataset file), minus
the keys that only label the run (experiment, run id, grid point, dataset path). It is stored in
config.json and in every checkpoint; a checkpoint with another fingerprint (or none) is never
resumed from. No torch here: the Snakefile and the tests use it cheaply.
"""

from __future__ import annotations

import hashlib
import json

# Labels: they name the run or repeat values that are in `model` / `train` already. The dataset
# path is replaced by the dataset's content hash (`dataset_sha256`), so a moved results folder
# keeps its fingerprint and a replaced dataset file changes it.
LABEL_KEYS = ("experiment", "run_id", "grid", "dataset", "fingerprint")


def canonical_json(data) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False)


def run_fingerprint(resolved: dict) -> str:
    """sha256 (hex) of a resolved run config without its label keys."""
    content = {key: value for key, value in resolved.items() if key not in LABEL_KEYS}
    return hashlib.sha256(canonical_json(content).encode()).hexdigest()
