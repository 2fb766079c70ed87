"""The `opd-lab score` command line: its arguments, and the run that checks first and scores second."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

HELP = "re-score saved rollouts (verl, TRL, JSONL, a run dir) into a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `score` subcommand's flags (kept here so cli.py stays a table of commands)."""
    p.add_argument("rollouts", nargs="?", help="a .jsonl/.parquet file, a folder of them (verl rollout_data_dir, "
                   "TRL completions/), or an OPD Lab run directory")
    p.add_argument("--teacher", help="teacher checkpoint folder or toy preset (required)")
    p.add_argument("--student", help="student checkpoint folder or toy preset (required; scores every step "
                   "without a --student-at)")
    p.add_argument("--student-at", action="append", default=[], metavar="STEP=CKPT",
                   help="score STEP (and later steps, up to the next one given) with this checkpoint (repeatable)")
    p.add_argument("--objective", default="sampled_token", help="objective whose per-token value is `signal`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="objective parameter or config field, e.g. --set k=32 --set mask_special_tokens=true")
    p.add_argument("--out", help="the run directory to write (re-running with the same --out resumes)")
    p.add_argument("--runs-dir", default="runs", help="where a new run directory is created (without --out)")
    p.add_argument("--name", help="run id (default: score + time)")
    p.add_argument("--raw", action="store_true", help="prompts are already rendered text: no chat template")
    p.add_argument("--map", action="append", default=[], metavar="ROLE=COL,...",
                   help="columns for prompt, response, messages, step, reward, correct, response_ids")
    p.add_argument("--batch-size", type=int, default=8, help="responses scored at once (bounds memory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the scoring RUN_DIR holds, with its own arguments")


def run(args: argparse.Namespace) -> int:
    """`opd-lab score`: check everything first (exit 2, no run dir), print the run dir, score, print throughput."""
    from opd_core.collector import paused_until_frozen

    with paused_until_frozen(collect_first=False):
        from transformers.utils import logging as hf_logging

        from opd_core.distributed import init_from_env, shutdown
        from opd_core.rescoring.inputs import parse_map
        from opd_core.rescoring.score import ScoringError, resume_scoring, score_rollouts

    hf_logging.disable_progress_bar()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `runs stop` / the page's Stop: parts kept, state "stopped"
    dist = init_from_env()
    log = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731 - stdout carries the run dir
    try:
        if args.resume:
            result = resume_scoring(args.resume, progress=not args.no_progress, log=log, dist=dist)
        else:
            if not (args.rollouts and args.teacher and args.student):
                raise ScoringError("give ROLLOUTS, --teacher and --student (or --resume RUN_DIR)")
            result = score_rollouts(args.rollouts, teacher=args.teacher, student=args.student,
                                    student_at=args.student_at, objective=args.objective, settings=args.overrides,
                                    out=args.out, runs_dir=args.runs_dir, name=args.name, raw=args.raw,
                                    column_map=parse_map(args.map), batch_size=args.batch_size,
                                    progress=not args.no_progress, dist=dist, log=log)
        if dist.is_main:
            print(result.run_dir, flush=True)
        return 0
    except KeyboardInterrupt:
        print("opd-lab: scoring stopped; run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        shutdown(dist)


def _interrupt(signum, frame) -> None:  # noqa: ARG001
    raise KeyboardInterrupt
