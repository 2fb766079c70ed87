"""The `opd-lab` command: the dashboard by default, and every engine operation as a subcommand.

Each subcommand imports what it needs only when it runs, so `opd-lab --help` and the dashboard start
fast and a broken optional piece never breaks the others. Exit codes: 0 success, 1 a run or check that
failed, 2 bad input (a bad config, a missing path), with one line on stderr naming the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_RUNS_DIR = "runs"


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs-dir", default=os.environ.get("OPD_LAB_RUNS_DIR", DEFAULT_RUNS_DIR),
                   help="your runs folder, shown beside the shipped sample runs (default: ./runs)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8501, help="port (default: 8501)")
    p.add_argument("--no-samples", action="store_true", help="do not show the shipped sample runs")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="opd-lab",
        description="OPD Lab: diagnose on-policy distillation runs. With no subcommand, starts the dashboard.",
    )
    _add_serve_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("serve", help="start the dashboard (the default when no command is given)")
    _add_serve_args(p)

    p = sub.add_parser("train", help="run one distillation job and print its run directory")
    p.add_argument("config", nargs="?", help="a TOML or JSON config file (or a shipped example name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config field (repeatable), e.g. --set objective=topk_support")
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, help="where the run directory is created")
    p.add_argument("--name", help="run id (default: objective + time)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue RUN_DIR from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")

    from opd_core.rescoring import command as score_command  # light: no torch until it runs

    score_command.add_arguments(sub.add_parser("score", help=score_command.HELP))

    p = sub.add_parser("report", help="print the health report of a run")
    p.add_argument("run_dir", help="a run directory, or a run's name in --runs-dir or in the shipped sample runs")
    p.add_argument("--runs-dir", default=os.environ.get("OPD_LAB_RUNS_DIR", DEFAULT_RUNS_DIR),
                   help="where a run given by name is looked up first (default: ./runs)")
    p.add_argument("--json", action="store_true", help="write the findings as JSON")

    p = sub.add_parser("tokenizers", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tok_command", metavar="ACTION", required=True)
    c = tsub.add_parser("compare", help="the tokenizer / special-token mismatch report of two tokenizers")
    c.add_argument("a", help="a tokenizer or checkpoint directory, or a toy preset")
    c.add_argument("b")
    c.add_argument("--json", action="store_true")

    p = sub.add_parser("runs", help="list, stop, resume or fork background runs")
    rsub = p.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    for name, helptext in (("list", "every run with its state"), ("stop", "stop a run (SIGTERM; it finishes the step)"),
                           ("resume", "resume a stopped or failed run from its last checkpoint"),
                           ("fork", "continue a run from a checkpoint into a new run with changed settings"),
                           ("launch", "start a new background run from a config")):
        r = rsub.add_parser(name, help=helptext)
        r.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR)
        if name in ("stop", "resume", "fork"):
            r.add_argument("run", help="run id (in --runs-dir) or a run directory path")
        if name == "fork":
            r.add_argument("--step", type=int, help="checkpoint step to fork from (default: the latest)")
            r.add_argument("--name", help="the new run's id")
        if name in ("fork", "launch"):
            r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        if name in ("launch", "resume", "fork"):
            r.add_argument("--max-concurrent", type=int, default=None,
                           help="runs allowed at once (default: the queue's setting, else cores - 1)")
        if name == "launch":
            r.add_argument("config", nargs="?")
            r.add_argument("--name")
        if name == "list":
            r.add_argument("--json", action="store_true")

    p = sub.add_parser("toy", help="the offline toy world")
    tsub = p.add_subparsers(dest="toy_command", metavar="ACTION", required=True)
    b = tsub.add_parser("build", help="retrain the shipped toy teacher and student from scratch")
    b.add_argument("--out", help="where to write (default: the package's own assets)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--world", choices=("v1", "v2"), default="v1", help="v1: addition (toy:matched/mismatched); "
                   "v2: correctable styled addition (toy:matched-v2/mismatched-v2)")

    p = sub.add_parser("rescue", help="teacher rescue rates of a run's logged rollouts (writes rescue.json)")
    p.add_argument("run_dir")
    p.add_argument("--budget", type=int, default=None, help="most cut points (default: every logged response)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    p = sub.add_parser("samples", help="the shipped sample runs")
    ssub = p.add_subparsers(dest="samples_command", metavar="ACTION", required=True)
    b = ssub.add_parser("build", help="regenerate the shipped sample runs with the product's own recipes")
    b.add_argument("--out", default=None, help="where to write (default: ./sample_runs)")
    b.add_argument("--only", action="append", default=[], help="build only this sample (repeatable)")
    b = ssub.add_parser("summary", help="print the table EXPERIMENTS.md reports (from the built sample runs)")
    b.add_argument("--dir", default=None, help="sample runs folder (default: ./sample_runs)")

    from opd_core.model_tools import add_parser as add_models_parser

    add_models_parser(sub)  # opd-lab models convert|cut (opd_core/model_tools.py)

    p = sub.add_parser("bench", help="run the benchmark suite and print its table")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


# ----------------------------------------------------------------------------- handlers


def _dashboard_server() -> str:
    """The dashboard's server.py, loaded by path: the engine never imports the dashboard (``app``)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]  # the checkout, or site-packages
    for candidate in (root / "opd_lab_dashboard" / "app" / "server.py", root / "app" / "server.py"):
        if candidate.is_file():
            return str(candidate)
    raise CliError(f"the dashboard is not installed next to {root / 'opd_core'}: reinstall with `pip install opd-lab`")


def _serve(args: argparse.Namespace) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("opd_lab_server", _dashboard_server())
    server = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(server)
    return server.serve(runs_dir=args.runs_dir, host=args.host, port=args.port, show_samples=not args.no_samples)


def _train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from opd_core.config import ConfigError, load_config

    if not args.resume and not (args.config and Path(args.config).is_dir()):
        try:  # a typo in a setting is one line in a fraction of a second, before torch and transformers load
            load_config(args.config, args.overrides)
        except ConfigError as exc:
            raise CliError(str(exc)) from None

    from opd_core.collector import paused_until_frozen

    with paused_until_frozen(collect_first=False):
        from transformers.utils import logging as hf_logging

        from opd_core.train_entry import train_from_cli

    hf_logging.disable_progress_bar()  # one progress bar on the terminal: the run's

    watches: list = []
    try:
        outcome = train_from_cli(config_path=args.config, overrides=args.overrides, runs_dir=args.runs_dir,
                                 name=args.name, resume=args.resume, progress=not args.no_progress,
                                 on_start=lambda run_dir: watches.extend(_watch_health(run_dir)))
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    finally:
        for watch in watches:
            watch.stop()
    if outcome.run_dir is not None:
        _start_queued_runs(outcome.run_dir.parent)
    return outcome.code


def _watch_health(run_dir) -> list:
    """With ``stop_on_critical``, stop this trainer (SIGTERM: finish the step, checkpoint, `stopped`) on the
    first critical health finding (opd_core.health_watch); returns the started watch, if any."""
    from opd_core import runs
    from opd_core.health_watch import CriticalFindingWatch

    if not (runs.read_config(run_dir) or {}).get("stop_on_critical"):
        return []
    watch = CriticalFindingWatch(run_dir)
    watch.start()
    return [watch]


def _start_queued_runs(runs_dir) -> None:
    """This trainer's slot is free: start the next queued run even when no dashboard is open."""
    import contextlib

    from opd_core import launcher

    with contextlib.suppress(Exception):  # the queue is best effort; this run's result stands regardless
        launcher.pump(runs_dir)


def _score(args: argparse.Namespace) -> int:
    from opd_core.rescoring.command import run

    return run(args)


def _report(args: argparse.Namespace) -> int:
    from opd_core.diagnostics import format_report, health

    run_dir = _find_run(args.run_dir, getattr(args, "runs_dir", DEFAULT_RUNS_DIR))
    report = health(run_dir)
    print(json.dumps(report.to_dict(), indent=2, default=str) if args.json else format_report(report))
    return 0


def _find_run(text: str, runs_dir: str) -> str:
    """A run directory given as a path, or as a run's name in ``runs_dir`` or in the shipped sample runs."""
    from opd_core import runs
    from opd_core.samples import default_samples_dir

    if runs.is_run_dir(text):
        return text
    if runs.is_run_name(text):
        for base in (runs_dir, default_samples_dir()):
            candidate = Path(base) / text
            if runs.is_run_dir(candidate):
                return str(candidate)
    raise CliError(f"{text} is not a run directory (no config.json or status.json) nor a run name in "
                   f"{runs_dir} or the sample runs; pass the folder `opd-lab train` printed")


def _tokenizers(args: argparse.Namespace) -> int:
    from opd_core.alignment import cli_compare

    return cli_compare(args.a, args.b, as_json=args.json)


def _runs(args: argparse.Namespace) -> int:
    from opd_core import launcher

    return launcher.cli(args)


def _toy(args: argparse.Namespace) -> int:
    from opd_core.toy.build import cli_build

    return cli_build(args)


def _rescue(args: argparse.Namespace) -> int:
    from opd_core.rescue_runs import cli_rescue

    return cli_rescue(args)


def _samples(args: argparse.Namespace) -> int:
    from opd_core.samples import build_samples, summary_table

    if args.samples_command == "summary":
        print(summary_table(args.dir).to_markdown(index=False, floatfmt=".3f"))
        return 0
    build_samples(out_dir=args.out, only=args.only or None)
    return 0


def _models(args: argparse.Namespace) -> int:
    from opd_core.model_tools import cli

    return cli(args)


def _bench(args: argparse.Namespace) -> int:
    import runpy

    sys.argv = ["benchmarks", *args.args]
    runpy.run_module("benchmarks", run_name="__main__")
    return 0


HANDLERS: dict[str | None, Callable[[argparse.Namespace], int]] = {
    None: _serve, "serve": _serve, "train": _train, "score": _score, "report": _report, "tokenizers": _tokenizers,
    "runs": _runs, "toy": _toy, "samples": _samples, "bench": _bench, "models": _models, "rescue": _rescue,
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> str:  # noqa: ARG001
    return f"opd-lab: warning: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    from opd_core.collector import skip_collection_at_exit

    skip_collection_at_exit()  # ~0.7 s less at exit for a process that loaded models
    warnings.formatwarning = _one_line_warning  # a warning is a sentence for the user, not a source line
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = HANDLERS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not as a traceback at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except CliError as exc:
        print(f"opd-lab: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        # Library errors raised for bad input carry a message naming the problem and the fix.
        print(f"opd-lab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _closed_pipe() -> int:
    """The reader went away (`opd-lab runs list | head`): stop quietly, as Unix tools do."""
    # Point stdout at /dev/null so the interpreter's final flush does not raise again.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 141  # 128 + SIGPIPE, what a shell reports for a killed writer


if __name__ == "__main__":
    raise SystemExit(main())
