"""The run configuration: one typed, documented, validated record that reproduces a run.

Field names follow what this field already uses (TRL's GKD/distillation configs, tinker-cookbook):
``lmbda`` is the probability a step trains on student-generated prefixes, ``num_rollouts`` the
samples per prompt. Every field carries a help text and a group, which the CLI, the docs and the
Launch page's form all read, so the three never disagree.

Errors are one line naming the field, the value and what is allowed (``ConfigError``, a
``ValueError``); the CLI prints that line and exits 2 without creating a run directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

GROUPS = ("Models", "Task", "Objective", "Rollouts", "Optimisation", "Masking", "Logging")


class ConfigError(ValueError):
    """A configuration problem, worded as one line that names the field, the value and the fix."""


def _f(default: Any, group: str, help: str, **constraints: Any) -> Any:
    meta = {"group": group, "help": help, **constraints}
    if isinstance(default, dict | list):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one distillation run (``config.json`` in the run directory)."""

    # Models
    student: str = _f("toy:mismatched", "Models", "Student: a local Hugging Face checkpoint directory or a toy preset "
                      "(`toy:matched`, `toy:mismatched`: that preset's student).")
    teacher: str = _f("toy:mismatched", "Models", "Teacher (frozen): a local checkpoint directory or a toy preset "
                      "(`toy:mismatched` is a teacher whose tokenizer and chat template differ).")
    device: str = _f("auto", "Models", "`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:N`.")
    dtype: str = _f("float32", "Models", "Model weights dtype: float32, bfloat16, float16. Losses are always float32.",
                    choices=("float32", "bfloat16", "float16"))
    autocast: bool = _f(False, "Models", "Run both models' forward passes under bfloat16 autocast (mixed "
                        "precision: float32 weights and optimizer, bf16 matmuls). Losses stay float32.")
    cpu_threads: int = _f(0, "Models", "Torch CPU threads. 0 = auto: 1 thread when both models are small "
                          "(intra-op parallelism on tiny tensors costs more than it saves), else torch's default.",
                          lo=0, hi=1024)
    trust_remote_code: bool = _f(False, "Models", "Allow checkpoints that ship their own model code. Off by "
                                 "default: turning it on runs code from the checkpoint folder.")
    # Task
    task: str = _f("toy:addition", "Task", "`toy:addition` (built-in, graded) or a path to a JSONL file of "
                   "{\"prompt\": ..., \"answer\": optional} objects, one per line.")
    # Objective
    objective: str = _f("sampled_token", "Objective", "The distillation objective (see docs/objectives.md): "
                        "sampled_token, reverse_kl, forward_kl, jsd, kl_mix, topk_support, topk_head_tail.")
    objective_params: dict = _f({}, "Objective", "Parameters of the objective: gamma, clip_log_ratio, mask_mode "
                                "(sampled_token), beta (jsd), alpha (kl_mix), k, renormalize, support, tail_bucket, "
                                "clip_log_ratio (topk_support), k, support (topk_head_tail). "
                                "Set them as `--set k=16` or in an [objective_params] table.")
    lmbda: float = _f(1.0, "Objective", "Probability that a step trains on student-generated prefixes (on-policy); "
                      "otherwise the teacher generates them (GKD's lambda). 1.0 = pure on-policy.", lo=0.0, hi=1.0)
    # Objective: the seed recipe's knobs and the conventions against the peers, applied by the loop to every
    # objective (docs/objectives.md, "Conventions against the peers"); validated by _check_seed_recipe_field.
    entropy_top_ratio: float = _f(1.0, "Objective", "Train only on each response's top fraction of highest "
                                  "student-entropy tokens (the seed recipe uses 0.2); the others are masked "
                                  "with reason `entropy_gate`. 1.0 = off.", lo=0.0, lo_open=True, hi=1.0,
                                  check="finite")
    score_temperature: float | str = _f(1.0, "Objective", "Temperature both models' logits are divided by before "
                                        "the objective and the per-token statistics: a number > 0, or `rollout` "
                                        "= the rollout temperature (verl's convention; 1.0 for greedy rollouts). "
                                        "1.0 = the models' own distributions.", check="temperature")
    loss_reduction: str = _f("token_mean", "Objective", "`token_mean`: the sum over supervised tokens divided by "
                             "their global count (every token weighs the same); `sequence_mean`: the mean of "
                             "each response's token mean (every response weighs the same; the seed code's).",
                             choices=("token_mean", "sequence_mean"))
    # Rollouts
    temperature: float = _f(1.0, "Rollouts", "Sampling temperature of rollouts; 0 = greedy decoding.", lo=0.0,
                            hi=10.0)
    top_p: float = _f(1.0, "Rollouts", "Nucleus sampling of rollouts (the fix: 0.9 keeps prefixes nearer the "
                      "teacher's support). 1.0 = off.", lo=0.0, lo_open=True, hi=1.0)
    top_k: int = _f(0, "Rollouts", "Top-k sampling of rollouts; 0 = off.", lo=0, hi=10_000_000)
    max_new_tokens: int = _f(32, "Rollouts", "Longest response, in student tokens.", lo=1, hi=32768)
    num_rollouts: int = _f(4, "Rollouts", "Responses sampled per prompt.", lo=1, hi=1024)
    prompts_per_step: int = _f(8, "Rollouts", "Prompts per training step (batch = prompts_per_step x num_rollouts).",
                               lo=1, hi=4096)
    # Optimisation
    steps: int = _f(200, "Optimisation", "Training steps.", lo=1, hi=10_000_000)
    learning_rate: float = _f(1e-4, "Optimisation", "AdamW learning rate (constant after warmup). On the toy "
                              "pair 1e-3 destabilises every sampled-token run; see EXPERIMENTS.md.", lo=0.0,
                              lo_open=True, hi=1.0)
    warmup_steps: int = _f(0, "Optimisation", "Linear learning-rate warmup steps.", lo=0, hi=10_000_000)
    weight_decay: float = _f(0.0, "Optimisation", "AdamW weight decay.", lo=0.0, hi=1.0)
    max_grad_norm: float = _f(1.0, "Optimisation", "Clip the gradient norm to this; 0 = no clipping.", lo=0.0,
                              hi=1e6)
    seed: int = _f(0, "Optimisation", "Seed of prompts, sampling and initialisation; a run is reproducible from it.",
                   lo=0, hi=2**32 - 1)
    # Masking
    mask_special_tokens: bool = _f(False, "Masking", "The fix for failure mode 3: tokens whose meaning differs "
                                   "between the two tokenizers or templates carry no signal, and the student's EOS "
                                   "is shown to the teacher as the teacher's own EOS (mapped by meaning, not id).")
    mask_token_strings: list = _f([], "Masking", "Extra token strings to mask (the paper masks `<` and `think`).")
    mask_after_eos: bool = _f(True, "Masking", "Everything after the first EOS carries no signal.")
    # Logging
    log_tokens_every: int = _f(10, "Logging", "Write per-token records every N steps (0 = never; the first and "
                               "last steps are always logged when N > 0).", lo=0, hi=10_000_000)
    log_samples: int = _f(0, "Logging", "Responses logged per logging step (0 = all of the step's).", lo=0,
                          hi=1_000_000)
    log_top_k: int = _f(8, "Logging", "Candidates kept per token for the inspector (teacher's and student's top-K).",
                        lo=1, hi=256)
    reference_rollouts: bool = _f(True, "Logging", "At logging steps, also log the teacher's own rollouts of the "
                                  "same prompts (not trained on): the reference line of failure mode 2.")
    rescue_budget: int = _f(12, "Logging", "Failure mode 2 inside the loop: at each logging step, cuts of the step's "
                          "rollouts whose greedy teacher continuation is graded (the rescue rate). Each costs up to "
                          "max_new_tokens teacher tokens; 0 = no rescue phase (`opd-lab rescue` still measures it "
                          "afterwards).", lo=0, hi=10_000)
    nucleus_p: float = _f(0.9, "Logging", "Teacher nucleus used to measure drift: a sampled token outside the "
                          "teacher's top-p nucleus starts the `tokens_since_off_support` count.", lo=0.0,
                          lo_open=True, hi=1.0)
    eval_every: int = _f(50, "Logging", "Greedy eval on the task's eval split every N steps (0 = only at the end).",
                         lo=0, hi=10_000_000)
    eval_size: int = _f(64, "Logging", "Eval prompts.", lo=1, hi=10_000)
    checkpoint_every: int = _f(50, "Logging", "Save student, optimizer and step every N steps (0 = only at the end "
                               "and on stop). Resume and fork start from these.", lo=0, hi=10_000_000)
    stop_on_critical: bool = _f(False, "Logging", "Stop the run (finish the step, keep a checkpoint to fork from, "
                                "state `stopped`) when the health report finds a critical problem; evaluated by "
                                "`opd-lab train` each time new token records land.")
    # Lineage (written by fork; not set by hand)
    parent_run: str | None = _f(None, "Logging", "Run this one was forked from (set by `opd-lab runs fork`).",
                                lineage=True)
    fork_step: int | None = _f(None, "Logging", "Checkpoint step of the parent this run starts from.", lo=0,
                               lineage=True)
    init_checkpoint: str | None = _f(None, "Logging", "Checkpoint directory whose student weights and optimizer "
                                     "this run starts from (set by fork).", lineage=True)

    # ------------------------------------------------------------------ derived
    @property
    def batch_size(self) -> int:
        return self.prompts_per_step * self.num_rollouts

    @property
    def score_temperature_value(self) -> float:
        """The number ``score_temperature`` stands for (``rollout``: the rollout temperature, 1.0 if greedy)."""
        if self.score_temperature == "rollout":
            return self.temperature if self.temperature > 0 else 1.0
        return float(self.score_temperature)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return from_dict({**self.to_dict(), **changes})


FIELDS = {f.name: f for f in fields(RunConfig)}
# Fields written by fork, never typed by hand: declared once, by the ``lineage`` mark on the field.
LINEAGE_FIELDS: tuple[str, ...] = tuple(name for name, f in FIELDS.items() if f.metadata.get("lineage"))


@functools.cache
def objective_param_names() -> tuple[str, ...]:
    """Every parameter name of a registered objective (settable at top level: ``--set k=16``)."""
    from opd_core.objectives import get_objective, list_objectives

    names = {p for o in list_objectives() for p in get_objective(o).param_specs}
    return tuple(sorted(names - set(FIELDS)))


# Reading config files and --set overrides lives in opd_core/config_files.py; these names keep working here.
_FILE_NAMES = ('merge_config', 'parse_overrides', 'read_config_file', 'examples_dir', 'load_config', 'config_reference_markdown')


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVE_PARAM_NAMES":  # from the objective registry, so a new parameter needs no edit here
        return objective_param_names()
    if name in _FILE_NAMES:
        from opd_core import config_files

        return getattr(config_files, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def field_docs() -> list[dict]:
    """Every field with its group, default, type and help text (for docs, --help and the Launch form)."""
    out = []
    hints = typing.get_type_hints(RunConfig)
    for f in fields(RunConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append({"name": f.name, "group": f.metadata["group"], "help": f.metadata["help"], "default": default,
                    "type": hints[f.name],
                    **{k: v for k, v in f.metadata.items() if k not in ("group", "help", "check")}})
    return out


# ----------------------------------------------------------------------------- coercion and validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce_number(name: str, value: Any, tp: type) -> int | float:
    """An int or float field from a number or its text; booleans and fractional ints are refused."""
    what = "an integer" if tp is int else "a number"
    if not isinstance(value, bool):
        if isinstance(value, str):
            parsed = None
            with contextlib.suppress(ValueError):
                parsed = float(value) if tp is float else int(value)
            if parsed is not None:
                return _finite(name, parsed) if tp is float else parsed
        elif tp is float and isinstance(value, int | float):
            return _finite(name, float(value))
        elif tp is int and (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            return int(value)
    raise ConfigError(f"config field '{name}': {value!r} is not {what}")


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        default = FIELDS[name].default if name in FIELDS else None
        raise ConfigError(f"config field '{name}': {value!r} is not a finite number; give a number"
                          + (f" (default {default!r})" if isinstance(default, float) else ""))
    return value


def _coerce(name: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` to the field type; strings from ``--set`` are parsed (true/false, numbers, JSON)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none", "null")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _coerce(name, value, inner)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"config field '{name}': {value!r} is not a boolean; use true or false")
    if tp in (int, float):
        return _coerce_number(name, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config field '{name}': {value!r} is not a string")
    if tp in (dict, list) or origin in (dict, list):
        want = dict if (tp is dict or origin is dict) else list
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                if want is list:
                    value = [v for v in value.split(",") if v]
        if not isinstance(value, want):
            raise ConfigError(f"config field '{name}': {value!r} is not a {want.__name__}")
        return value
    return value


def _check_range(name: str, value: Any, meta: dict) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"config field '{name}': {value!r} is not allowed; choose one of {', '.join(meta['choices'])}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        op = ">" if meta.get("lo_open") else ">="
        allowed = f"{name} {op} {lo}" + (f" and <= {hi}" if hi is not None else "")
        raise ConfigError(f"config field '{name}': {value!r} is out of range; allowed: {allowed}")
    if hi is not None and value > hi:
        raise ConfigError(f"config field '{name}': {value!r} is out of range; allowed: {name} <= {hi}")


def _check_seed_recipe_field(name: str, value: Any, kind: str) -> Any:
    """The checks of entropy_top_ratio (a finite number) and score_temperature (a finite number > 0 or
    ``rollout``), whose values the generic coercion and range check cannot judge alone."""
    import math

    if kind == "temperature":
        if isinstance(value, str) and value.strip().lower() == "rollout":
            return "rollout"
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ConfigError(f"config field '{name}': {value!r} is not allowed; give a finite number > 0 "
                              "(1.0 = the models' own distributions) or `rollout`")
        return float(value)
    if not math.isfinite(value):
        raise ConfigError(f"config field '{name}': {value!r} is not a finite number")
    return value


def _check_model_ref(name: str, value: str) -> None:
    if value.startswith("toy:"):
        from opd_core.toy.presets import PRESETS

        if value not in PRESETS:
            raise ConfigError(f"config field '{name}': unknown preset {value!r}; presets: {', '.join(PRESETS)}")
        return
    path = Path(value).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return  # a GGUF checkpoint, read by transformers' GGUF support (models.py)
    if not path.is_dir():
        raise ConfigError(f"config field '{name}': {value!r} is not a directory; give a local Hugging Face "
                          "checkpoint folder (with config.json), a .gguf file or a preset such as toy:matched")
    if not (path / "config.json").exists() and not any(path.glob("*.gguf")):
        raise ConfigError(f"config field '{name}': {value!r} has no config.json, so it is not a Hugging Face "
                          "checkpoint (nor a folder holding a .gguf file); point at the folder save_pretrained "
                          "wrote, or convert a GGUF file with `opd-lab models convert`")


def _check_task(value: str) -> None:
    if value.startswith("toy"):
        if value not in ("toy", "toy:addition", "toy:addition-v2"):
            raise ConfigError(f"config field 'task': unknown built-in task {value!r}; use toy:addition, "
                              "toy:addition-v2 or a .jsonl path")
        return
    if not Path(value).expanduser().is_file():
        raise ConfigError(f"config field 'task': {value!r} is not a file; give a JSONL file of prompts or toy:addition")


def objective_params_table(value: Any) -> dict:
    """``objective_params`` in any documented form (a table, a JSON string, nothing) as a dict, or one line
    saying how to write it."""
    if value is None or value == "":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ConfigError(f"config field 'objective_params': {value!r} is not a JSON object; "
                              'write e.g. {"k": 16} or set one parameter with --set k=16') from None
    if not isinstance(value, dict):
        raise ConfigError(f"config field 'objective_params': {value!r} is not a table of name = value; "
                          'write e.g. {"k": 16}')
    return dict(value)


def from_dict(data: dict, *, check_paths: bool = True) -> RunConfig:
    """Build and validate a config; unknown fields, wrong types and out-of-range values are one-line errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a table/object of field = value pairs, not a {type(data).__name__}; "
                          'write e.g. {"steps": 20}')
    data = dict(data)
    # Objective parameters may be given at top level (`--set k=16`, `gamma = 0.5`) for convenience.
    params = objective_params_table(data.pop("objective_params", None))
    for key in objective_param_names():
        if key in data:
            params[key] = data.pop(key)
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        from difflib import get_close_matches

        hint = get_close_matches(unknown[0], list(FIELDS) + list(objective_param_names()), n=1)
        suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise ConfigError(f"config field '{unknown[0]}' is not a known field{suggestion}; "
                          "see `docs/config.md` for the list")
    hints = typing.get_type_hints(RunConfig)
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _coerce(name, value, hints[name])
        if "check" in FIELDS[name].metadata:
            values[name] = _check_seed_recipe_field(name, values[name], FIELDS[name].metadata["check"])
        _check_range(name, values[name], FIELDS[name].metadata)
    objective = values.get("objective", FIELDS["objective"].default)
    values["objective_params"] = _validate_objective(objective, params)
    if check_paths:
        for name in ("student", "teacher"):
            _check_model_ref(name, values.get(name, FIELDS[name].default))
        _check_task(values.get("task", FIELDS["task"].default))
    return RunConfig(**values)


def _parse_param_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            continue
    return value


def _validate_objective(name: str, params: dict) -> dict:
    from opd_core.objectives import list_objectives, validate_params

    if name not in list_objectives():
        raise ConfigError(f"config field 'objective': unknown objective {name!r}; "
                          f"choose one of {', '.join(list_objectives())}")
    try:
        return validate_params(name, {k: _parse_param_value(v) for k, v in params.items()})
    except ValueError as exc:
        raise ConfigError(f"config field 'objective_params': {exc}") from None
