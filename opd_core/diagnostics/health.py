"""The run health report: which failure modes a run shows, the numbers that show it, and the fix to try.

``health(run_dir)`` reads only the columns the checks need from a few evenly spread logged steps (the
first and last always), runs each failure-mode check and the cheap training checks on the metrics, and
returns findings. Each check stays quiet unless its evidence clears the thresholds in ``THRESHOLDS``;
docs/diagnostics.md says why each threshold sits where it does.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from opd_core import runs
from opd_core.diagnostics import collapse, drift, imbalance, mismatch
from opd_core.diagnostics.findings import (  # noqa: F401 - the report's types, importable from here too
    DENSE_OBJECTIVES,
    MODES,
    SEVERITIES,
    THRESHOLDS,
    Finding,
    HealthReport,
    Thresholds,
    _finite,
    _num,
    severity_rank,
)
from opd_core.diagnostics.loading import DiagnosticsError, read_run_tokens
from opd_core.diagnostics.training_checks import _nonfinite_steps, check_tokenizer_pair, check_training  # noqa: F401

# ----------------------------------------------------------------------------- failure-mode checks


def check_imbalance(tokens: pd.DataFrame, objective: str | None, t: Thresholds = THRESHOLDS) -> list[Finding]:
    """FM1 on sampled-token runs: a few ordinary tokens carry most of |signal| (special tokens left to FM3)."""
    if objective in DENSE_OBJECTIVES:
        return []
    s = imbalance.summary(tokens, exclude_special=True)
    if s["n_tokens"] < t.min_tokens or not (_finite(s["gini"]) and _finite(s["top1pct_share"])):
        return []
    concentrated = s["top1pct_share"] >= t.top1_warning or (
        _finite(s.get("top5pct_share")) and s["top5pct_share"] >= t.top5_warning)
    if s["gini"] < t.gini_warning or not concentrated:
        return []
    critical = s["gini"] >= t.gini_critical and s["top1pct_share"] >= t.top1_critical
    neg = imbalance.negative_reward_share_by_step(tokens)
    evidence = {"gini": _num(s["gini"]), "top1pct_share": _num(s["top1pct_share"]),
                "top5pct_share": _num(s["top5pct_share"]), "n_tokens": s["n_tokens"],
                "negative_reward_share_first_step": _num(float(neg["negative_share"].iloc[0])) if len(neg) else None}
    return [Finding(
        mode="imbalance", severity="critical" if critical else "warning",
        title=(f"the top 1% of tokens carry {s['top1pct_share']:.0%} of the signal "
               f"(Gini {s['gini']:.2f}): a handful of positions drive the update"),
        evidence=evidence,
        fix="objective=topk_support (objective_params.k=32, objective_params.renormalize=true): dense, bounded "
            "supervision on the teacher's top-K at every visited prefix",
        view="imbalance",
    )]


def _rescue_reasons(rescue_summary: dict | None, t: Thresholds) -> tuple[list[str], dict, bool]:
    """Evidence from the rescue rate (rescue.json or the per-step metrics): (reasons, evidence, critical)."""
    if not rescue_summary or (rescue_summary.get("n_drifted") or 0) < t.rescue_min_cuts:
        return [], {}, False
    drifted = rescue_summary.get("rescue_rate_drifted")
    base = rescue_summary.get("rescue_rate_teacher_own")
    base_name = "its own prefixes"
    if not _finite(base):
        base, base_name = rescue_summary.get("rescue_rate_on_support"), "error-free student prefixes"
    evidence = {k: _num(rescue_summary.get(k)) for k in (
        "rescue_rate_drifted", "rescue_rate_mild", "rescue_rate_far", "rescue_rate_before_error",
        "rescue_rate_on_support", "rescue_rate_teacher_own", "rescue_rate_drifted_sampled",
        "confidently_wrong_share", "rescue_fall_mild_far", "rescue_fall_mild_far_se", "rescue_fall_pairs",
        "far_min_since_error") if k in rescue_summary}
    evidence["rescue_cuts_drifted"] = rescue_summary.get("n_drifted")
    reasons, critical = [], False
    if _finite(drifted) and _finite(base) and base - drifted >= t.rescue_drop_warning:
        reasons.append(f"the teacher finishes {drifted:.0%} of drifted student prefixes correctly against "
                       f"{base:.0%} of {base_name}")
        critical = base - drifted >= t.rescue_drop_critical
    wrong = rescue_summary.get("confidently_wrong_share")
    if _finite(wrong) and wrong >= t.confidently_wrong_warning:
        reasons.append(f"on {wrong:.0%} of drifted prefixes it is confidently wrong (top-1 >= 0.9, not rescued)")
    return reasons, evidence, critical


def check_drift(tokens: pd.DataFrame, t: Thresholds = THRESHOLDS, rescue_summary: dict | None = None) -> list[Finding]:
    """FM2: the teacher fails to rescue drifted student prefixes (rescue rate), is confidently wrong there,
    or is less certain there than on on-support prefixes at the same positions / on its own rollouts."""
    reasons, evidence, critical = _rescue_reasons(rescue_summary, t)
    pm = drift.position_matched_gap(tokens)
    if pm["n_drifted"] >= t.drift_min_tokens and (pm["entropy_gap"] >= t.matched_entropy_gap
                                                   or pm["top1_drop"] >= t.matched_top1_drop):
        reasons.append(f"at the same positions its entropy is {pm['entropy_gap']:+.2f} nats and its top-1 "
                       f"probability {-pm['top1_drop']:+.2f} on drifted against on-support prefixes")
    evidence.update({"position_matched_entropy_gap": _num(pm["entropy_gap"]),
                     "position_matched_top1_drop": _num(pm["top1_drop"]),
                     "position_matched_n_drifted": pm["n_drifted"]})
    onset = drift.error_onset(tokens)
    if onset["n"] >= t.onset_min_responses and _finite(onset["top1_drop"]) and (
            onset["top1_drop"] >= t.matched_top1_drop and onset["top1_drop"] >= 2 * onset["top1_drop_se"]):
        reasons.append(f"right after the student's first error its top-1 probability falls from "
                       f"{onset['top1_before']:.0%} to {onset['top1_after']:.0%} (entropy "
                       f"{onset['entropy_gap']:+.2f} nats; {onset['n']} responses)")
    evidence.update({f"error_onset_{k}": _num(onset[k]) for k in (
        "top1_before", "top1_after", "top1_drop", "top1_drop_se", "entropy_gap", "n")})
    entropy = _entropy_finding(tokens, t)
    if entropy is not None:
        entropy.evidence.update(evidence)
        if reasons:
            entropy.title += "; " + "; ".join(reasons)
        if critical:
            entropy.severity = "critical"
        return [entropy]
    if not reasons:
        return []
    return [Finding(
        mode="drift", severity="critical" if critical else "warning",
        title="the teacher is unreliable on the student's drifted prefixes: " + "; ".join(reasons),
        evidence=evidence, fix=DRIFT_FIX, view="drift",
    )]


DRIFT_FIX = ("top_p=0.9 (rollouts stay in the student's nucleus, nearer the teacher's support); "
             "objective=topk_support (objective_params.k=32: match the teacher only where it has support); "
             "a shorter max_new_tokens (less room to drift far); a lower learning_rate; or fork from a "
             "checkpoint before the drift (`opd-lab runs fork RUN --step N`); lmbda=0.5 mixes in teacher prefixes")


def _entropy_finding(tokens: pd.DataFrame, t: Thresholds) -> Finding | None:
    """The entropy-ratio form of the drift finding (teacher much less certain than on its own rollouts)."""
    s = drift.summary(tokens)
    if s["measure"] is None or s["n_drifted"] < t.drift_min_tokens or not _finite(s["drifted_share"]):
        return None
    if s["drifted_share"] < t.drift_min_share:
        return None
    if s["n_reference"] >= t.drift_min_tokens and _finite(s["teacher_entropy_reference"]):
        baseline, base_name = s["teacher_entropy_reference"], "teacher's own rollouts"
    elif s["n_undrifted"] >= t.drift_min_tokens and _finite(s["teacher_entropy_undrifted"]):
        baseline, base_name = s["teacher_entropy_undrifted"], "on-support student prefixes"
    else:
        return None
    drifted = s["teacher_entropy_drifted"]
    if not _finite(drifted) or drifted - baseline < t.drift_entropy_gap:
        return None
    ratio = drifted / baseline if baseline > 0 else math.inf
    if ratio < t.drift_entropy_ratio:
        return None
    critical = ratio >= t.drift_critical_ratio and s["drifted_share"] >= t.drift_critical_share
    evidence = {"measure": s["measure"], "baseline": base_name, "drifted_share": _num(s["drifted_share"]),
                "n_drifted": s["n_drifted"], "teacher_entropy_drifted": _num(drifted),
                "teacher_entropy_baseline": _num(baseline), "entropy_ratio": _num(ratio),
                "teacher_top1_prob_drifted": _num(s["teacher_top1_prob_drifted"]),
                "teacher_top1_prob_reference": _num(s["teacher_top1_prob_reference"]),
                "teacher_rank_drifted": _num(s["teacher_rank_drifted"]),
                "teacher_rank_reference": _num(s["teacher_rank_reference"])}
    return Finding(
        mode="drift", severity="critical" if critical else "warning",
        title=(f"once the student drifts ({s['drifted_share']:.0%} of its tokens), the teacher's entropy is "
               f"{ratio:.1f}x that on the {base_name}: its guidance there is close to noise"),
        evidence=evidence,
        fix=DRIFT_FIX,
        view="drift",
    )


def check_mismatch(tokens: pd.DataFrame, alignment: dict | None, config: dict,
                   t: Thresholds = THRESHOLDS) -> list[Finding]:
    """FM3: special tokens / EOS carry a large, wrong signal, or the pair disagrees on them with masking off."""
    s = mismatch.summary(tokens, alignment)
    # The larger of the pooled share and the first logged step's: a broken EOS shrinks its own pooled share
    # as the student stops ending its answers (docs/diagnostics.md).
    special = _larger(s.get("special_signal_share"), s.get("special_signal_share_first_step"))
    eos = _larger(s.get("eos_signal_share"), s.get("eos_signal_share_first_step"))
    eos_ratio, eos_masked = s.get("eos_mean_log_ratio"), s.get("eos_masked_share")
    masking_on = bool(config.get("mask_special_tokens"))
    reasons = []
    if _finite(special) and special >= t.special_share_warning:
        reasons.append(f"special tokens carry {special:.0%} of the signal{_where(s, 'special_signal_share', special)}")
    if _finite(eos) and eos >= t.eos_share_warning:
        enrich = s.get("eos_signal_enrichment_first_step")
        times = f", {enrich:.0f}x its share of tokens" if _finite(enrich) and eos == s.get(
            "eos_signal_share_first_step") else ""
        reasons.append(f"the EOS position carries {eos:.0%}{_where(s, 'eos_signal_share', eos)}{times}")
    if _finite(eos_ratio) and eos_ratio <= t.eos_log_ratio and not (_finite(eos_masked) and eos_masked >= 0.5):
        reasons.append(f"the teacher scores the student's EOS {eos_ratio:.1f} nats below the student")
    if not masking_on and (s["eos_differs"] or s["n_differing_ids"] > 0):
        what = []
        if s["eos_differs"]:
            what.append(f"EOS {s.get('eos_a')!r} vs {s.get('eos_b')!r}")
        if s["n_differing_ids"]:
            what.append(f"{s['n_differing_ids']} ids read differently")
        reasons.append("the tokenizer report shows " + " and ".join(what) + " with masking off")
    if not reasons:
        return []
    carries = (_finite(special) and special >= t.special_share_warning) or (
        _finite(eos) and eos >= t.eos_share_warning)
    critical = (_finite(special) and special >= t.special_share_critical) or (
        _finite(eos_ratio) and eos_ratio <= t.eos_log_ratio and not masking_on and carries)
    # The pair disagrees, but this run's objective puts almost no signal there (a distribution objective
    # compares EOS by role through the vocabulary map): worth knowing, not what is hurting this run.
    severity = "critical" if critical else ("warning" if carries else "info")
    if not carries:
        share = special if _finite(special) else 0.0
        reasons.append(f"this run's objective puts only {share:.1%} of its signal on special tokens")
    keys = ("special_signal_share", "eos_signal_share", "special_signal_share_first_step",
            "eos_signal_share_first_step", "eos_token_share_first_step", "eos_signal_enrichment_first_step",
            "eos_mean_log_ratio", "eos_masked_share",
            "largest_log_ratio", "largest_log_ratio_token", "largest_log_ratio_teacher_token",
            "eos_a", "eos_b", "eos_differs", "n_differing_ids")
    evidence = {k: _num(s[k]) for k in keys if k in s}
    evidence["mask_special_tokens"] = masking_on
    return [Finding(
        mode="mismatch", severity=severity,
        title="tokenizer / special-token mismatch: " + "; ".join(reasons),
        evidence=evidence,
        fix="mask_special_tokens=true and mask_after_eos=true (EOS mapped between tokenizers by meaning, "
            "not by id)",
        view="mismatch",
    )]


def _larger(*values: Any) -> float:
    finite = [float(v) for v in values if _finite(v)]
    return max(finite) if finite else float("nan")


def _where(summary: dict, key: str, value: float) -> str:
    """" at the first logged step" when that step's share (not the pooled one) is the value quoted."""
    pooled = summary.get(key)
    return " at the first logged step" if not (_finite(pooled) and pooled >= value) else ""


def check_collapse(tokens: pd.DataFrame, config: dict, t: Thresholds = THRESHOLDS) -> list[Finding]:
    """Support collapse: the student's mass inside the teacher's top-K (or the top-K overlap) falls away."""
    s = collapse.summary(tokens)
    first, last = s["support_mass_first"], s["support_mass_last"]
    fall = first - last if _finite(first) and _finite(last) else math.nan
    o_fall = s["overlap_first"] - s["overlap_last"] if _finite(s["overlap_first"]) else math.nan
    if s["n_steps"] < 2:
        return []
    mass_warn = _finite(fall) and fall >= t.support_fall_warning
    overlap_warn = _finite(o_fall) and o_fall >= t.overlap_fall_warning
    if not (mass_warn or overlap_warn):
        return []
    critical = _finite(fall) and (fall >= t.support_fall_critical or last < t.support_low)
    params = config.get("objective_params") or {}
    if _objective_name(config) == "topk_support" and params.get("renormalize") is False:
        fix = "objective_params.renormalize=true (top-K matching without the renormalisation collapses)"
    else:
        fix = "objective=topk_support with objective_params.renormalize=true; or a lower learning_rate"
    evidence = {"support_mass_first": _num(first), "support_mass_last": _num(last), "support_mass_fall": _num(fall),
                "support_mass_min": _num(s["support_mass_min"]), "overlap_first": _num(s["overlap_first"]),
                "overlap_last": _num(s["overlap_last"]), "first_step": s.get("first_step"),
                "last_step": s.get("last_step"), "estimated": s["estimated"]}
    return [Finding(
        mode="collapse", severity="critical" if critical else "warning",
        title=(f"support collapse: the student's mass inside the teacher's top-K fell from {first:.2f} to "
               f"{last:.2f}" if _finite(fall) else
               f"support collapse: top-K overlap fell from {s['overlap_first']:.2f} to {s['overlap_last']:.2f}"),
        evidence=evidence, fix=fix, view="collapse",
    )]


_SETTING = re.compile(r"([A-Za-z_][\w.]*)=([\w.+-]+)")


def _config_value(config: dict, key: str) -> Any:
    if key == "objective":
        return _objective_name(config)
    value: Any = config
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _already_set(config: dict, alternative: str) -> bool:
    """True when the settings an alternative names (key=value) are what the run already uses: the first
    one equal, the others equal or left at their defaults (absent from the config)."""
    settings = _SETTING.findall(alternative)

    def same(key: str, value: str, absent_ok: bool) -> bool:
        current = _config_value(config, key)
        return (absent_ok and current is None) or str(current).lower() == value.lower()

    return bool(settings) and same(*settings[0], absent_ok=False) and all(
        same(k, v, absent_ok=True) for k, v in settings[1:])


def without_current_settings(finding: Finding, config: dict) -> Finding:
    """The finding with the fix alternatives the run already uses removed (never suggest what is on)."""
    alternatives = [a.strip() for a in finding.fix.split(";")]
    kept = [a[3:] if a.startswith("or ") else a for a in alternatives if not _already_set(config, a)]
    if len(kept) == len(alternatives):
        return finding
    fix = "; or ".join(kept) if kept else "the usual fix is already on in this run; see the page for what remains"
    return replace(finding, fix=fix)


# ----------------------------------------------------------------------------- the report


def _objective_name(config: dict) -> str | None:
    objective = config.get("objective")
    if isinstance(objective, dict):
        objective = objective.get("name")
    return objective if isinstance(objective, str) else None


def _rescue_summary(run_dir: Path, metrics) -> dict | None:
    """The run's rescue rates: rescue.json (`opd-lab rescue`) when present, else the logged per-step ones."""
    from opd_core.rescue_runs import read_rescue, summary_from_metrics

    data = read_rescue(run_dir)
    if data is not None:
        return data["summary"]
    return summary_from_metrics(metrics)


def _token_columns(run_dir: Path) -> list[str]:
    columns = list(dict.fromkeys(imbalance.COLUMNS + drift.COLUMNS + drift.POSITION_COLUMNS + mismatch.COLUMNS
                                 + collapse.COLUMNS))
    present = set(runs.token_schema_columns(run_dir))
    if "student_support_mass" not in present or "topk_overlap" not in present:
        columns += ["teacher_topk_ids", "student_topk_ids", "student_topk_logps"]  # for the estimates
    return columns


def health(run_dir: str | Path, *, max_token_steps: int | None = 8,
           thresholds: Thresholds = THRESHOLDS) -> HealthReport:
    """Diagnose a run: the failure modes it shows, with evidence and the settings to try.

    Reads only the needed token columns from at most ``max_token_steps`` logged steps (None: all).
    """
    run_dir = Path(run_dir)
    if not runs.is_run_dir(run_dir):
        raise DiagnosticsError(f"{run_dir} is not a run directory (no config.json or status.json); "
                               "pass the folder `opd-lab train` printed")
    problems: list[str] = []
    config = runs.read_config(run_dir, problems)
    objective = _objective_name(config)
    findings: list[Finding] = []
    skipped: list[str] = []
    tokens = read_run_tokens(run_dir, _token_columns(run_dir), max_token_steps, problems=problems)
    metrics = runs.read_metrics(run_dir, problems)
    if tokens.empty:
        skipped.append("imbalance, drift, mismatch, collapse: no token records in tokens/ that can be read "
                       "(set log_tokens_every to log them)")
    else:
        alignment = mismatch.load_alignment(run_dir)
        if alignment is None:
            damage: list[str] = []
            runs.read_json_object(run_dir, mismatch.ALIGNMENT_FILE, damage)
            problems += damage
            skipped.append(f"{damage[0]}: mismatch judged from the token signal only" if damage else
                           "alignment.json absent: mismatch judged from the token signal only")
        findings += _guarded("imbalance", skipped, lambda: check_imbalance(tokens, objective, thresholds))
        findings += _guarded("drift", skipped,
                             lambda: check_drift(tokens, thresholds, _rescue_summary(run_dir, metrics)))
        findings += _guarded("mismatch", skipped, lambda: check_mismatch(tokens, alignment, config, thresholds))
        findings += _guarded("collapse", skipped, lambda: check_collapse(tokens, config, thresholds))
    if len(metrics) == 0:
        skipped.append("training checks: metrics.jsonl has no records that can be read")
    else:
        findings += _guarded("training", skipped, lambda: check_training(run_dir, metrics, config, thresholds))
        findings += _guarded("tokenizer pair", skipped,
                             lambda: check_tokenizer_pair(metrics, mismatch.load_alignment(run_dir), thresholds))
    findings = [without_current_settings(f, config) for f in findings]
    findings.sort(key=lambda f: severity_rank(f.severity))
    return HealthReport(run_dir=run_dir, findings=findings, skipped=skipped, objective=objective,
                        problems=list(dict.fromkeys(problems)))


def _guarded(check: str, skipped: list[str], run: Any) -> list[Finding]:
    """One check's findings; a check the run's (damaged or foreign) records break is skipped, named."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - one check failing must not take the report down
        skipped.append(f"{check} checks could not run on this run's records ({type(exc).__name__}: {exc})")
        return []


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def format_report(report: HealthReport) -> str:
    """The health report as the text `opd-lab report` prints: one block per finding, most severe first."""
    lines = [f"Health report: {report.run_dir}" + (f"  (objective: {report.objective})" if report.objective else "")]
    if not report.findings:
        lines.append("No problems found: every check stayed under its threshold.")
    for f in report.findings:
        lines.append("")
        lines.append(f"[{f.severity.upper()}] {f.mode}: {f.title}")
        lines.append("  evidence: " + ", ".join(f"{k}={_format_value(v)}" for k, v in f.evidence.items()))
        lines.append(f"  fix:      {f.fix}")
        lines.append(f"  see:      the dashboard's {f.view} evidence")
    if report.skipped:
        lines.append("")
        lines.extend(f"(skipped) {note}" for note in report.skipped)
    if report.problems:
        lines.append("")
        lines.extend(f"(damaged) {problem}" for problem in report.problems)
    return "\n".join(lines)
