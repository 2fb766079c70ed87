"""Shape run metadata and metrics into the tables and series the Runs and Compare pages show.

Only presentation-level shaping lives here (last values, smoothing a curve for display, cumulative
tokens for the x axis); analyses of token records belong to ``opd_core.diagnostics``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from opd_core.diagnostics.health import severity_rank
from opd_core.runs import RunSummary

LAST_METRICS = ("loss", "eval_accuracy", "response_len", "grad_norm", "signal_gini")
SETTING_KEYS = ("lmbda", "temperature", "top_p", "top_k", "max_new_tokens", "mask_special_tokens", "learning_rate")
X_AXES = {"step": "step", "tokens seen": "tokens"}


def last_value(metrics: pd.DataFrame, column: str) -> float | None:
    """The last logged (non-missing) value of a metric, or None."""
    if column not in metrics:
        return None
    values = pd.to_numeric(metrics[column], errors="coerce").dropna()
    return float(values.iloc[-1]) if len(values) else None


def key_settings(config: Mapping) -> str:
    """The settings that tell runs apart, as one short line (objective parameters included)."""
    params = config.get("objective_params")
    parts = [f"{k}={'–' if v is None else v}" for k, v in params.items()] if isinstance(params, Mapping) else []
    parts += [f"{k}={'–' if config[k] is None else config[k]}" for k in SETTING_KEYS if k in config]
    return ", ".join(parts)


def flags_text(report: object) -> str:
    """Health findings worth a flag (warning or critical), as one line; empty when the run looks healthy."""
    findings = [f for f in getattr(report, "findings", []) or [] if f.severity in ("warning", "critical")]
    if not findings:
        return ""
    findings = sorted(findings, key=lambda f: severity_rank(f.severity))
    return "; ".join(f"[{f.severity}] {f.title}" for f in findings)


def health_summary(report: object, damaged: int = 0) -> str:
    """The Runs table's short health cell: counts of damaged files and of critical/warning findings."""
    findings = [f for f in getattr(report, "findings", []) or [] if f.severity in ("warning", "critical")]
    counts = [(damaged, "damaged"), (sum(f.severity == "critical" for f in findings), "critical"),
              (sum(f.severity == "warning" for f in findings), "warning")]
    parts = [f"{n} {name}{'s' if n > 1 and name == 'warning' else ''}" for n, name in counts if n]
    return " · ".join(parts) if parts else "ok"


def run_row(key: str, label: str, summary: RunSummary, last: Mapping[str, float | None], report: object) -> dict:
    """One row of the Runs table: what tells runs apart first (status, metrics, flags), details last.

    ``last``: the last value of each of :data:`LAST_METRICS` (``state.last_metrics``)."""
    progress = f"{summary.step or 0}/{summary.total_steps}" if summary.total_steps else str(summary.step or 0)
    row = {"key": key, "run": label, "status": summary.state + (" (stale)" if summary.stale else ""),
           "objective": summary.objective or "", "progress": progress}
    for column in LAST_METRICS:
        row[column] = last.get(column)
    # the summary's damage is what a look from outside finds; the (cached) health report read the files too
    problems = list(dict.fromkeys(str(p) for p in [*(getattr(summary, "problems", None) or []),
                                                    *(getattr(report, "problems", None) or [])]))
    row["health"] = health_summary(report, len(problems))
    row["flags"] = "; ".join([*(f"[damaged] {p}" for p in problems), *filter(None, [flags_text(report)])])
    row["settings"] = key_settings(summary.config if isinstance(summary.config, Mapping) else {})
    row["student"] = summary.student or ""
    row["teacher"] = summary.teacher or ""
    return row


def damaged_row(key: str, label: str, reason: str) -> dict:
    """The Runs table's row for a run that could not be read at all: its name and what is damaged."""
    row = {"key": key, "run": label, "status": "unreadable", "objective": "", "progress": ""}
    row.update({column: None for column in LAST_METRICS})
    row.update({"health": "unreadable", "flags": f"[damaged] {reason}", "settings": "", "student": "",
                "teacher": ""})
    return row


def numeric_metrics(frames: Mapping[str, pd.DataFrame]) -> list[str]:
    """Metric columns that are numeric in at least one run (the Compare page's choices), step excluded."""
    names: list[str] = []
    for df in frames.values():
        for column in df.columns:
            if column != "step" and column not in names and pd.api.types.is_numeric_dtype(df[column]):
                names.append(column)
    return names


def metric_series(metrics: pd.DataFrame, metric: str, x: str = "step", smoothing: float = 0.0) -> pd.DataFrame:
    """(x, value) of one run's metric for plotting: x is the step or the cumulative tokens seen, and the
    value is exponentially smoothed with weight ``smoothing`` in [0, 1) (0 = raw), as TensorBoard does.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    if x not in X_AXES.values():
        raise ValueError(f"x must be one of {list(X_AXES.values())}, got {x!r}")
    if metric not in metrics or "step" not in metrics:
        return pd.DataFrame(columns=["x", "value"])
    df = metrics.sort_values("step")
    xs = df["step"] if x == "step" else pd.to_numeric(df.get("tokens"), errors="coerce").fillna(0).cumsum()
    frame = pd.DataFrame({"x": xs.to_numpy(), "value": pd.to_numeric(df[metric], errors="coerce").to_numpy()})
    frame = frame.dropna(subset=["value"])
    if smoothing > 0 and len(frame):
        frame["value"] = frame["value"].ewm(alpha=1.0 - smoothing, adjust=False).mean()
    return frame.reset_index(drop=True)


def compare_long(frames: Mapping[str, pd.DataFrame], metric: str, x: str, smoothing: float) -> pd.DataFrame:
    """Every run's series of one metric in one long table (run, x, value) for the overlay chart and CSV."""
    parts = [metric_series(df, metric, x, smoothing).assign(run=name) for name, df in frames.items()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=["run", "x", "value"])
    return pd.concat(parts, ignore_index=True)[["run", "x", "value"]]


def compare_summary(frames: Mapping[str, pd.DataFrame], flags: Mapping[str, str] | None = None) -> pd.DataFrame:
    """The Compare table: final and best eval accuracy, mean gradient norm, final response length, flags."""
    flags = flags or {}
    rows = []
    for name, df in frames.items():
        acc = pd.to_numeric(df["eval_accuracy"], errors="coerce").dropna() if "eval_accuracy" in df else pd.Series()
        grad = pd.to_numeric(df["grad_norm"], errors="coerce").dropna() if "grad_norm" in df else pd.Series()
        rows.append({
            "run": name,
            "steps": int(df["step"].max()) + 1 if "step" in df and len(df) else 0,
            "final_eval_accuracy": float(acc.iloc[-1]) if len(acc) else np.nan,
            "best_eval_accuracy": float(acc.max()) if len(acc) else np.nan,
            "mean_grad_norm": float(grad.mean()) if len(grad) else np.nan,
            "final_response_len": last_value(df, "response_len"),
            "flags": flags.get(name, ""),
        })
    return pd.DataFrame(rows, columns=["run", "steps", "final_eval_accuracy", "best_eval_accuracy",
                                       "mean_grad_norm", "final_response_len", "flags"])


def _special_cell(value: object) -> str:
    """One side of a special-token role, as text: ``<|im_end|> (id 2)``, a list joined, '–' when absent."""
    from opd_core.token_text import visible

    if value is None or value == "":
        return "–"
    if isinstance(value, Mapping):
        token = value.get("token")
        ident = value.get("id")
        text = visible(str(token)) if token is not None else "–"
        return f"{text} (id {ident})" if ident is not None else text
    if isinstance(value, list | tuple):
        return "  ".join(visible(str(v)) for v in value) or "–"
    return visible(str(value))


def special_token_table(specials: Mapping) -> pd.DataFrame:
    """The special tokens of both tokenizers by role (eos, bos, pad, unk, chat markers, all specials).

    The chat template's rendered sample is long and shown on its own, not squeezed into a cell.
    """
    a = specials.get("a") if isinstance(specials.get("a"), Mapping) else {}
    b = specials.get("b") if isinstance(specials.get("b"), Mapping) else {}
    roles = [r for r in dict.fromkeys([*a, *b]) if r != "chat_template_sample"]
    rows = []
    for role in roles:
        left, right = _special_cell(a.get(role)), _special_cell(b.get(role))
        rows.append({"role": role.replace("_", " "), "student": left, "teacher": right,
                     "same": "yes" if left == right else "no"})
    return pd.DataFrame(rows, columns=["role", "student", "teacher", "same"])


SAMPLE_FILTERS = ("correct", "wrong", "did not stop", "hit max_new_tokens", "contains a masked token")


def sample_flags(tokens: pd.DataFrame, max_new_tokens: int | None) -> pd.DataFrame:
    """Per sample of one step: which of :data:`SAMPLE_FILTERS` it meets (one boolean column each), and the
    position of its first wrong token where the task grades (the token after which ``prefix_wrong`` turns on).

    "did not stop" = no EOS among its tokens; "hit max_new_tokens" = as many tokens as the cap allows.
    """
    if tokens.empty or "sample" not in tokens:
        return pd.DataFrame(columns=["sample", *SAMPLE_FILTERS, "first_wrong_pos"])
    try:  # a damaged config may hold anything here; then no sample is said to hit the cap
        cap = int(max_new_tokens) if max_new_tokens is not None and not isinstance(max_new_tokens, bool) else None
    except (TypeError, ValueError):
        cap = None
    rows = []
    for sample, part in tokens.groupby("sample", sort=True):
        part = part.sort_values("pos") if "pos" in part else part
        correct = part["correct"].iloc[0] if "correct" in part else None
        graded = correct is not None and not pd.isna(correct)
        stopped = bool(part["is_eos"].astype(bool).any()) if "is_eos" in part else None
        wrong_pos = None
        if "prefix_wrong" in part and "pos" in part:
            flags = part["prefix_wrong"].fillna(False).astype(bool).to_numpy()
            if flags.any():
                first = int(flags.argmax())
                wrong_pos = int(part["pos"].iloc[max(first - 1, 0)])
        rows.append({
            "sample": int(sample),
            "correct": graded and bool(correct),
            "wrong": graded and not bool(correct),
            "did not stop": stopped is False,
            "hit max_new_tokens": bool(cap) and len(part) >= cap,
            "contains a masked token": bool(part["masked"].astype(bool).any()) if "masked" in part else False,
            "first_wrong_pos": wrong_pos,
        })
    return pd.DataFrame(rows)


def filter_samples(flags: pd.DataFrame, wanted: list[str]) -> list[int]:
    """The samples meeting every wanted filter (all samples when none is wanted)."""
    keep = pd.Series(True, index=flags.index)
    for name in wanted:
        if name in flags:
            keep &= flags[name].astype(bool)
    return [int(s) for s in flags.loc[keep, "sample"]]


def position_difference(a: pd.DataFrame, b: pd.DataFrame, column: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both responses with ``<column>_diff`` = B − A at the same position (NaN where one side has no token),
    so the two strips can be coloured by where and how much they differ."""
    name = f"{column}_diff"
    if column not in a or column not in b or "pos" not in a or "pos" not in b:
        return a.assign(**{name: np.nan}), b.assign(**{name: np.nan})
    va = pd.to_numeric(a.set_index("pos")[column], errors="coerce")
    vb = pd.to_numeric(b.set_index("pos")[column], errors="coerce")
    diff = (vb - va.reindex(vb.index)).rename(name)
    diff_a = (vb.reindex(va.index) - va).rename(name)
    return (a.merge(diff_a, left_on="pos", right_index=True, how="left"),
            b.merge(diff, left_on="pos", right_index=True, how="left"))


def visible_tokens(frame: pd.DataFrame) -> pd.DataFrame:
    """A table's token columns as people read them (``opd_core.token_text.visible``), for display only."""
    from opd_core.token_text import visible

    out = frame.copy()
    for column in ("token", "teacher_token"):
        if column in out:
            out[column] = out[column].map(lambda v: visible(v) if isinstance(v, str) else v)
    return out
