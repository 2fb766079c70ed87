"""The one input type, the one output type and the registry every objective plugs into.

An objective is registered with a decorator that declares what it needs from the teacher
(:class:`TeacherNeeds`) and which parameters it takes (each with a default and a valid range), so the
engine can score only what is needed and a bad parameter fails before any tensor is touched.
"""

from __future__ import annotations

import enum
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


class TeacherNeeds(enum.Enum):
    """What the teacher must provide per token, so the engine keeps only that (memory at large vocabularies)."""

    FULL = "full"  # the teacher's raw logits over the whole vocabulary
    TOPK = "topk"  # the teacher's top-K ids and log-probs (and the sampled token's log-prob)
    SAMPLED = "sampled"  # only log p_T of the sampled token


@dataclass
class ObjectiveBatch:
    """The one input type of every objective: the student's logits plus the teacher view it needs."""

    student_logits: Tensor  # [B,T,V] raw logits, any float dtype, requires grad
    sampled_ids: Tensor  # [B,T] int64
    mask: Tensor  # [B,T] bool; True = token carries supervision
    teacher_logits: Tensor | None = None  # [B,T,V] raw teacher logits (FULL objectives); may be bf16
    teacher_sampled_logp: Tensor | None = None  # [B,T] log p_T(y_t) (SAMPLED objectives)
    teacher_topk_ids: Tensor | None = None  # [B,T,K] int64, the teacher's top-K ids, sorted desc (TOPK)
    teacher_topk_logps: Tensor | None = None  # [B,T,K] full-vocab normalised teacher log-probs at those ids
    # [B,T] bool: the tokens whose log-ratio enters sampled_token's discounted return (None = ``mask``).
    # The seed code runs the return over the response and applies its special-token mask to the loss only.
    reward_mask: Tensor | None = None


@dataclass
class ObjectiveOutput:
    """The one output type: per-token loss to reduce, per-token signal to diagnose, optional extras.

    ``loss`` is what is differentiated (for a policy-gradient objective a *surrogate* whose value means
    nothing); ``value`` is the per-token divergence the objective estimates, the number that means the
    same across objectives and is logged as ``loss`` (for ``sampled_token`` -r_t, the Monte-Carlo reverse
    KL). An objective that leaves ``value`` None has value = its loss (the divergences).
    """

    loss: Tensor  # [B,T] float32, zero where masked, differentiable wrt student_logits
    signal: Tensor  # [B,T] float32, detached, zero where masked
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-token diagnostics [B,T], detached
    value: Tensor | None = None  # [B,T] float32, detached, zero where masked: the divergence estimate


class ObjectiveError(ValueError):
    """A bad objective name, parameter or batch; the message names the problem and the fix."""


@dataclass(frozen=True)
class Param:
    """One objective parameter: default, check, and what a form needs to draw a typed widget for it.

    ``kind`` is one of ``float``, ``int``, ``bool``, ``choice``; ``lo`` / ``hi`` bound numbers (``lo_open``:
    ``lo`` itself excluded), ``choices`` lists a choice's options, ``nullable`` allows None (off), ``valid``
    says the range in words and ``help`` what the parameter does.
    """

    default: Any
    check: Callable[[Any], Any]  # returns the normalised value or raises ValueError
    valid: str
    kind: str = "float"
    help: str = ""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False

    def describe(self) -> dict[str, Any]:
        """The parameter as plain data (type, default, range, help) for forms and docs."""
        return {"kind": self.kind, "default": self.default, "lo": self.lo, "hi": self.hi,
                "lo_open": self.lo_open, "choices": list(self.choices), "nullable": self.nullable,
                "valid": self.valid, "help": self.help}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def unit_interval(default: float, help: str = "") -> Param:
    """A float in [0, 1] (discounts, mixing weights)."""

    def check(value: Any) -> float:
        if not _is_real(value) or math.isnan(float(value)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError
        return float(value)

    return Param(default, check, "a float in [0, 1]", "float", help, 0.0, 1.0)


def positive_float_or_none(default: float | None, help: str = "") -> Param:
    """None (off) or a finite float > 0 (clipping bounds)."""

    def check(value: Any) -> float | None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "off", "")):
            return None
        if not _is_real(value) or not math.isfinite(float(value)) or float(value) <= 0.0:
            raise ValueError
        return float(value)

    return Param(default, check, "none (off) or a finite float > 0", "float", help, 0.0, None, lo_open=True,
                 nullable=True)


def positive_int(default: int, help: str = "") -> Param:
    """An integer >= 1 (sizes)."""

    def check(value: Any) -> int:
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or int(value) < 1:
            raise ValueError
        return int(value)

    return Param(default, check, "an integer >= 1", "int", help, 1, None)


def boolean(default: bool, help: str = "") -> Param:
    """A true/false switch."""

    def check(value: Any) -> bool:
        if not isinstance(value, bool) and type(value).__name__ != "bool_":  # numpy.bool_ too
            raise ValueError
        return bool(value)

    return Param(default, check, "true or false", "bool", help)


def choice(default: str, options: tuple[str, ...], help: str = "") -> Param:
    """One string out of a fixed set."""

    def check(value: Any) -> str:
        if value not in options:
            raise ValueError
        return str(value)

    return Param(default, check, "one of " + ", ".join(repr(o) for o in options), "choice", help,
                 choices=tuple(options))


ObjectiveFn = Callable[..., ObjectiveOutput]


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective: its name, what it needs from the teacher, its parameters and its doc."""

    name: str
    fn: ObjectiveFn
    needs: TeacherNeeds  # what it needs with default parameters
    param_specs: Mapping[str, Param]
    doc: str
    needs_fn: Callable[[dict[str, Any]], TeacherNeeds] | None = None

    @property
    def params(self) -> dict[str, Any]:
        """The parameter defaults."""
        return {name: p.default for name, p in self.param_specs.items()}

    def describe_params(self) -> dict[str, dict[str, Any]]:
        """Every parameter as plain data: {name: {kind, default, lo, hi, choices, nullable, valid, help}}."""
        return {name: p.describe() for name, p in self.param_specs.items()}

    def needs_for(self, params: Mapping[str, Any]) -> TeacherNeeds:
        """What the teacher must provide for these parameters (e.g. a student-chosen support needs FULL)."""
        if self.needs_fn is None:
            return self.needs
        return self.needs_fn(self.validate(params))

    def validate(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and check every value; raise ObjectiveError naming the parameter and its range."""
        unknown = sorted(set(params) - set(self.param_specs))
        if unknown:
            valid = ", ".join(sorted(self.param_specs)) or "none"
            raise ObjectiveError(
                f"objective {self.name!r} has no parameter {unknown[0]!r}; its parameters are: {valid}"
            )
        resolved = {}
        for name, spec in self.param_specs.items():
            value = params.get(name, spec.default)
            try:
                resolved[name] = spec.check(value)
            except (ValueError, TypeError):
                raise ObjectiveError(
                    f"objective {self.name!r}: parameter {name!r} must be {spec.valid}, got {value!r}"
                ) from None
        return resolved


_REGISTRY: dict[str, ObjectiveSpec] = {}


def register_objective(
    name: str,
    *,
    needs: TeacherNeeds,
    params: Mapping[str, Param] | None = None,
    needs_fn: Callable[[dict[str, Any]], TeacherNeeds] | None = None,
) -> Callable[[ObjectiveFn], ObjectiveFn]:
    """Register ``fn(batch, *, chunk_tokens, **params) -> ObjectiveOutput`` under ``name``.

    ``needs`` declares the teacher view with default parameters; ``needs_fn`` (optional) refines it for
    given parameters.
    """

    def decorator(fn: ObjectiveFn) -> ObjectiveFn:
        if name in _REGISTRY:
            raise ObjectiveError(f"objective {name!r} is registered twice")
        doc = (fn.__doc__ or "").strip()
        _REGISTRY[name] = ObjectiveSpec(name, fn, needs, dict(params or {}), doc, needs_fn)
        return fn

    return decorator


def list_objectives() -> list[str]:
    """The names of every registered objective, sorted."""
    return sorted(_REGISTRY)


def get_objective(name: str) -> ObjectiveSpec:
    """The spec of one objective; an unknown name raises ObjectiveError listing the valid names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ObjectiveError(
            f"unknown objective {name!r}; valid names: {', '.join(list_objectives())}"
        ) from None


def validate_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The full parameter dict of one objective (defaults filled), or ObjectiveError naming the bad one."""
    return get_objective(name).validate(params)
