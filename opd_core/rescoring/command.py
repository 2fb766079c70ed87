"""The `opd-lab score` command line: its arguments, and the run that checks first and scores second."""

from __future__ import annotations

import argparse

HELP = "re-score saved rollouts (verl, TRL, JSONL, a run dir) into a run directory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `score` subcommand's flags (kept here so cli.py stays a table of commands)."""
    p.add_argument("rollouts", help="a .jsonl/.parquet file, a folder of them (verl rollout_data_dir, TRL "
                   "completions/), or an OPD Lab run directory")
    p.add_argument("--teacher", required=True, help="teacher checkpoint folder or toy preset")
    p.add_argument("--student", required=True, help="student checkpoint folder or toy preset (scores every step "
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


def run(args: argparse.Namespace) -> int:
    from opd_core.rescoring.score import score_from_cli

    return score_from_cli(args)
