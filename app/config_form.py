"""The run-config form, built from the config's own field docs so the form, the CLI and the docs agree.

Every field of :class:`opd_core.config.RunConfig` gets a widget in its documented group, starting from a
shipped preset or an existing run's config. Values are checked as the user types with the config's own
validation (``from_dict``), and each error is shown under the field it names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import streamlit as st

from opd_core import runs
from opd_core.config import (
    GROUPS,
    ConfigError,
    RunConfig,
    examples_dir,
    field_docs,
    from_dict,
    read_config_file,
)
from opd_core.config import LINEAGE_FIELDS as LINEAGE  # written by fork, never typed by hand

# What a person calls each field; the config name is shown beside it (it is what the CLI, TOML and docs use).
LABELS = {
    "student": "Student model", "teacher": "Teacher model", "device": "Device", "dtype": "Weights dtype",
    "autocast": "Mixed precision (autocast)", "cpu_threads": "CPU threads (0 = all)",
    "trust_remote_code": "Trust the model's own code", "task": "Task", "objective": "Objective",
    "objective_params": "Objective parameters", "lmbda": "Teacher-prefix share λ", "temperature": "Sampling temperature",
    "top_p": "Rollout top-p (nucleus)", "top_k": "Rollout top-k (0 = off)", "max_new_tokens": "Max new tokens",
    "num_rollouts": "Rollouts per prompt", "prompts_per_step": "Prompts per step", "steps": "Training steps",
    "learning_rate": "Learning rate", "warmup_steps": "Warm-up steps", "weight_decay": "Weight decay",
    "max_grad_norm": "Gradient clip (max norm)", "seed": "Random seed",
    "mask_special_tokens": "Mask special tokens", "mask_token_strings": "Also mask these token strings",
    "mask_after_eos": "Mask everything after EOS", "log_tokens_every": "Log tokens every N steps",
    "log_samples": "Samples logged per step (0 = all)", "log_top_k": "Candidates logged per token",
    "reference_rollouts": "Log teacher-prefix reference rollouts", "rescue_budget": "Rescue cuts per logging step", "nucleus_p": "Nucleus p for drift",
    "eval_every": "Evaluate every N steps", "eval_size": "Evaluation prompts", "checkpoint_every": "Checkpoint every N steps",
}
PARAM_PREFIX = "param"  # widget keys of objective parameters: "<form>:param:<objective>:<name>"
GENERAL = "_general"  # key of an error that names no single field
_FIELD_IN_MESSAGE = re.compile(r"config field '([A-Za-z_][A-Za-z0-9_.]*)'")


def form_fields() -> list[dict]:
    """The field docs the form shows (everything except the lineage that fork sets)."""
    return [d for d in field_docs() if d["name"] not in LINEAGE]


def presets() -> list[str]:
    """Names of the shipped example configs (baseline, masked, top_p, ...)."""
    return sorted(p.stem for p in examples_dir().glob("*.toml"))


def defaults() -> dict[str, Any]:
    return {d["name"]: d["default"] for d in form_fields()}


def preset_values(name: str) -> dict[str, Any]:
    """The form's starting values for a shipped preset: its fields over the config defaults."""
    data = read_config_file(name)
    values = defaults()
    params = dict(data.pop("objective_params", None) or {})
    values.update({k: v for k, v in data.items() if k in values})
    values["objective_params"] = {**values.get("objective_params", {}), **params,
                                  **{k: v for k, v in data.items() if k not in values}}
    return values


def run_values(run_dir: str | Path) -> dict[str, Any]:
    """The form's starting values from an existing run's config.json (lineage dropped)."""
    values = defaults()
    values.update({k: v for k, v in runs.read_config(run_dir).items() if k in values})
    return values


def to_text(value: Any) -> str:
    """How a value is shown in a text box (JSON for dicts and lists, plain otherwise)."""
    if isinstance(value, dict | list):
        return json.dumps(value)
    return "" if value is None else str(value)


def error_field(message: str) -> str:
    """The field a config error message names (``objective_params.k`` -> ``objective_params``)."""
    m = _FIELD_IN_MESSAGE.search(message)
    return m.group(1).split(".")[0] if m else GENERAL


def field_errors(values: Mapping[str, Any]) -> dict[str, str]:
    """Every field's error at once: each field alone first, then the whole config (paths, cross-field).

    Returns ``{field: message}`` (``GENERAL`` for an error that names no field); empty when valid.
    """
    errors: dict[str, str] = {}
    for name, value in values.items():
        if name == "objective_params":
            continue
        try:
            from_dict({name: value}, check_paths=False)
        except ConfigError as exc:
            errors[name] = str(exc)
    params = values.get("objective_params")
    if params is not None and not isinstance(params, dict):
        errors["objective_params"] = (f"config field 'objective_params': {params!r} is not a JSON object; "
                                      'write e.g. {"k": 16}')
    elif "objective" not in errors and "objective_params" in values:
        try:
            from_dict({"objective": values.get("objective", "sampled_token"),
                       "objective_params": values["objective_params"]}, check_paths=False)
        except ConfigError as exc:
            errors["objective_params"] = str(exc)
    if not errors:
        try:
            from_dict(dict(values))
        except ConfigError as exc:
            errors[error_field(str(exc))] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a broken install must not break the form
            errors[GENERAL] = f"the config could not be checked: {type(exc).__name__}: {exc}"
    return errors


def to_config(values: Mapping[str, Any]) -> RunConfig:
    """The validated config of the form's values (raises ConfigError with the config's message)."""
    return from_dict(dict(values))


# ----------------------------------------------------------------------------- widgets


def widget_key(prefix: str, name: str) -> str:
    return f"{prefix}:{name}"


def _is_flag(doc: dict) -> bool:
    return doc["type"] is bool


def label(name: str) -> str:
    """A field's widget label: the human name, then the config name (as the CLI and TOML spell it)."""
    return f"{LABELS.get(name, name.replace('_', ' ').capitalize())} · {name}"


def load_values(values: Mapping[str, Any], prefix: str) -> None:
    """Put ``values`` into the form's widgets (call before the widgets are drawn, e.g. in an on_change)."""
    for doc in form_fields():
        value = values.get(doc["name"], doc["default"])
        if doc["name"] == "objective_params":
            st.session_state[widget_key(prefix, "objective_params")] = dict(value) if isinstance(value, Mapping) else {}
            for key in [k for k in st.session_state if str(k).startswith(f"{prefix}:{PARAM_PREFIX}:")]:
                del st.session_state[key]  # typed widgets refill from the new source's parameters
            continue
        st.session_state[widget_key(prefix, doc["name"])] = bool(value) if _is_flag(doc) else to_text(value)


def param_specs(objective: str) -> dict[str, dict[str, Any]]:
    """The objective's declared parameters (kind, default, range, choices, help) from the registry."""
    from opd_core.objectives import get_objective

    try:
        spec = get_objective(objective)
    except ValueError:
        return {}
    describe = getattr(spec, "describe_params", None)
    if describe is not None:
        return describe()
    return {name: {"kind": type(p.default).__name__ if p.default is not None else "float", "default": p.default,
                   "lo": None, "hi": None, "choices": [], "nullable": p.default is None, "valid": p.valid, "help": ""}
            for name, p in spec.param_specs.items()}


def _param_widget(objective: str, name: str, spec: Mapping[str, Any], start: Any, prefix: str) -> Any:
    """One typed widget for one objective parameter, its bounds and help from the registry."""
    key = f"{prefix}:{PARAM_PREFIX}:{objective}:{name}"
    kind, default = spec.get("kind"), spec.get("default")
    value = start if start is not None or spec.get("nullable") else default
    text = f"{name} · {spec.get('valid', '')}"
    help_text = (spec.get("help") or "") + f" Default: {default!r}."
    if kind == "bool":
        st.session_state.setdefault(key, bool(value))
        return st.checkbox(text, key=key, help=help_text)
    if kind == "choice":
        options = list(spec.get("choices") or [default])
        st.session_state.setdefault(key, value if value in options else default)
        return st.selectbox(text, options, key=key, help=help_text)
    if spec.get("nullable"):
        off_key = f"{key}:off"
        st.session_state.setdefault(off_key, value is None)
        left, right = st.columns([1, 3], vertical_alignment="bottom")
        off = left.checkbox("off", key=off_key, help=f"{name} = none")
        if off:
            right.caption(f"{name}: off")
            return None
    lo, hi = spec.get("lo"), spec.get("hi")
    if kind == "int":
        st.session_state.setdefault(key, int(value if value is not None else (lo or 1)))
        return int(st.number_input(text, min_value=None if lo is None else int(lo), max_value=None if hi is None
                                   else int(hi), step=1, key=key, help=help_text))
    fallback = default if default is not None else (1.0 if lo is None else max(float(lo), 1.0))
    st.session_state.setdefault(key, float(value if value is not None else fallback))
    minimum = None if lo is None else float(lo)
    if minimum is not None and spec.get("lo_open"):
        minimum = None  # an open bound cannot be a widget minimum; the registry's check refuses lo itself
    return float(st.number_input(text, min_value=minimum, max_value=None if hi is None else float(hi),
                                 step=0.05 if hi is not None and float(hi) <= 1.0 else 0.1, format="%g", key=key,
                                 help=help_text))


def objective_params_widgets(objective: str, prefix: str) -> dict[str, Any]:
    """Typed widgets for the chosen objective's parameters, generated from its registry entry."""
    specs = param_specs(objective)
    start = st.session_state.get(widget_key(prefix, "objective_params")) or {}
    if not specs:
        st.caption(f"{objective} takes no parameters.")
        return {}
    st.markdown(f"**{LABELS['objective_params']}** · objective_params ({objective})")
    return {name: _param_widget(objective, name, spec, start.get(name), prefix) for name, spec in specs.items()}


def _raw_value(doc: dict, raw: Any) -> Any:
    """A widget's value as from_dict takes it: text is parsed by the config's own coercion."""
    if isinstance(raw, str) and doc["type"] in (dict, list):
        text = raw.strip()
        if not text:
            return {} if doc["type"] is dict else []
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text  # a list also takes "a,b"; a dict that is not JSON is reported by field_errors
    return raw


def _draw_field(doc: dict, prefix: str, objective: str | None = None) -> Any:
    key = widget_key(prefix, doc["name"])
    label_text, help_text = label(doc["name"]), doc["help"]
    if doc["name"] == "objective_params":
        return objective_params_widgets(objective or "sampled_token", prefix)
    if _is_flag(doc):
        return st.checkbox(label_text, key=key, help=help_text)
    if doc["name"] == "objective":
        from opd_core.objectives import list_objectives

        options = list_objectives()
        if st.session_state.get(key) not in options:
            st.session_state[key] = doc["default"]
        return st.selectbox(label_text, options, key=key, help=help_text)
    if "choices" in doc:
        options = list(doc["choices"])
        if st.session_state.get(key) not in options:
            st.session_state[key] = doc["default"]
        return st.selectbox(label_text, options, key=key, help=help_text)
    return _raw_value(doc, st.text_input(label_text, key=key, help=help_text))


def config_form(initial: Mapping[str, Any], prefix: str = "cfg") -> tuple[dict[str, Any], dict[str, str]]:
    """Draw every config field in its group; returns (values, errors) with errors shown under their fields.

    ``initial`` fills widgets that have no value yet; to switch sources later call :func:`load_values`.
    """
    docs = form_fields()
    if widget_key(prefix, docs[0]["name"]) not in st.session_state:
        load_values(initial, prefix)
    groups = [g for g in GROUPS if any(d["group"] == g for d in docs)]
    values: dict[str, Any] = {}
    slots: dict[str, Any] = {}
    columns = st.columns(2)
    for i, group in enumerate(groups):
        with columns[i % 2].container(border=True):
            st.markdown(f"**{group}**")
            for doc in (d for d in docs if d["group"] == group):
                values[doc["name"]] = _draw_field(doc, prefix, values.get("objective"))
                slots[doc["name"]] = st.empty()
    errors = field_errors(values)
    for name, message in errors.items():
        if name in slots:
            slots[name].error(message, icon=":material/error:")
    if GENERAL in errors or any(name not in slots for name in errors):
        for name, message in errors.items():
            if name not in slots:
                st.error(message, icon=":material/error:")
    return values, errors
