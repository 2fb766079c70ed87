"""Teacher reliability as correctness: can the teacher still finish a student's drifted prefix correctly?

Teacher entropy says how *sure* the teacher is on a student prefix; it does not say whether the teacher is
*right*. A teacher can be confidently wrong. The rescue rate measures the second: cut a student response
at a chosen point, let the teacher continue from there (greedily, and at the run's sampling settings),
and grade prefix + continuation with the task's grader. Cut points are placed by *tokens since the
student's first error* (where the grader says the text first left every correct answer; -1 = the cut is
just before that token) and reported also by absolute position and by tokens since the student first
left the teacher's top-p nucleus, beside the same statistic on the teacher's own rollouts cut at the same
positions (what a reliable teacher does on its own prefixes).

A task whose responses cannot recover from an error makes every after-error rescue 0 whatever the
teacher; the rescue rate means something on a task whose format lets a response correct itself
(toy:addition-v2's "!" restart). A task without a reference answer gets the agreement rate instead: the
continuation's final answer against the teacher's own greedy answer to the prompt.

The same cut/continue/grade code runs on logging steps inside the loop (a bounded number of cuts) and
from ``opd-lab rescue RUN_DIR`` on a finished run (every logged step, more cuts), which writes
``rescue.json``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from opd_core.rollout import Sampling, sample_responses
from opd_core.tasks import Example, cannot_pass, final_answer

# -1: cut just before the first wrong token. Past 8 the points are spaced for the far bucket: the v2 teacher
# rescues about as often 12 tokens after an error as right after it, and falls only beyond (docs/diagnostics.md).
SINCE_ERROR_GRID: tuple[int, ...] = (-1, 0, 1, 2, 4, 8, 12, 16, 20, 24)
CONFIDENT_TOP1 = 0.9
DEFAULT_LOOP_CUTS = 12  # per logging step inside the loop, greedy only (docs/diagnostics.md: the cost)
MILD_MAX, FAR_MIN = 2, 16  # tokens since the first error: "mild" drift <= 2, "far" >= 16


@dataclass
class Rollout:
    """One logged response: what the cut planner and the grader need (student token ids, no EOS split)."""

    step: int
    sample: int
    prompt: str
    response_ids: list[int]
    source: str  # "student" or "teacher" (the teacher's own rollout, the reference)
    ended: bool
    teacher_top1: list[float] | None = None  # per position: teacher's top-1 probability at that prefix
    in_nucleus: list[bool] | None = None  # per position: token inside the teacher's top-p nucleus


@dataclass
class Cut:
    """A prefix to hand to the teacher: the first ``length`` tokens of a rollout."""

    rollout: Rollout
    length: int
    kind: str  # before_error | after_error | on_support | teacher_own
    since_error: int | None  # tokens after the first wrong token (-1 before it); None without an error
    since_off_support: int | None
    teacher_top1: float


def _first_wrong_token(spans: list[tuple[int, int]], first_error_char: int | None) -> int | None:
    """Index of the token holding the grader's first wrong character (None: no error inside the response)."""
    if first_error_char is None:
        return None
    for i, (_a, b) in enumerate(spans):
        if b > first_error_char:
            return i
    return None


def _since_off_support(rollout: Rollout, length: int) -> int | None:
    if rollout.in_nucleus is None:
        return None
    off = [i for i, ok in enumerate(rollout.in_nucleus[:length]) if not ok]
    return length - off[0] if off and length > off[0] else 0


def _top1_at(rollout: Rollout, length: int) -> float:
    if rollout.teacher_top1 is None or length >= len(rollout.teacher_top1):
        return float("nan")
    return float(rollout.teacher_top1[length])


def plan_cuts(rollouts: list[Rollout], first_wrong: dict[tuple[int, int], int | None], *, budget: int | None,
              seed: int = 0, grid: tuple[int, ...] = SINCE_ERROR_GRID, every_cut: bool = False) -> list[Cut]:
    """Choose cut points: for student responses with an error, one point of ``grid`` each (cycling, so every
    distance gets cuts; all of them with ``every_cut``); error-free student responses and the teacher's own
    rollouts are cut at matching absolute positions. ``budget`` bounds the number of cuts (None: no bound)."""
    rng = random.Random(seed)
    wrong, clean, teacher = [], [], []
    for r in rollouts:
        body = len(r.response_ids) - (1 if r.ended else 0)
        if body < 2:
            continue
        if r.source == "teacher":
            teacher.append(r)
        elif first_wrong.get((r.step, r.sample)) is not None:
            wrong.append(r)
        else:
            clean.append(r)
    error_cuts: list[Cut] = []
    turn = 0
    for r in wrong:
        e = first_wrong[(r.step, r.sample)]
        body = len(r.response_ids) - (1 if r.ended else 0)
        options = [k for k in grid if 0 < e + 1 + k <= body]
        if not options:
            continue
        chosen = options if every_cut else [options[turn % len(options)]]
        turn += 1
        for k in chosen:
            length = e + 1 + k
            error_cuts.append(Cut(r, length, "before_error" if k < 0 else "after_error", k,
                                  _since_off_support(r, length), _top1_at(r, length)))
    positions = [c.length for c in error_cuts] or [4, 8, 12]
    matched: list[Cut] = []
    for pool, kind in ((clean, "on_support"), (teacher, "teacher_own")):
        for r in pool:
            body = len(r.response_ids) - (1 if r.ended else 0)
            length = min(rng.choice(positions), body - 1)
            if length >= 1:
                matched.append(Cut(r, length, kind, None, _since_off_support(r, length), _top1_at(r, length)))
    if budget is None:
        return error_cuts + matched
    # Half the budget for drifted prefixes, the rest split between the two references.
    n_err = min(len(error_cuts), max(budget // 2, budget - len(matched)))
    rest = budget - n_err
    picked = error_cuts[:n_err]
    on = [c for c in matched if c.kind == "on_support"]
    own = [c for c in matched if c.kind == "teacher_own"]
    n_on = min(len(on), max(rest // 2, rest - len(own)))
    return picked + on[:n_on] + own[: rest - n_on]


def continue_from_cuts(cuts: list[Cut], pair, teacher_model, sampling: Sampling, *,
                       max_new_tokens: int, task=None, examples: dict[str, Example] | None = None
                       ) -> list[tuple[str, str]]:
    """Let the teacher continue each cut prefix; returns (prefix text, continuation text) per cut.

    With ``task`` (cuts graded by ``task.grade`` against ``examples``; greedy ``sampling`` only), a continuation
    stops as soon as the task says no continuation of it can pass (``tasks.cannot_pass``): its grade is
    settled, so the rescue verdict is the one the whole continuation would get, for a fraction of the
    teacher's decoding (a teacher that leaves the format at its first token no longer writes
    ``max_new_tokens`` more)."""
    if task is not None and not sampling.greedy:
        raise ValueError("continue_from_cuts stops only greedy continuations early: a sampled batch that ends "
                         "sooner draws fewer random numbers and changes the samples of every later batch")
    if not cuts:
        return []
    prefix_texts = []
    prompt_ids = []
    for c in cuts:
        ids = c.rollout.response_ids[: c.length]
        text = pair.student.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        prefix_texts.append(text)
        t_ids = ids if pair.shared else pair.teacher(text, add_special_tokens=False)["input_ids"]
        prompt_ids.append(pair.teacher_prompt_ids(c.rollout.prompt) + list(t_ids))
    s = Sampling(sampling.temperature, sampling.top_p, sampling.top_k, max_new_tokens, sampling.greedy)
    stop_when = None
    if task is not None:
        def stop_when(i: int, ids: list[int]) -> bool:
            return cannot_pass(task, examples[cuts[i].rollout.prompt], prefix_texts[i] + pair.teacher_text(ids)[0])
    outs, _ = sample_responses(teacher_model, prompt_ids, s, eos_ids=pair.teacher_eos_ids, pad_id=pair.teacher_pad_id,
                               vocab_size=len(pair.teacher), stop_when=stop_when)
    return [(p, pair.teacher_text(o)[0]) for p, o in zip(prefix_texts, outs)]


def grade_continuations(cuts: list[Cut], texts: list[tuple[str, str]], task, examples: dict[str, Example],
                        reference_answers: dict[str, str | None] | None = None) -> list[bool]:
    """Whether each prefix + continuation is correct (or, without a reference answer, agrees with the
    teacher's own answer to the prompt)."""
    out = []
    for c, (prefix, cont) in zip(cuts, texts):
        ex = examples[c.rollout.prompt]
        full = prefix + cont
        if ex.answer is None and reference_answers is not None:
            ref = reference_answers.get(c.rollout.prompt)
            out.append(ref is not None and final_answer(full) == ref)
        else:
            out.append(bool(task.grade(ex, full).correct))
    return out


def evaluate_cuts(cuts: list[Cut], pair, teacher_model, task, examples: dict[str, Example], sampling: Sampling, *,
                  max_new_tokens: int, seed: int = 0, sampled: bool = True) -> pd.DataFrame:
    """One row per cut: where it is, the teacher's top-1 there, and whether greedy and (with ``sampled``)
    sampled continuations were rescued (``rescued_sampled`` is NaN without)."""
    refs = None
    if any(examples[c.rollout.prompt].answer is None for c in cuts) and not _task_grades_itself(task):
        prompts = sorted({c.rollout.prompt for c in cuts})
        own, _ = sample_responses(teacher_model, [pair.teacher_prompt_ids(p) for p in prompts],
                                  Sampling(max_new_tokens=max_new_tokens, greedy=True),
                                  eos_ids=pair.teacher_eos_ids, pad_id=pair.teacher_pad_id,
                                  vocab_size=len(pair.teacher))
        refs = {p: final_answer(pair.teacher_text(o)[0]) for p, o in zip(prompts, own)}
    # Greedy continuations of cuts the task grades (not by agreement with the teacher's own answer) stop once
    # their grade is settled: each row's tokens are what they would have been. Sampled ones run in full: a batch
    # that ends sooner would draw fewer random numbers and shift every later batch's samples.
    greedy = continue_from_cuts(cuts, pair, teacher_model, Sampling(max_new_tokens=max_new_tokens, greedy=True),
                                max_new_tokens=max_new_tokens, task=task if refs is None else None,
                                examples=examples)
    ok_greedy = grade_continuations(cuts, greedy, task, examples, refs)
    ok_sampled: list = [float("nan")] * len(cuts)
    if sampled:
        torch.manual_seed(seed)
        drawn = continue_from_cuts(cuts, pair, teacher_model, sampling, max_new_tokens=max_new_tokens)
        ok_sampled = [bool(x) for x in grade_continuations(cuts, drawn, task, examples, refs)]
    rows = []
    for c, g, s, (prefix, cont) in zip(cuts, ok_greedy, ok_sampled, greedy):
        rows.append({"step": c.rollout.step, "sample": c.rollout.sample, "prompt": c.rollout.prompt,
                     "kind": c.kind, "pos": c.length, "since_error": c.since_error,
                     "since_off_support": c.since_off_support, "teacher_top1": c.teacher_top1,
                     "rescued_greedy": bool(g), "rescued_sampled": float(s), "prefix": prefix,
                     "continuation": cont})
    return pd.DataFrame(rows)


def _task_grades_itself(task) -> bool:
    """Built-in toy tasks grade from the prompt alone (no reference answer needed)."""
    return getattr(task, "name", "").startswith("toy")


# ----------------------------------------------------------------------------- summaries


def _rate(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(values.mean()) if len(values) else None


def summarize(cuts: pd.DataFrame) -> dict:
    """The headline numbers: rescue rates by kind (greedy and sampled), mild vs far drift, and the
    confidently-wrong share (teacher top-1 >= 0.9 at a wrong prefix whose greedy continuation fails)."""
    if cuts.empty:
        return {"n_cuts": 0}
    after = cuts[cuts["kind"] == "after_error"]
    since = after["since_error"].astype(float)
    on = cuts[cuts["kind"].isin(["on_support", "before_error"])]
    out: dict = {"n_cuts": int(len(cuts)), "n_drifted": int(len(after))}
    for mode in ("greedy", "sampled"):
        col = f"rescued_{mode}"
        suffix = "" if mode == "greedy" else "_sampled"
        out[f"rescue_rate_drifted{suffix}"] = _rate(after[col])
        out[f"rescue_rate_mild{suffix}"] = _rate(after[since <= MILD_MAX][col])
        out[f"rescue_rate_far{suffix}"] = _rate(after[since >= FAR_MIN][col])
        out[f"rescue_rate_before_error{suffix}"] = _rate(cuts[cuts["kind"] == "before_error"][col])
        out[f"rescue_rate_on_support{suffix}"] = _rate(on[col])
        out[f"rescue_rate_teacher_own{suffix}"] = _rate(cuts[cuts["kind"] == "teacher_own"][col])
    for name, rows in (("mild", after[since <= MILD_MAX]), ("far", after[since >= FAR_MIN])):
        out[f"rescue_rate_{name}_ci"] = list(wilson_interval(int(rows["rescued_greedy"].sum()), len(rows)))
        out[f"n_{name}"] = int(len(rows))
    out.update(paired_fall(after))
    top1 = after["teacher_top1"].astype(float)
    known = after[np.isfinite(top1)]
    confident_fail = (known["teacher_top1"] >= CONFIDENT_TOP1) & ~known["rescued_greedy"]
    out["confidently_wrong_share"] = float(confident_fail.mean()) if len(known) else None
    out["mild_max_since_error"], out["far_min_since_error"] = MILD_MAX, FAR_MIN
    return out


def paired_fall(after: pd.DataFrame) -> dict:
    """How much less often the teacher rescues far drift than mild drift *in the same response* (greedy): the
    mean over responses cut both ways of (mild rate - far rate), its standard error and the count.

    Pooled rates compare different responses (only long ones reach the far bucket); pairing removes that
    and most of the noise, so a fall of two standard errors is a fall, not a draw of the cuts."""
    keys = ["step", "sample"]
    out = {"rescue_fall_mild_far": None, "rescue_fall_mild_far_se": None, "rescue_fall_pairs": 0}
    if after.empty or not set(keys) <= set(after.columns):
        return out
    since = after["since_error"].astype(float)
    rescued = after["rescued_greedy"].astype(float)
    mild = rescued[since <= MILD_MAX].groupby([after[k][since <= MILD_MAX] for k in keys]).mean()
    far = rescued[since >= FAR_MIN].groupby([after[k][since >= FAR_MIN] for k in keys]).mean()
    diff = (mild - far).dropna()
    n = int(len(diff))
    out["rescue_fall_pairs"] = n
    if n:
        out["rescue_fall_mild_far"] = float(diff.mean())
    if n > 1:
        out["rescue_fall_mild_far_se"] = float(diff.std(ddof=1) / np.sqrt(n))
    return out


def by_since_error(cuts: pd.DataFrame) -> pd.DataFrame:
    """Rescue rate per distance from the first error (student prefixes; -1 = just before it)."""
    rows = cuts[cuts["kind"].isin(["before_error", "after_error"])]
    return _grouped(rows, "since_error")


def by_position(cuts: pd.DataFrame, bucket: int = 8) -> pd.DataFrame:
    """Rescue rate per absolute position bucket and kind (the teacher's own prefixes are the reference)."""
    if cuts.empty:
        return _grouped(cuts, "pos_bucket")
    rows = cuts.assign(pos_bucket=(cuts["pos"] // bucket) * bucket)
    return _grouped(rows, ["pos_bucket", "kind"])


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate (95% at z = 1.96): unlike p ± z·se it stays inside [0, 1] and
    is honest at 0/n and n/n, where the rescue buckets often sit. (NaN, NaN) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def _grouped(rows: pd.DataFrame, keys) -> pd.DataFrame:
    """n, the greedy rate with its Wilson 95% interval (ci_low, ci_high), the sampled rate and the teacher's
    mean top-1 per group."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    if rows.empty:
        return pd.DataFrame(columns=[*keys, "n", "rescue_rate_greedy", "ci_low", "ci_high", "rescue_rate_sampled",
                                     "teacher_top1"])
    g = rows.groupby(keys, sort=True)
    n, k = g.size(), g["rescued_greedy"].sum()
    bounds = [wilson_interval(int(a), int(b)) for a, b in zip(k, n)]
    out = pd.DataFrame({"n": n, "rescue_rate_greedy": g["rescued_greedy"].mean(),
                        "ci_low": [b[0] for b in bounds], "ci_high": [b[1] for b in bounds],
                        "rescue_rate_sampled": g["rescued_sampled"].mean(),
                        "teacher_top1": g["teacher_top1"].mean()})
    return out.reset_index()


def step_metrics(cuts: pd.DataFrame) -> dict:
    """The per-step metrics the loop logs on logging steps (names are part of metrics.jsonl)."""
    s = summarize(cuts)
    return {"rescue_rate_drifted": s.get("rescue_rate_drifted"),
            "rescue_rate_on_support": s.get("rescue_rate_on_support"),
            "rescue_rate_teacher_own": s.get("rescue_rate_teacher_own"),
            "confidently_wrong_share": s.get("confidently_wrong_share"),
            "rescue_cuts": s.get("n_cuts", 0), "rescue_drifted_cuts": s.get("n_drifted", 0)}


# ----------------------------------------------------------------------------- inside the loop


def rollouts_from_batch(step: int, prompts: list[str], responses: list[list[int]], eos_ids, source: str, *,
                        teacher_top1=None, in_nucleus=None, sample_offset: int = 0) -> list[Rollout]:
    """Rollouts from one scored batch (per-position teacher top-1 / nucleus arrays [B, T] optional)."""
    eos = {int(e) for e in eos_ids}
    out = []
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = len(r)
        top1 = [float(x) for x in teacher_top1[i][:n]] if teacher_top1 is not None else None
        nuc = [bool(x) for x in in_nucleus[i][:n]] if in_nucleus is not None else None
        out.append(Rollout(step, sample_offset + i, p, list(r), source, bool(r) and r[-1] in eos, top1, nuc))
    return out


def rescue_step(rollouts: list[Rollout], first_wrong: dict, pair, teacher_model, task, examples: dict[str, Example],
                sampling: Sampling, *, max_new_tokens: int, budget: int = DEFAULT_LOOP_CUTS,
                seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """The loop's rescue phase on a logging step: a bounded set of cuts, continued and graded; returns the
    cut table and the step metrics (``step_metrics``)."""
    cuts = plan_cuts(rollouts, first_wrong, budget=budget, seed=seed)
    table = evaluate_cuts(cuts, pair, teacher_model, task, examples, sampling, max_new_tokens=max_new_tokens,
                          seed=seed, sampled=False)
    return table, step_metrics(table)


def _batch_rollouts(step: int, prompts, responses, grades, record, pair, source: str, offset: int = 0):
    top1 = record.teacher_top1_prob.detach().float().cpu().numpy() if record.teacher_top1_prob is not None else None
    nucleus = record.in_teacher_nucleus.detach().cpu().numpy() if record.in_teacher_nucleus is not None else None
    rollouts = rollouts_from_batch(step, prompts, responses, pair.student_eos_ids, source, teacher_top1=top1,
                                   in_nucleus=nucleus, sample_offset=offset)
    first_wrong = {}
    for r, g in zip(rollouts, grades):
        _, spans = pair.response_spans(r.response_ids)
        first_wrong[(r.step, r.sample)] = _first_wrong_token(spans, g.first_error_char)
    return rollouts, first_wrong


def loop_rescue(step: int, prompts: list[str], responses: list[list[int]], grades: list, record, pair,
                teacher_model, task, examples: dict[str, Example], sampling: Sampling, *, max_new_tokens: int,
                seed: int, reference=None, budget: int = DEFAULT_LOOP_CUTS) -> dict:
    """The training loop's rescue phase on a logging step: the step's student rollouts (teacher top-1 and
    nucleus from the token ``record``) and, when given, the teacher's reference rollouts (an object with
    ``scored``, ``record``, ``grades``); a bounded set of cuts, greedy continuations; the step metrics."""
    rollouts, first_wrong = _batch_rollouts(step, prompts, responses, grades, record, pair, "student")
    if reference is not None:
        ref_rollouts, ref_wrong = _batch_rollouts(step, reference.scored.prompts, reference.scored.responses,
                                                  reference.grades, reference.record, pair, "teacher",
                                                  offset=len(prompts))
        rollouts += ref_rollouts
        first_wrong.update(ref_wrong)
    with torch.no_grad():
        _, metrics = rescue_step(rollouts, first_wrong, pair, teacher_model, task, examples, sampling,
                                 max_new_tokens=max_new_tokens, budget=budget, seed=seed)
    return metrics


def first_wrong_tokens(rollouts: list[Rollout], pair, task, examples: dict[str, Example]) -> dict:
    """(step, sample) -> index of the first wrong token per the task's grader (None when none)."""
    out = {}
    for r in rollouts:
        text, spans = pair.response_spans(r.response_ids)
        plain = pair.student.decode(r.response_ids, skip_special_tokens=True)
        grade = task.grade(examples[r.prompt], plain)
        out[(r.step, r.sample)] = _first_wrong_token(spans, grade.first_error_char)
    return out

def example_lookup(task, prompts) -> dict[str, Example]:
    """An Example per prompt: the task's own record when it has one (its reference answer), else bare."""
    known: dict[str, Example] = {}
    for ex in getattr(task, "records", []) or []:
        known.setdefault(ex.prompt, ex)
    return {p: known.get(p, Example(prompt=p)) for p in prompts}
