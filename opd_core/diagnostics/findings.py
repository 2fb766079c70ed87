"""What a health report is made of: failure modes, severities, thresholds, a finding and the report.

Kept apart from the checks (``health.py``, ``training_checks.py``) so the dashboard and the command line
read these types without loading the analyses, and each file stays one job.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from opd_core import runs

SEVERITIES: tuple[str, ...] = ("critical", "warning", "info")  # most severe first: the one order everywhere
# The failure modes a finding names; the dashboard maps each to the page showing its evidence (app/navigation.py).
MODES: tuple[str, ...] = ("imbalance", "drift", "mismatch", "collapse", "training")


def severity_rank(severity: str) -> int:
    """Sort key of a severity: 0 for the most severe; unknown severities last."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def _dense_objectives() -> frozenset[str]:
    """Objectives whose per-token signal is a divergence over the vocabulary, spread over every token by
    design: every registered objective that needs more of the teacher than its sampled log-prob."""
    from opd_core.objectives import TeacherNeeds, get_objective, list_objectives

    return frozenset(n for n in list_objectives() if get_objective(n).needs is not TeacherNeeds.SAMPLED)


DENSE_OBJECTIVES = _dense_objectives()


@dataclass(frozen=True)
class Thresholds:
    """Where each check starts to speak; the reasons are in docs/diagnostics.md."""

    min_tokens: int = 200               # fewer trained tokens than this: too few to judge concentration
    gini_warning: float = 0.6           # half-normal noise gives ~0.41, exponential ~0.5
    gini_critical: float = 0.8
    top1_warning: float = 0.15          # exponential |signal| gives ~0.056 in the top 1%
    top1_critical: float = 0.3
    top5_warning: float = 0.35          # half-normal |signal| puts ~15% in the top 5%, exponential ~20%
    drift_min_tokens: int = 50          # drifted rows (and baseline rows) needed before comparing
    drift_min_share: float = 0.05       # fewer drifted tokens than this barely move the update
    drift_entropy_ratio: float = 2.0    # teacher twice as uncertain off-support as on its own prefixes
    drift_entropy_gap: float = 0.25     # ...and by at least this many nats (tiny entropies double easily)
    drift_critical_ratio: float = 4.0
    drift_critical_share: float = 0.25
    rescue_min_cuts: int = 20           # drifted cuts needed before a rescue rate is read
    rescue_drop_warning: float = 0.25   # the teacher finishes 25 points fewer drifted prefixes than its own
    rescue_drop_critical: float = 0.5
    confidently_wrong_warning: float = 0.25  # a quarter of drifted cuts: top-1 >= 0.9 and still not rescued
    matched_entropy_gap: float = 0.1    # nats, drifted minus on-support at the same positions
    matched_top1_drop: float = 0.1      # top-1 probability, on-support minus drifted at the same positions
    onset_min_responses: int = 20       # responses with a first error (both sides of it logged) before reading it
    special_share_warning: float = 0.25
    special_share_critical: float = 0.5
    eos_share_warning: float = 0.15
    eos_log_ratio: float = -5.0         # teacher gives the student's EOS e^5 ~ 150x less probability
    support_fall_warning: float = 0.15  # absolute fall of the student's mass inside the teacher's top-K
    support_fall_critical: float = 0.3
    support_low: float = 0.3
    overlap_fall_warning: float = 0.25
    grad_spike_factor: float = 10.0     # grad norm over 10x the running median of the previous steps
    grad_window: int = 20
    length_ratio_warning: float = 1.5   # last-quarter mean response length over first-quarter mean
    length_cap_share: float = 0.9       # ...critical when it sits at max_new_tokens
    length_cap_min_ratio: float = 1.1   # at the cap, a 10% rise is enough to call it a runaway
    eval_drop_warning: float = 0.1      # accuracy points lost from the run's best eval to its last
    unaligned_warning: float = 0.1      # share of student tokens with no exact teacher alignment (masked)
    unaligned_critical: float = 0.4


THRESHOLDS = Thresholds()


@dataclass
class Finding:
    """One problem a run shows: what (mode, title), how bad, the numbers behind it, and what to try."""

    mode: str          # imbalance | drift | mismatch | collapse | training
    severity: str      # info | warning | critical
    title: str
    evidence: dict
    fix: str           # config settings to try, by their config names
    view: str          # the failure mode (MODES) whose evidence view shows it; the dashboard maps it to a page

    def to_dict(self) -> dict:
        return {**asdict(self), "evidence": runs.clean_json(self.evidence)}


@dataclass
class HealthReport:
    """The findings of one run, most severe first, and the checks that could not run (and why)."""

    run_dir: Path
    findings: list[Finding]
    skipped: list[str] = field(default_factory=list)
    objective: str | None = None
    problems: list[str] = field(default_factory=list)  # damaged files of the run, each named

    def to_dict(self) -> dict:
        return {"run_dir": str(self.run_dir), "objective": self.objective,
                "findings": [f.to_dict() for f in self.findings], "skipped": list(self.skipped),
                "problems": list(self.problems)}

    def modes(self) -> set[str]:
        """The failure modes flagged (for tests and quick checks)."""
        return {f.mode for f in self.findings}


def _num(value: Any, digits: int = 4) -> Any:
    """Round evidence numbers so reports are readable; NaN stays NaN (None in JSON)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
