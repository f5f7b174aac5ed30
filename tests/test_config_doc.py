"""config/README.md documents every config key, and is what the schema renders to."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from scalelearn import config_doc

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "config/README.md"


def _documented() -> dict[str, str]:
    """key path -> meaning, from the tables of config/README.md."""
    keys_part = DOC.read_text().split("## Model defaults per network")[0]
    rows = re.findall(r"^\| `([^`]+)` \| .*? \| .*? \| (.*?) \|$", keys_part, re.MULTILINE)
    return dict(rows)


def test_config_readme_is_generated_from_the_schema():
    assert DOC.read_text() == config_doc.render(), (
        "config/README.md is out of date: run `python -m scalelearn config-doc --out "
        "config/README.md`"
    )


def test_every_key_has_a_meaning():
    missing = [key for key, meaning in _documented().items() if not meaning.strip()]
    assert not missing, f"add a `description` to these keys in config.schema.yaml: {missing}"


def _paths(value, prefix: str = ""):
    """Every key path of a config mapping; experiment names become <name>."""
    if not isinstance(value, dict):
        return
    for key, child in value.items():
        if prefix == "experiments":
            key = "<name>"
        path = f"{prefix}.{key}" if prefix else key
        yield path
        if isinstance(child, list):
            for item in child:
                yield from _paths(item, path)
        elif not (isinstance(child, dict) and set(child) == {"start", "steps_per_octave", "num"}):
            yield from _paths(child, path)


def test_every_key_the_presets_use_is_documented():
    documented = set(_documented())
    for preset in sorted((REPO / "config").glob("**/*.yaml")):
        used = set(_paths(yaml.safe_load(preset.read_text())))
        assert used <= documented, f"{preset.name}: undocumented {sorted(used - documented)}"
