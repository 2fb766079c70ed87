"""Where scoring writes: the run directory it opens or resumes, its part files, and each step's metrics.

A step's records are written batch by batch as part files (``.scoring/step_NNNNNN/part_NNNNNN.parquet``,
each atomic), then streamed into ``tokens/step_NNNNNN.parquet`` (atomic rename) once the step is
complete, so a run interrupted at any point resumes without a duplicated or missing row. The step's
metrics are reductions of the step's token records, read back from that file.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from opd_core import runs
from opd_core.config import RunConfig
from opd_core.rescoring.inputs import RolloutSet
from opd_core.run_tokens import write_token_stream

SCORING_FILE = "scoring.json"
PARTS_DIR = ".scoring"


class ScoringError(ValueError):
    """A scoring request that cannot run as given; one line naming the problem and the fix."""



def manifest(rs: RolloutSet, student_at: dict[int, str], raw: bool, batch_size: int) -> dict:
    return {"source_shape": rs.shape, "source_files": [str(Path(f).resolve()) for f in rs.files], "columns": rs.columns,
            "responses": len(rs.rollouts), "steps": rs.steps, "raw": raw, "batch_size": batch_size,
            "student_at": {str(k): v for k, v in sorted(student_at.items())}}


def open_run_dir(out: str | None, runs_dir: str, name: str | None, cfg: RunConfig, info: dict) -> Path:
    """A new run dir, or the one ``out`` (or ``runs_dir/name``) names when it holds this same scoring: resume."""
    target = Path(out) if out else (runs.run_path(runs_dir, name) if name else None)
    if target is not None and target.is_dir() and any(target.iterdir()):
        previous = runs.read_json(target / SCORING_FILE, None)
        if not isinstance(previous, dict):
            raise ScoringError(f"{target}: folder exists and is not a scoring run; pass a new --out or --name")
        same = {k: previous.get(k) for k in ("source_files", "responses", "batch_size", "raw", "student_at")}
        config_now = json.loads(runs.to_json(cfg.to_dict()))
        if same != {k: info[k] for k in same} or runs.read_config(target) != config_now:
            raise ScoringError(f"{target}: holds a scoring of other rollouts or settings; pass a new --out or "
                               "--name (re-running the same command resumes)")
        return target
    if target is not None and target.is_dir():  # an empty folder made for us
        runs.validate_run_id(target.name)
        run_dir = target
    elif target is not None:
        run_dir = runs.create_run_dir(target.parent, target.name)
    else:
        run_dir = runs.create_run_dir(runs_dir, None, prefix="score")
    runs.write_config(run_dir, cfg.to_dict())
    runs.atomic_write_json(run_dir / SCORING_FILE, info)
    runs.write_status(run_dir, state="queued", step=0, total_steps=len(info["steps"]), created_at=time.time())
    return run_dir


def part_file(run_dir: Path, step: int, chunk: int) -> Path:
    return run_dir / PARTS_DIR / f"step_{step:06d}" / f"part_{chunk:06d}.parquet"


def write_part(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a write cut short (a stop, a full disk) leaves no half part behind


def merge_parts(run_dir: Path, step: int, n_chunks: int) -> Path:
    """Stream a step's parts into its token file (atomic rename), one part in memory at a time."""
    parts = [part_file(run_dir, step, c) for c in range(n_chunks)]
    schema = pa.unify_schemas([pq.read_schema(p) for p in parts], promote_options="permissive")
    target = write_token_stream(run_dir, step, schema, (pq.read_table(p) for p in parts))
    # Every part is in the token file now. The folder may still hold what a killed writer left (a half-written
    # temporary part): it goes too, or the resumed job would fail here with "directory not empty".
    shutil.rmtree(parts[0].parent, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- metrics


def step_metrics(run_dir: Path, step: int, seconds: float) -> dict:
    """One step's metrics, reduced from the step's token records (the same reductions the SDK path uses)."""
    import torch

    from opd_core import stats

    wanted = ["sample", "signal", "masked", "is_special", "is_eos", "prefix_source", "student_logp", "teacher_logp",
              "log_ratio", "teacher_entropy", "student_entropy", "token_loss", "correct", "reward", "response_len",
              "student_support_mass", "topk_overlap", "overlap_mass_student", "overlap_mass_teacher", "teachability",
              "reverse_kl", "forward_kl", "in_teacher_topk", "aligned", "token_value"]
    present = set(runs.token_schema_columns(run_dir))
    df = runs.read_tokens(run_dir, [step], [c for c in wanted if c in present])
    trained = ~df["masked"].to_numpy(bool)
    per_sample = df.drop_duplicates("sample")
    lengths = per_sample["response_len"].to_numpy()
    # One flat row of tokens: the same reductions as the loop and the SDK (opd_core.stats.step_metrics).
    record = stats.record_from_columns({c: df[c].to_numpy().copy() for c in df.columns})  # writable for torch
    flat = torch.from_numpy(trained)[None]
    flag = {c: torch.from_numpy(df[c].to_numpy(bool) if c in df else np.zeros(len(df), bool))[None]
            for c in ("is_special", "is_eos")}
    summary = stats.step_metrics(record, trained=flat, real=torch.ones_like(flat), special=flag["is_special"],
                                 eos=flag["is_eos"])
    summary.pop("eos_rate", None)  # a per-response rate: meaningless on one flat row
    n = int(trained.sum())
    # The logged loss is the objective's value (what it estimates), as in the loop; token_loss is the
    # surrogate that is differentiated (for sampled_token they differ by a factor of -log p_S).
    per_token = df["token_value"] if "token_value" in df else df["token_loss"]
    loss = float(per_token.to_numpy(np.float64)[trained].sum() / max(n, 1))
    correct = per_sample["correct"].dropna()
    reward = per_sample["reward"].dropna()
    summary.update({
        # Nothing was trained: no update was made (0.0, not null, which the health report reads as NaN).
        "step": step, "time_s": seconds, "loss": loss, "grad_norm": 0.0, "lr": 0.0, "tokens": n,
        "tokens_per_s": None, "response_len": float(lengths.mean()) if len(lengths) else None,
        "responses": int(len(per_sample)),
        "train_accuracy": float(correct.astype(bool).mean()) if len(correct) else None,
        "mean_reward": float(reward.mean()) if len(reward) else None,
    })
    return summary


