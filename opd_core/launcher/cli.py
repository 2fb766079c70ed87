"""`opd-lab runs list|stop|resume|fork|launch`: the run operations as commands (0 ok, 2 bad input)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opd_core import process_identity, runs
from opd_core.config import ConfigError
from opd_core.launcher.commands import fork, launch_file, list_runs, resolve_run, resume, stop
from opd_core.launcher.queue import LauncherError


def _fmt_summary(s: runs.RunSummary) -> str:
    step = f"{s.step or 0}/{s.total_steps or '?'}"
    lineage = f"{s.parent}@{s.fork_step}" if s.parent else "-"
    state = s.state + (f" (on {s.elsewhere})" if s.elsewhere else "")
    line = f"{s.run_id:<44} {state:<9} {step:>11}  {str(s.objective or '-'):<16} {lineage}"
    if s.error and s.state == "failed":
        line += f"\n    {_first_line(s.error)}"
    return line + "".join(f"\n    damaged: {p}" for p in s.problems)


def _first_line(text: str) -> str:
    """One line of an error (a trainer's error can hold a whole state_dict dump)."""
    first = text.strip().splitlines()[0] if text.strip() else text
    return first if len(first) <= 300 else first[:297] + "..."


def _summary_dict(s: runs.RunSummary) -> dict:
    return {"run_id": s.run_id, "path": str(s.path), "state": s.state, "step": s.step,
            "total_steps": s.total_steps, "objective": s.objective, "parent": s.parent,
            "fork_step": s.fork_step, "error": s.error, "stale": s.stale, "updated_at": s.updated_at,
            "elsewhere": s.elsewhere, "problems": s.problems}


def cli(args: argparse.Namespace) -> int:
    """`opd-lab runs list|stop|resume|fork|launch`: 0 on success, 2 on bad input (one line on stderr)."""
    runs_dir = Path(getattr(args, "runs_dir", None) or "runs")
    command = args.runs_command
    limit = getattr(args, "max_concurrent", None)  # honoured when the parser offers --max-concurrent
    try:
        if command == "list":
            summaries = list_runs(runs_dir)
            if getattr(args, "json", False):
                print(json.dumps([_summary_dict(s) for s in summaries], indent=2, default=str))
            elif not summaries:
                print(f"no runs in {runs_dir.resolve()}")
            else:
                print(f"{'run':<44} {'state':<9} {'step':>11}  {'objective':<16} parent@step")
                for s in summaries:
                    print(_fmt_summary(s))
            return 0
        if command == "launch":
            run_dir = launch_file(args.config, args.overrides, runs_dir, getattr(args, "name", None),
                                  max_concurrent=limit)
        elif command == "stop":
            status = stop(resolve_run(runs_dir, args.run))
            print(f"{args.run}: {'stopping (SIGTERM sent)' if status['state'] == 'running' else status['state']}")
            return 0
        elif command == "resume":
            run_dir = resume(resolve_run(runs_dir, args.run), max_concurrent=limit)
        elif command == "fork":
            parent = resolve_run(runs_dir, args.run)
            run_dir = fork(parent, args.step, args.overrides, runs_dir=runs_dir, name=getattr(args, "name", None),
                           max_concurrent=limit)
        else:
            raise LauncherError(f"unknown runs action {command!r}; use list, stop, resume, fork or launch")
    except (ConfigError, LauncherError, runs.RunDirError, process_identity.RunBusyError) as exc:
        print(f"opd-lab: error: {_first_line(str(exc))}", file=sys.stderr)
        return 2
    print(f"{run_dir}  ({runs.read_status(run_dir)['state']})")
    return 0
