"""Start the dashboard as a Streamlit server: what `opd-lab` (no subcommand) and `opd-lab serve` run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import app
from app.sources import ENV_RUNS_DIR, ENV_SAMPLE_RUNS

REPO_ROOT = Path(app.__file__).resolve().parents[1]
MAIN_SCRIPT = REPO_ROOT / "app" / "main.py"
SAMPLE_RUNS_DIR = REPO_ROOT / "sample_runs"


def streamlit_command(host: str, port: int) -> list[str]:
    """The exact command line that runs the app (kept separate so tests can check it without a server)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false",
    ]


def server_env(runs_dir: str | Path, show_samples: bool = True) -> dict[str, str]:
    """The environment that tells the app where the user's runs and the shipped samples live."""
    env = dict(os.environ)
    env[ENV_RUNS_DIR] = str(Path(runs_dir).expanduser().resolve())
    env[ENV_SAMPLE_RUNS] = str(SAMPLE_RUNS_DIR) if show_samples else ""
    # The app imports `app` and `opd_core` from this checkout even when the package is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def serve(runs_dir: str | Path = "runs", host: str = "127.0.0.1", port: int = 8501, show_samples: bool = True) -> int:
    """Run the dashboard in the foreground until interrupted; returns the server's exit code."""
    if not 0 < int(port) < 65536:
        raise ValueError(f"port {port} is out of range: pass --port between 1 and 65535")
    runs_path = Path(runs_dir).expanduser()
    if runs_path.exists() and not runs_path.is_dir():
        raise ValueError(f"--runs-dir {runs_path} is a file, not a folder: pass the folder that holds your runs")
    shown_host = "[" + host + "]" if ":" in host else host
    print(f"OPD Lab dashboard: http://{shown_host}:{port}  (runs: {runs_path.resolve()}"
          f"{', plus the shipped sample runs' if show_samples else ''}; Ctrl+C to stop)", flush=True)
    proc = subprocess.Popen(streamlit_command(host, port), env=server_env(runs_path, show_samples))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        return 130
