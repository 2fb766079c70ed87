"""Start the dashboard as a Streamlit server: what `opd-lab` (no subcommand) and `opd-lab serve` run.

This file is loaded by path (``opd_core.cli`` finds it next to the dashboard's pages), so it imports
nothing from ``app``: the dashboard's folder is put on the *server's* import path through its
environment, never by patching ``sys.path`` here. In a checkout the dashboard folder is the repository
root; in an installed distribution it is ``site-packages/opd_lab_dashboard`` (``app/`` and ``pages/`` are
shipped there, so no top-level ``app`` or ``pages`` package is installed).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

DASHBOARD_ROOT = Path(__file__).resolve().parents[1]  # the folder holding app/ and pages/
MAIN_SCRIPT = DASHBOARD_ROOT / "app" / "main.py"
SAMPLE_RUNS_DIR = DASHBOARD_ROOT / "sample_runs"  # shipped with a checkout; absent from a wheel
ENV_RUNS_DIR = "OPD_LAB_RUNS_DIR"
ENV_SAMPLE_RUNS = "OPD_LAB_SAMPLE_RUNS"
STOP_GRACE_S = 10.0
# Streamlit's own UI offers "Deploy" and developer menus that make no sense for a local diagnosis tool;
# the favicon is shipped (app/static) so that nothing is fetched from the internet.
STREAMLIT_OPTIONS = {"client.toolbarMode": "minimal", "browser.gatherUsageStats": "false",
                     "server.headless": "true", "server.fileWatcherType": "none"}


def streamlit_command(host: str, port: int) -> list[str]:
    """The exact command line that runs the app (kept separate so tests can check it without a server)."""
    cmd = [sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT),
           "--server.address", host, "--server.port", str(port)]
    for key, value in STREAMLIT_OPTIONS.items():
        cmd += [f"--{key}", value]
    return cmd


def server_env(runs_dir: str | Path, show_samples: bool = True) -> dict[str, str]:
    """The environment that tells the app where the user's runs and the shipped samples live."""
    env = dict(os.environ)
    env[ENV_RUNS_DIR] = str(Path(runs_dir).expanduser().resolve())
    env[ENV_SAMPLE_RUNS] = str(SAMPLE_RUNS_DIR) if show_samples and SAMPLE_RUNS_DIR.is_dir() else ""
    # The server imports `app` from the dashboard folder (the checkout, or the installed opd_lab_dashboard).
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(DASHBOARD_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stop_server(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> int:
    """Stop the Streamlit server: SIGTERM, then SIGKILL after ``grace_s``; returns its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def serve(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 8501, show_samples: bool = True) -> int:
    """Run the dashboard in the foreground until interrupted; returns the server's exit code.

    SIGTERM and SIGINT to this process are forwarded to the server, and this process waits for it to
    exit, so killing `opd-lab` never leaves a Streamlit server holding the port.
    """
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range: pass --port between 1 and 65535")
    runs_path = Path(runs_dir).expanduser()
    if runs_path.exists() and not runs_path.is_dir():
        raise ValueError(f"--runs-dir {runs_path} is a file, not a folder: pass the folder that holds your runs")
    shown_host = "[" + host + "]" if ":" in host else host
    print(f"OPD Lab dashboard: http://{shown_host}:{port}  (runs: {runs_path.resolve()}"
          f"{', plus the shipped sample runs' if show_samples else ''}; Ctrl+C to stop)", flush=True)
    proc = subprocess.Popen(streamlit_command(host, port), env=server_env(runs_path, show_samples))
    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        stop_server(proc)  # whatever ended the wait (a second signal, an error), the server goes too
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        return 128 + received[0]
    return code


def main(argv: list[str] | None = None) -> int:
    """``python app/server.py [--runs-dir D] [--host H] [--port P] [--no-samples]`` (what `opd-lab` runs)."""
    import argparse

    parser = argparse.ArgumentParser(prog="opd-lab", description="Start the OPD Lab dashboard.")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--no-samples", action="store_true")
    args = parser.parse_args(argv)
    return serve(args.runs_dir, args.host, args.port, show_samples=not args.no_samples)


if __name__ == "__main__":
    sys.exit(main())
