"""config/README.md, generated from the config schema: every key, what it takes, its default.

`scalelearn config-doc --out config/README.md` writes it; tests/test_config_doc.py checks the
file equals what this module renders, so the documentation cannot drift from the schema.
"""

from __future__ import annotations

import argparse
import json

from scalelearn.atomic import write_text
from scalelearn.settings import MODEL_DEFAULTS, load_schema

HEADER = """\
# Workflow configuration keys

Generated from `src/scalelearn/config.schema.yaml` by `scalelearn config-doc --out
config/README.md`; do not edit by hand (a test compares the two). A config file (`config/*.yaml`,
or your own with `--configfile`) is validated against the schema before any job starts; keys
left out take the defaults below. `<name>` stands for an experiment name (lower case, digits,
underscores).
"""


def _resolve(node: dict, schema: dict) -> dict:
    """A node with its $ref followed (the referring node's own keys win)."""
    while "$ref" in node:
        target = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _code(value) -> str:
    return f"`{json.dumps(value)}`"


def _takes(node: dict, schema: dict) -> str:
    """What values a (resolved) node accepts, in words."""
    if "oneOf" in node:
        return " or ".join(_takes(_resolve(n, schema), schema) for n in node["oneOf"])
    if "enum" in node:
        return "one of " + ", ".join(_code(v) for v in node["enum"])
    kind = node.get("type", "")
    if kind == "array":
        items = _resolve(node.get("items", {}), schema)
        return f"list of ({_takes(items, schema)})"
    if (
        kind == "object"
        and "required" in node
        and set(node["required"])
        == {
            "start",
            "steps_per_octave",
            "num",
        }
    ):
        return "`{start, steps_per_octave, num}`: start · 2^(i / steps_per_octave), i < num"
    bounds = []
    for key, sign in (
        ("minimum", ">="),
        ("exclusiveMinimum", ">"),
        ("maximum", "<="),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            bounds.append(f"{sign} {node[key]}")
    return " ".join([kind or "any", *bounds]).strip()


def _row(path: str, node: dict, schema: dict, default=None) -> str:
    default = node.get("default", default)
    shown = "" if default is None or isinstance(default, dict) else _code(default)
    description = " ".join(node.get("description", "").split())
    parent, _, key = path.rpartition(".")
    if not description and parent.endswith(".grid"):
        description = f"grid values of `{key}`: one run per value, crossed with the other keys"
    return f"| `{path}` | {_takes(node, schema)} | {shown} | {description} |"


def _walk(path: str, node: dict, schema: dict, rows: list[str]) -> None:
    """One row for `path`, then one per key below it (an object's properties, a mapping's
    `<name>` entries, the keys of an object among oneOf alternatives: a grid)."""
    node = _resolve(node, schema)
    rows.append(_row(path, node, schema))
    objects = [node] + [_resolve(n, schema) for n in node.get("oneOf", [])]
    for candidate in objects:
        if candidate.get("type") == "object" and "properties" in candidate:
            if candidate.get("required") == ["start", "steps_per_octave", "num"]:
                continue  # a geometric series, described in its row
            for key, child in candidate["properties"].items():
                _walk(f"{path}.{key}", child, schema, rows)
            break
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        _walk(f"{path}.<name>", extra, schema, rows)


def _table(rows: list[str]) -> str:
    head = "| key | takes | default | meaning |\n|---|---|---|---|\n"
    return head + "\n".join(rows) + "\n"


def render() -> str:
    """The whole config/README.md text."""
    schema = load_schema()
    sections = [HEADER]
    for key, node in schema["properties"].items():
        rows: list[str] = []
        _walk(key, node, schema, rows)
        sections.append(f"## `{key}`\n\n{_table(rows)}")
    model = _resolve(schema["$defs"]["model"], schema)
    names = list(MODEL_DEFAULTS)
    lines = [
        "## Model defaults per network\n",
        "`experiments.<name>.model` and the grid override single keys of these "
        "(`scalelearn.settings.MODEL_DEFAULTS`); an empty cell: the network has no such key.\n",
        "| key | " + " | ".join(f"`{n}`" for n in names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in model["properties"]:
        cells = [_code(MODEL_DEFAULTS[n][key]) if key in MODEL_DEFAULTS[n] else "" for n in names]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


def _config_doc_command(args: argparse.Namespace) -> None:
    text = render()
    if args.out:
        write_text(args.out, text)
    else:
        print(text, end="")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "config-doc",
        help="write config/README.md (every config key) from the schema",
        description="Render the documentation of every workflow config key from "
        "config.schema.yaml (type, allowed values, default, meaning) as Markdown.",
    )
    parser.add_argument("--out", help="file to write (default: print)")
    parser.set_defaults(func=_config_doc_command)
