"""Score saved rollouts with a teacher and the student checkpoint(s) into a standard run directory.

The scoring is the training loop's own: the same ``Trainer.score`` (student forward, teacher forward
through ``TokenizerPair``, aligned as in training), the same objective call that defines ``signal``,
the same per-token statistics (``Trainer.token_record``, i.e. ``stats.dense_token_stats``) and the same
table builder (``run_writer.token_table``). Only the rollouts come from a file instead of the sampler, and no
optimizer step is taken.

Memory is bounded by ``batch_size`` responses at a time: each batch becomes one part file
(``.scoring/step_NNNNNN/part_NNNNNN.parquet``, written atomically); when a step's parts are all there
they are streamed into ``tokens/step_NNNNNN.parquet`` and the step's metrics are reduced from those
records. Re-running the same command continues where it stopped: finished steps and finished parts
are skipped, a half-written one never exists, so no row is duplicated or lost. Under torchrun or
accelerate every rank scores its share of each step's batches and rank 0 alone writes.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import torch

from opd_core import checkpoints, runs
from opd_core.config import RunConfig, load_config
from opd_core.distributed import DistInfo, barrier, broadcast_object, gather_object
from opd_core.rescoring.inputs import Rollout, RolloutSet, read_rollouts
from opd_core.rescoring.output import (
    PARTS_DIR,
    SCORING_FILE,
    ScoringError,
    manifest,
    merge_parts,
    open_run_dir,
    part_file,
    step_metrics,
    write_part,
)

# Settings that describe sampling the scorer never does; fixed so the run dir says what was measured.
_FIXED = {"eval_every": 0, "reference_rollouts": False, "log_tokens_every": 1, "log_samples": 0,
          "checkpoint_every": 0, "lmbda": 1.0}


@dataclass
class ScoreResult:
    """What one invocation did: where the run is and how fast it went."""

    run_dir: Path
    responses: int = 0          # scored by this invocation (a resumed run skips finished ones)
    tokens: int = 0
    seconds: float = 0.0
    skipped_responses: int = 0
    steps: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        resumed = f" ({self.skipped_responses} already scored)" if self.skipped_responses else ""
        return (f"scored {self.responses} responses, {self.tokens} tokens in {self.seconds:.1f} s: "
                f"{self.tokens_per_s:,.0f} tokens/s{resumed} -> {self.run_dir}")


# ----------------------------------------------------------------------------- request checks


def parse_student_at(items: list[str] | dict | None) -> dict[int, str]:
    """``["100=ckpt/a", "200=ckpt/b"]`` -> {100: "ckpt/a", 200: "ckpt/b"}, each path checked to exist."""
    if isinstance(items, dict):
        pairs = [(str(k), str(v)) for k, v in items.items()]
    else:
        pairs = [tuple(i.split("=", 1)) if "=" in i else (i, "") for i in (items or [])]
    out: dict[int, str] = {}
    for step, path in pairs:
        try:
            s = int(step)
        except ValueError:
            raise ScoringError(f"--student-at {step}={path}: {step!r} is not a step number; write "
                               "--student-at STEP=CHECKPOINT_DIR") from None
        if not path:
            raise ScoringError(f"--student-at {step!r} names no checkpoint; write --student-at STEP=CHECKPOINT_DIR")
        if not Path(path).is_dir():
            raise ScoringError(f"--student-at {s}={path}: no such checkpoint folder; pass an OPD Lab checkpoint "
                               "(runs/<id>/checkpoints/step_N) or a Hugging Face checkpoint folder")
        out[s] = path
    return out


def student_for_step(step: int, student_at: dict[int, str]) -> str | None:
    """The checkpoint that scores ``step``: the one given for it, else the latest given before it, else None
    (the base ``--student``)."""
    earlier = [s for s in student_at if s <= step]
    return student_at[max(earlier)] if earlier else None


def scoring_config(*, teacher: str, student: str, objective: str, settings: list[str], steps: int) -> RunConfig:
    """The run's config.json: the loop's own config with what scoring does not do switched off."""
    base = [f"student={student}", f"teacher={teacher}", f"objective={objective}"]
    fixed = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in _FIXED.items()]
    return load_config(None, [*base, *settings, *fixed, f"steps={max(steps, 1)}"])


# ----------------------------------------------------------------------------- the scorer


def _render(tokenizer, rollout: Rollout, raw: bool) -> list[int]:
    """Prompt ids for one model: its own chat template over the messages, or the text as given (``raw``)."""
    if raw:
        text = rollout.prompt if rollout.prompt is not None else "".join(m["content"] for m in rollout.messages)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(list(rollout.messages), add_generation_prompt=True, tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer("\n".join(m["content"] for m in rollout.messages), add_special_tokens=True)["input_ids"]


class Scorer:
    """The loop's scoring machinery (a ``Trainer`` that never steps) applied to rollouts read from a file."""

    def __init__(self, cfg: RunConfig, run_dir: Path, raw: bool):
        from opd_core.train import Trainer

        self.trainer = Trainer(cfg, run_dir)
        self.trainer.student.model.eval()  # scoring, not training: no dropout noise in the numbers
        self.pair = self.trainer.pair
        self.raw = raw
        self.base_state = None
        self.loaded: str | None = None

    def use_student(self, ckpt: str | None) -> None:
        """Load the student weights that scored a step (None = the base --student)."""
        if ckpt == self.loaded:
            return
        model = self.trainer.student.model
        if self.base_state is None:
            self.base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if ckpt is None:
            model.load_state_dict(self.base_state)
        elif (Path(ckpt) / "student.safetensors").is_file():
            checkpoints.load(ckpt, model)
        else:
            from opd_core.models import load_model

            other = load_model(ckpt, device="cpu", dtype=self.trainer.cfg.dtype,
                               trust_remote_code=self.trainer.cfg.trust_remote_code)
            try:
                model.load_state_dict(other.model.state_dict())
            except RuntimeError as exc:
                raise ScoringError(f"--student-at {ckpt}: weights do not fit the --student architecture "
                                   f"({str(exc).splitlines()[0]}); pass a checkpoint of the same model") from None
        model.eval()
        self.loaded = ckpt

    def prompt_key(self, r: Rollout) -> str:
        """The key Trainer.score renders a prompt by. A plain user prompt goes through the loop's own chat
        rendering; raw text and chat messages are rendered here, once per side, into the pair's cache."""
        if r.messages is None and not self.raw:
            return r.prompt
        key = f"\x00opd-score\x00{self.raw}\x00{r.prompt if r.messages is None else repr(r.messages)}"
        cache = self.pair._prompt_cache  # the pair's per-prompt rendering cache (pairing.TokenizerPair)
        if ("student", key) not in cache:
            cache[("student", key)] = _render(self.pair.student, r, self.raw)
            cache[("teacher", key)] = _render(self.pair.teacher, r, self.raw)
        return key

    def response_ids(self, r: Rollout) -> list[int]:
        if r.response_ids is not None:
            return list(r.response_ids)
        return self.pair.student(r.response, add_special_tokens=False)["input_ids"]

    def _check_length(self, keys: list[str], responses: list[list[int]], batch: list[Rollout]) -> None:
        """A sequence longer than the student's context would fail deep inside the model: say which one."""
        limit = getattr(self.trainer.student.model.config, "max_position_embeddings", None)
        if not limit:
            return
        for key, resp, r in zip(keys, responses, batch):
            n = len(self.pair.student_prompt_ids(key)) + len(resp)
            if n > limit:
                raise ScoringError(f"rollout {r.index} (step {r.step}): prompt + response is {n} student tokens, "
                                   f"longer than the student's context of {limit}; drop or cut that row")

    @torch.no_grad()
    def score(self, step: int, offset: int, batch: list[Rollout]) -> pa.Table:
        """The per-token records of one batch, exactly as the loop builds them."""
        from opd_core.run_writer import token_table
        from opd_core.tasks import Grade

        t = self.trainer
        keys = [self.prompt_key(r) for r in batch]
        responses = [self.response_ids(r) for r in batch]
        self._check_length(keys, responses, batch)
        sc = t.score(keys, responses, grad=False, logged=True)
        out, _ = t.objective(sc)  # (the fast-path record is for training steps only)
        grades = [Grade(bool(r.correct), True, None) for r in batch]
        texts = [t.student.tokenizer.decode(resp, skip_special_tokens=True) for resp in sc.responses]
        rows = list(range(len(batch)))
        infos = t.tokens.sample_infos(sc, grades, texts, rows)
        for info, r in zip(infos, batch):
            info.prompt = r.prompt if r.messages is None else _messages_text(r.messages)
        table = token_table(step, t.token_record(sc, out),
                            t.tokens.token_rows(sc, rows, "student", reference=False, offset=offset, infos=infos))
        return _with_outcomes(table, batch, offset)


def _messages_text(messages: tuple) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def _with_outcomes(table: pa.Table, batch: list[Rollout], offset: int) -> pa.Table:
    """Reward / correct from the file (null where the file had none) and the input row of each token."""
    sample = table.column("sample").to_numpy() - offset
    by_row = [batch[i] for i in sample]
    replace = {
        "correct": pa.array([r.correct for r in by_row], type=pa.bool_()),
        "reward": pa.array([r.reward if r.reward is not None else
                            (float(r.correct) if r.correct is not None else None) for r in by_row],
                           type=pa.float32()),
        "format_ok": pa.array([None] * len(by_row), type=pa.bool_()),
    }
    for name, arr in replace.items():
        table = table.set_column(table.schema.get_field_index(name), name, arr)
    return table.append_column("rollout_index", pa.array([r.index for r in by_row], type=pa.int64()))


# ----------------------------------------------------------------------------- entry points


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _request(rollouts, teacher: str, student: str, at: dict[int, str], objective: str, settings: list[str],
             raw: bool, column_map: dict | None, batch_size: int) -> dict:
    """The arguments of a scoring, as scoring.json keeps them: what `--resume` and a background job replay."""
    source = None if isinstance(rollouts, RolloutSet) else str(Path(rollouts).resolve())
    return {"rollouts": source, "teacher": teacher, "student": student,
            "student_at": {str(k): str(Path(v).resolve()) for k, v in sorted(at.items())}, "objective": objective,
            "settings": list(settings), "raw": raw, "column_map": dict(column_map or {}), "batch_size": batch_size}


def _prepare(rollouts, teacher, student, student_at, objective, settings, raw, column_map, batch_size):
    """Every check that can fail on the user's input, before anything is written."""
    if batch_size < 1:
        raise ScoringError(f"--batch-size {batch_size}: must be at least 1")
    rs = rollouts if isinstance(rollouts, RolloutSet) else read_rollouts(rollouts, column_map)
    at = parse_student_at(student_at)
    cfg = scoring_config(teacher=teacher, student=student, objective=objective, settings=list(settings or []),
                         steps=max(rs.steps))
    info = manifest(rs, at, raw, batch_size)
    info["request"] = _request(rollouts, teacher, student, at, objective, list(settings or []), raw, column_map,
                               batch_size)
    return rs, at, cfg, info


def score_rollouts(rollouts: str | Path | RolloutSet, *, teacher: str, student: str,
                   student_at: list[str] | dict | None = None, objective: str = "sampled_token",
                   settings: list[str] | None = None, out: str | Path | None = None, runs_dir: str | Path = "runs",
                   name: str | None = None, raw: bool = False, column_map: dict[str, str] | None = None,
                   batch_size: int = 8, progress: bool = False, log=print, dist: DistInfo | None = None,
                   ) -> ScoreResult:
    """Score saved rollouts into a run directory (resuming one that ``out`` already holds); see the module doc.

    Raises ``RolloutInputError`` / ``ScoringError`` / ``ConfigError`` (all ``ValueError``, one line)
    before creating anything when the input, a checkpoint or a setting is wrong.
    """
    dist = dist or DistInfo()
    rs, at, written, info = _prepare(rollouts, teacher, student, student_at, objective, settings, raw, column_map,
                                     batch_size)
    cfg = written
    if dist.enabled and torch.cuda.is_available() and cfg.device == "auto":
        cfg = cfg.replace(device=f"cuda:{dist.local_rank}")  # config.json keeps the user's "auto"
    run_dir = None
    if dist.is_main:
        run_dir = open_run_dir(str(out) if out else None, str(runs_dir), name, written, info)
    run_dir = Path(broadcast_object(str(run_dir) if run_dir else None, dist))
    return _score_into(run_dir, rs, cfg, at, raw, batch_size, progress, log, dist)


def prepare_job(rollouts: str | Path, *, teacher: str, student: str, student_at: list[str] | dict | None = None,
                objective: str = "sampled_token", settings: list[str] | None = None, runs_dir: str | Path = "runs",
                name: str | None = None, raw: bool = False, column_map: dict[str, str] | None = None,
                batch_size: int = 8) -> Path:
    """Check a scoring request and write its run directory as ``queued`` without scoring: a background job
    (the launcher's child runs ``opd-lab score --resume RUN_DIR``). Raises the same one-line errors."""
    _, _, cfg, info = _prepare(rollouts, teacher, student, student_at, objective, settings, raw, column_map,
                               batch_size)
    run_dir = open_run_dir(None, str(runs_dir), name, cfg, info)
    # queued_at and no pid: what the launcher's queue takes (a run dir the CLI scores itself has neither).
    runs.write_status(run_dir, queued_at=time.time(), pid=None)
    return run_dir


def is_scoring_run(run_dir: str | Path) -> bool:
    """True for a run directory written by `opd-lab score` (it holds scoring.json)."""
    return (Path(run_dir) / SCORING_FILE).is_file()


def resume_scoring(run_dir: str | Path, *, progress: bool = False, log=print, dist: DistInfo | None = None,
                   ) -> ScoreResult:
    """Continue (or start) the scoring a run directory describes, with the arguments it was created with."""
    request = (runs.read_json(Path(run_dir) / SCORING_FILE, None) or {}).get("request")
    if not isinstance(request, dict) or not request.get("rollouts"):
        raise ScoringError(f"{run_dir}: not a resumable scoring run (no scoring request in {SCORING_FILE}); "
                           "run `opd-lab score` with its arguments and --out instead")
    request = dict(request)
    return score_rollouts(request.pop("rollouts"), **request, out=run_dir, progress=progress, log=log, dist=dist)


def _score_into(run_dir: Path, rs: RolloutSet, cfg: RunConfig, at: dict[int, str], raw: bool, batch_size: int,
                progress: bool, log, dist: DistInfo) -> ScoreResult:
    result = ScoreResult(run_dir)
    started = time.time()
    if dist.is_main:
        previous = runs.read_json(run_dir / runs.STATUS_FILE, {}) or {}
        runs.write_status(run_dir, state="running", started_at=previous.get("started_at") or started, error=None,
                          world_size=dist.world_size, total_steps=len(rs.steps))
        runs.mark_process(run_dir)
    try:
        scorer = Scorer(cfg, run_dir, raw)
        if dist.is_main:
            scorer.trainer.write_alignment()
        started = time.time()  # throughput counts scoring, not loading the models
        by_step: dict[int, list[Rollout]] = {}
        for r in rs.rollouts:
            by_step.setdefault(r.step, []).append(r)
        done_metrics = {int(rec["step"]) for rec, _ in runs.iter_metric_records(run_dir)} if dist.is_main else set()
        bar = _Progress(len(rs.rollouts), enabled=progress and dist.is_main)
        metrics_out = runs.MetricsWriter(run_dir) if dist.is_main else None
        try:
            for step in rs.steps:
                rows = by_step[step]
                chunks = _chunks(rows, batch_size)
                todo = None
                if dist.is_main:
                    if runs.token_file(run_dir, step).exists():
                        todo = []
                    else:
                        todo = [c for c in range(len(chunks)) if not part_file(run_dir, step, c).exists()]
                todo = broadcast_object(todo, dist)
                skipped = sum(len(chunks[c]) for c in range(len(chunks)) if c not in set(todo))
                result.skipped_responses += skipped
                bar.update(skipped)
                t_step = time.perf_counter()
                if todo:
                    scorer.use_student(student_for_step(step, at))
                for start in range(0, len(todo), dist.world_size):
                    mine = todo[start + dist.rank] if start + dist.rank < len(todo) else None
                    payload = None
                    if mine is not None:
                        table = scorer.score(step, mine * batch_size, chunks[mine])
                        payload = (mine, _to_bytes(table), table.num_rows)
                    gathered = gather_object(payload, dist)
                    if dist.is_main:
                        for item in gathered:
                            if item is None:
                                continue
                            c, data, n_tokens = item
                            write_part(part_file(run_dir, step, c), _from_bytes(data))
                            result.responses += len(chunks[c])
                            result.tokens += n_tokens
                            bar.update(len(chunks[c]))
                if dist.is_main:
                    if not runs.token_file(run_dir, step).exists():
                        merge_parts(run_dir, step, len(chunks))
                    if step not in done_metrics:
                        metrics_out.append(step_metrics(run_dir, step, time.perf_counter() - t_step))
                    runs.write_status(run_dir, step=step)
                result.steps.append(step)
                barrier(dist)
        finally:
            if metrics_out is not None:
                metrics_out.close()
            bar.close()
    except BaseException as exc:
        if dist.is_main:
            state = "stopped" if isinstance(exc, KeyboardInterrupt) else "failed"
            runs.write_status(run_dir, state=state, error=None if state == "stopped" else f"{type(exc).__name__}: "
                              f"{exc}", finished_at=time.time())
        raise
    result.seconds = time.time() - started
    if dist.is_main:
        runs.write_status(run_dir, state="finished", step=rs.steps[-1], finished_at=time.time(),
                          tokens_per_s=result.tokens_per_s)
        parts = run_dir / PARTS_DIR
        if parts.is_dir() and not any(parts.iterdir()):
            parts.rmdir()
        log(result.summary())
    return result


def _to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


class _Progress:
    """tqdm over responses on a terminal; nothing in a log file (the summary line says it all)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="score", unit="resp", dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
