"""Where a run's config comes from: a TOML/JSON file (or a shipped example), then ``--set`` overrides.

Everything here ends in :func:`opd_core.config.from_dict`, which validates. :func:`merge_config` is the
one place two configs merge (``objective_params`` key by key, in every documented form). A file that
is not UTF-8, not valid TOML/JSON or not a table is one :class:`~opd_core.config.ConfigError` naming it.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from opd_core.config import GROUPS, ConfigError, RunConfig, field_docs, from_dict, objective_params_table


def merge_config(data: dict, changes: dict | list[str] | tuple[str, ...]) -> dict:
    """``data`` with ``changes`` (a dict, or ``--set`` strings) laid over it: the one place configs merge.

    ``objective_params`` merge key by key, whichever form each side uses (a table, a JSON object
    string as ``--set 'objective_params={"k": 4}'`` gives, or ``objective_params.k=4``).
    """
    if not isinstance(changes, dict):
        changes = parse_overrides(list(changes))
    out = dict(data)
    extra = dict(changes)
    if "objective_params" in extra:
        out["objective_params"] = {**objective_params_table(out.get("objective_params")),
                                   **objective_params_table(extra.pop("objective_params"))}
    out.update(extra)
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["key=value", "objective_params.k=16"]`` -> a dict to merge over the file's fields."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not KEY=VALUE, e.g. --set top_p=0.9")
        key, value = item.split("=", 1)
        key = key.strip()
        if key.startswith("objective_params."):
            out["objective_params"] = {**objective_params_table(out.get("objective_params")), key.split(".", 1)[1]: value}
        elif key == "objective_params":
            out["objective_params"] = {**objective_params_table(out.get("objective_params")), **objective_params_table(value)}
        else:
            out[key] = value
    return out


def read_config_file(path: str | Path) -> dict:
    """Read a TOML or JSON config file into a dict (no validation yet)."""
    path = Path(path)
    if not path.is_file():
        examples = examples_dir()
        candidate = examples / (path.name if path.suffix else f"{path.name}.toml")
        if candidate.is_file():
            path = candidate
        else:
            names = ", ".join(sorted(p.stem for p in examples.glob("*.toml")))
            raise ConfigError(f"config file {str(path)!r} does not exist; pass a .toml/.json file or a shipped "
                              f"example ({names})")
    kind = "JSON" if path.suffix == ".json" else "TOML"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not {kind} text (not UTF-8 at byte {exc.start}); "
                          "pass a .toml or .json config file") from None
    except OSError as exc:
        raise ConfigError(f"config file {str(path)!r} cannot be read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} holds a JSON {type(data).__name__}, not an object of "
                          'field: value pairs; write e.g. {"steps": 20}')
    return data


def examples_dir() -> Path:
    return Path(__file__).parent / "examples"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, *,
                check_paths: bool = True) -> RunConfig:
    """The config a run uses: the file (or defaults), then ``--set`` overrides, validated."""
    data = read_config_file(path) if path else {}
    return from_dict(merge_config(data, overrides or []), check_paths=check_paths)


def config_reference_markdown() -> str:
    """docs/config.md's body: every field by group, with default and help."""
    lines = ["# Run configuration", "", "Every field of `RunConfig` (`opd_core/config.py`), grouped by purpose.", ""]
    docs = field_docs()
    for group in GROUPS:
        lines += [f"## {group}", "", "| field | default | meaning |", "|---|---|---|"]
        for d in docs:
            if d["group"] == group:
                lines.append(f"| `{d['name']}` | `{json.dumps(d['default'])}` | {d['help']} |")
        lines.append("")
    return "\n".join(lines)
