"""Checkpoints of a run: student weights, optimizer and scheduler state, and the step they belong to.

RNG state is not saved on purpose: every step seeds its own randomness from (seed, step), so a run
resumed from step N draws exactly what the uninterrupted run would have drawn at step N + 1.
Each checkpoint is written to a temporary folder and renamed, so a crash mid-save leaves the
previous checkpoints untouched and never a half-written one.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from opd_core.runs import CHECKPOINTS_DIR

_CKPT = re.compile(r"^step_(\d{6,})$")


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{int(step):06d}"


def list_checkpoints(run_dir: str | Path) -> list[int]:
    """Steps with a complete checkpoint, ascending."""
    base = Path(run_dir) / CHECKPOINTS_DIR
    if not base.is_dir():
        return []
    out = []
    for entry in base.iterdir():
        m = _CKPT.match(entry.name)
        if m and (entry / "state.json").exists():
            out.append(int(m.group(1)))
    return sorted(out)


def latest(run_dir: str | Path) -> Path | None:
    steps = list_checkpoints(run_dir)
    return checkpoint_dir(run_dir, steps[-1]) if steps else None


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Remove the temporary folders of checkpoint saves a kill interrupted; returns what was removed."""
    base = Path(run_dir) / CHECKPOINTS_DIR
    if not base.is_dir():
        return []
    gone = [p for p in base.glob(".step_*") if p.is_dir() and not p.is_symlink()]
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def save(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Path:
    """Write a checkpoint atomically (temporary folder + rename); leftovers of killed saves are removed."""
    target = checkpoint_dir(run_dir, step)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_partial(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        state, tied = _untied_state(model)
        save_file(state, str(tmp / "student.safetensors"), metadata={"tied": json.dumps(tied)})
        torch.save({"optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None},
                   tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": int(step)}))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _untied_state(model: torch.nn.Module, copy: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with each tied tensor stored once (safetensors refuses shared storage, and a copy
    of a tied embedding doubles a small model's checkpoint), and {dropped key: the key it shares}."""
    state, tied, first = {}, {}, {}
    for k, v in model.state_dict().items():
        v = v.detach()
        key = (v.device, v.data_ptr(), v.dtype, tuple(v.shape), v.stride())
        if v.numel() and key in first:
            tied[k] = first[key]
            continue
        first[key] = k
        state[k] = v.contiguous().cpu().clone() if copy else v
    return state, tied


def load(ckpt: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
         scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> int:
    """Restore a checkpoint into the given objects; returns its step."""
    ckpt = Path(ckpt)
    if not (ckpt / "state.json").exists():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no state.json); pick one of "
                                f"{list_checkpoints(ckpt.parent.parent)}")
    device = next(model.parameters()).device
    weights = load_file(str(ckpt / "student.safetensors"), device=str(device))
    with safe_open(str(ckpt / "student.safetensors"), framework="pt") as f:
        tied = json.loads((f.metadata() or {}).get("tied", "{}"))
    _, model_ties = _untied_state(model, copy=False)
    for k, source in {**model_ties, **tied}.items():
        # Stored once; load_state_dict copies it into both (still tied) places. The model's own ties
        # count too, for a file whose metadata was lost (rewritten by another tool).
        if k not in weights and source in weights:
            weights[k] = weights[source]
    expected = model.state_dict()
    wrong = [k for k, v in weights.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in weights]
    if wrong or missing:
        # One line instead of torch's dump of every mismatched tensor.
        what = (f"{len(wrong)} tensor(s) differ in shape (first: {wrong[0]} is {list(weights[wrong[0]].shape)} "
                f"in the checkpoint, {list(expected[wrong[0]].shape)} in the student)" if wrong
                else f"{len(missing)} tensor(s) of the student are missing (first: {missing[0]})")
        raise ValueError(f"checkpoint {ckpt} does not fit this student: {what}; fork or resume with the "
                         "student model the checkpoint was trained from")
    model.load_state_dict(weights, strict=True)
    if optimizer is not None:
        extra = torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=False)
        optimizer.load_state_dict(extra["optimizer"])
        if scheduler is not None and extra.get("scheduler") is not None:
            scheduler.load_state_dict(extra["scheduler"])
    return int(json.loads((ckpt / "state.json").read_text())["step"])
