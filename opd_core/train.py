"""The distillation loop: rollout -> score -> objective -> optimizer step -> (reference rollouts) -> log.

Read top to bottom, in the manner of tinker-cookbook's ``train_on_policy.py``: each phase is a small
method that takes its inputs as arguments and returns a typed record (:class:`Rollout`,
:class:`Scored`, :class:`Update`, :class:`Reference`, :class:`StepResult`); nothing passes between
phases through attributes of the trainer, which only holds the models, the optimizer and the
settings. Every statistic comes from :mod:`opd_core.stats` and every record is built by
:mod:`opd_core.run_writer`; a logged step's token tables are queued to :class:`opd_core.loop_tokens.TokenLog`,
which writes them off the training thread. ``Trainer.run`` logs, evaluates, checkpoints and handles SIGTERM (finish
the step, checkpoint, write ``stopped``). Every step's randomness is seeded from (seed, step), so a
resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from opd_core import checkpoints, fast_paths, runs, stats
from opd_core.config import ConfigError, RunConfig
from opd_core.distributed import DistInfo, all_reduce_gradients, all_reduce_sum, any_rank
from opd_core.loop_records import Reference, Rollout, Scored, StepResult, Update
from opd_core.loop_tokens import TokenLog
from opd_core.objectives import (
    ObjectiveBatch,
    ObjectiveOutput,
    TeacherNeeds,
    compute_objective,
    entropy_gate,
    get_objective,
    reduce_loss,
)
from opd_core.objectives.chunked import token_logprob_stats
from opd_core.pairing import TokenizerPair, alignment_coverage
from opd_core.progress import ProgressBar, timed
from opd_core.rescue import loop_rescue
from opd_core.rollout import Sampling, sample_responses
from opd_core.run_writer import metrics_record, write_alignment
from opd_core.scoring import build_batch, response_logits, score_teacher
from opd_core.student_head import response_hidden

DEFAULT_SUPPORT_K = stats.DEFAULT_SUPPORT_K


class NonFiniteError(RuntimeError):
    """NaN or inf in a training tensor: the message names the step, the tensor and the likely cause."""


SMALL_MODEL_PARAMS = 20_000_000


def cpu_threads(requested: int, *models: torch.nn.Module) -> int:
    """Threads for CPU math: tiny models run faster on one thread (measured: 35x on the toy rollouts
    of a loaded 2-core machine, see BENCHMARKS.md); larger ones keep torch's default."""
    if requested:
        return requested
    params = sum(p.numel() for m in models for p in m.parameters())
    return 1 if params < SMALL_MODEL_PARAMS else torch.get_num_threads()


def _step_seed(seed: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + step * 7_919 + salt) % (2**31 - 1)


class Trainer:
    """Owns the models, optimizer and settings of one run; its phases pass records, not attributes."""

    def __init__(self, cfg: RunConfig, run_dir: Path, *, log=print, dist: DistInfo | None = None):
        from opd_core.models import load_pair
        from opd_core.tasks import load_task

        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.log = log
        self.dist = dist or DistInfo()
        if cfg.prompts_per_step % self.dist.world_size:
            raise ConfigError(f"config field 'prompts_per_step': {cfg.prompts_per_step} does not split over "
                              f"{self.dist.world_size} processes; use a multiple of {self.dist.world_size}")
        torch.manual_seed(cfg.seed)
        device = cfg.device
        if self.dist.enabled and device == "auto" and torch.cuda.is_available():
            device = f"cuda:{self.dist.local_rank}"
        self.student, self.teacher = load_pair(cfg.student, cfg.teacher, device=device, dtype=cfg.dtype,
                                               trust_remote_code=cfg.trust_remote_code)
        self.device = next(self.student.model.parameters()).device
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.cpu_threads, self.student.model, self.teacher.model))
        self.teacher.model.eval()
        self.teacher.model.requires_grad_(False)
        self.student.model.train()
        self.task = load_task(cfg.task)
        self.pair = TokenizerPair(self.student.tokenizer, self.teacher.tokenizer,
                                  mask_special_tokens=cfg.mask_special_tokens,
                                  mask_token_strings=cfg.mask_token_strings,
                                  student_model=self.student.model, teacher_model=self.teacher.model)
        for warning in self.pair.warnings():
            self.log(f"warning: {warning}")
        self.spec = get_objective(cfg.objective)
        self.params = dict(cfg.objective_params)
        self.needs = self.spec.needs_for(self.params)
        self.support_k = min(int(self.params.get("k", DEFAULT_SUPPORT_K)), self.pair.student_vocab_size)
        self.fast_path = fast_paths.plan(cfg, cfg.objective, self.params, self.student.model)  # non-logging steps
        self.optimizer = torch.optim.AdamW(self.student.model.parameters(), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
        self.sampling = self._sampling(cfg.top_p, cfg.top_k)
        self.eval_examples = self.task.examples("eval", cfg.eval_size, seed=cfg.seed)
        self.tokens = TokenLog(self.run_dir, self.pair)
        self.stop_requested = False

    # ------------------------------------------------------------------ rollout
    def _sampling(self, top_p: float, top_k: int) -> Sampling:
        """The run's sampling with the given nucleus; temperature 0 means greedy decoding."""
        t = self.cfg.temperature
        return Sampling(t if t > 0 else 1.0, top_p, top_k, self.cfg.max_new_tokens, greedy=t == 0)

    def rollout(self, prompts: list[str], source: str, sampling: Sampling) -> list[list[int]]:
        """Responses in the student's tokens, written by the student or (teacher prefixes) by the teacher."""
        if source == "student":
            ids = [self.pair.student_prompt_ids(p) for p in prompts]
            responses, _ = sample_responses(self.student.model, ids, sampling, eos_ids=self.pair.student_eos_ids,
                                            pad_id=self.pair.student_pad_id, vocab_size=self.pair.student_vocab_size)
            return responses
        ids = [self.pair.teacher_prompt_ids(p) for p in prompts]
        t_resp, _ = sample_responses(self.teacher.model, ids, sampling, eos_ids=self.pair.teacher_eos_ids,
                                     pad_id=self.pair.teacher_pad_id, vocab_size=len(self.pair.teacher))
        if self.pair.shared:
            return t_resp
        return [self.pair.student_ids_for_text(*self.pair.teacher_text(r)) for r in t_resp]

    def draw_rollout(self, step: int) -> Rollout:
        """This rank's share of the step's prompts, who writes the prefixes (lmbda), and the responses."""
        cfg = self.cfg
        examples = self.task.examples("train", cfg.prompts_per_step, seed=_step_seed(cfg.seed, step))
        examples = examples[self.dist.rank::self.dist.world_size]
        rng = np.random.default_rng(_step_seed(cfg.seed, step, 1))
        source = "student" if rng.random() < cfg.lmbda else "teacher"
        torch.manual_seed(_step_seed(cfg.seed, step, 2))
        prompts = [ex.prompt for ex in examples for _ in range(cfg.num_rollouts)]
        return Rollout(prompts, self.rollout(prompts, source, self.sampling), source,
                       {ex.prompt: ex for ex in examples})

    # ------------------------------------------------------------------ score
    def score(self, prompts: list[str], responses: list[list[int]], *, grad: bool, head: bool = False,
              logged: bool = False) -> Scored:
        """One student forward (with grad when training; with ``head`` its hidden states, not its logits)
        and one teacher forward over the same responses; ``logged`` (a batch whose tokens are written) also
        keeps a cross-tokenizer teacher's own top-K (``scoring.own_topk``)."""
        responses = [r if r else [self.pair.student_eos_ids[0]] for r in responses]
        prompt_ids = [self.pair.student_prompt_ids(p) for p in prompts]
        batch = build_batch(prompt_ids, responses, self.pair.student_pad_id, self.device)
        views = [self.pair.teacher_view(p, r) for p, r in zip(prompts, responses)]
        tau = self.cfg.score_temperature_value  # both models scored at softmax(z / tau) (docs/objectives.md)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast):
            with torch.set_grad_enabled(grad):
                s_head = response_hidden(self.student.model, batch, self.pair.student_vocab_size) if head else None
                s_logits = None if s_head else response_logits(self.student.model, batch, self.pair.student_vocab_size)
                if tau != 1.0:  # never on a fast-path step (fast_paths.plan)
                    s_logits = s_logits / tau
            t_scores = score_teacher(self.pair, self.teacher.model, views, batch, temperature=tau,
                                     own_top_k=self.cfg.log_top_k if logged else 0)
        ids, real = batch.response_ids, batch.response_mask
        eos = torch.isin(ids, self._id_tensor(self.pair.student_eos_ids)) & real
        special = torch.isin(ids, self._id_tensor(self.pair.special_ids)) & real
        masks = {"special": torch.isin(ids, self._id_tensor(self.pair.masked_ids)) & real}
        if self.cfg.mask_after_eos:
            masks["after_eos"] = (eos.long().cumsum(-1) - eos.long() > 0) & real
        # No teacher number without an exact alignment (pairing.py); a full distribution needs a 1:1 one.
        masks["unaligned"] = t_scores.unaligned(real, full_distribution=self.needs is not TeacherNeeds.SAMPLED)
        mask = real.clone()
        for m in masks.values():
            mask &= ~m
        if self.cfg.entropy_top_ratio < 1.0:  # the seed recipe: train on each response's most uncertain tokens
            entropy = token_logprob_stats(s_logits.detach(), ids, top_k=0, chunk_tokens=None)["entropy"]
            kept = entropy_gate(entropy, mask, self.cfg.entropy_top_ratio)
            masks["entropy_gate"], mask = mask & ~kept, kept
        return Scored(prompts, responses, batch, s_logits, t_scores, views, mask, special, eos, masks, s_head)

    def _id_tensor(self, ids) -> torch.Tensor:
        return torch.tensor(sorted(ids), dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ objective and optimizer step
    def objective(self, sc: Scored) -> tuple[ObjectiveOutput, stats.TokenStats | None]:
        """The objective's per-token loss and signal for a scored batch (the teacher view it needs), and on a
        fast-path step the step's every-step record, made in the same pass over the teacher (else None)."""
        ids = sc.batch.response_ids
        if sc.head is not None:  # a fast-path step (opd_core.fast_paths)
            return self.fast_path.compute(sc, self.support_k, self.cfg.loss_reduction)
        ob = ObjectiveBatch(student_logits=sc.student_logits, sampled_ids=ids, mask=sc.mask)
        if self.needs is TeacherNeeds.FULL:
            ob.teacher_logits = sc.teacher.logits
        elif self.needs is TeacherNeeds.TOPK:
            top = token_logprob_stats(sc.teacher.logits, ids, top_k=self.support_k, chunk_tokens=None)
            ob.teacher_topk_ids, ob.teacher_topk_logps = top["topk_ids"], top["topk_logps"]
            ob.teacher_sampled_logp = sc.teacher.sampled_logp  # a support that adds the sampled token needs it
        else:
            ob.teacher_sampled_logp = sc.teacher.sampled_logp
        return compute_objective(self.cfg.objective, ob, **self.params), None

    def reduce(self, step: int, sc: Scored, out: ObjectiveOutput) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(loss to differentiate, objective value to log, global token count) over the global batch.

        ``loss_reduction``: ``token_mean`` divides by all ranks' unmasked tokens; ``sequence_mean`` averages
        each response's token mean over all ranks' responses. The value is reduced the same way.
        """
        n_tokens = int(all_reduce_sum(sc.mask.sum().to(torch.float64), self.dist))
        n_seqs = None
        if self.cfg.loss_reduction == "sequence_mean":
            rows = torch.tensor(float(sc.mask.shape[0]), dtype=torch.float64, device=self.device)
            n_seqs = int(all_reduce_sum(rows, self.dist))
        how = dict(num_tokens=max(n_tokens, 1), reduction=self.cfg.loss_reduction, num_sequences=n_seqs)
        loss = reduce_loss(out.loss, sc.mask, **how)
        self._check_finite(step, "loss", loss, "a log-probability of -inf reached the objective (a token the "
                           "teacher gives zero probability: try objective=topk_support or mask_special_tokens=true)")
        return loss, reduce_loss(out.value, sc.mask, **how), n_tokens

    def optimizer_step(self, step: int, loss: torch.Tensor, n_tokens: int) -> tuple[float, float]:
        """Backward, all-reduce, clip and step; returns (grad norm before clipping, learning rate used)."""
        self.optimizer.zero_grad(set_to_none=True)
        if n_tokens > 0:
            loss.backward()
        all_reduce_gradients(list(self.student.model.parameters()), self.dist)
        params = [p for p in self.student.model.parameters() if p.grad is not None]
        clip = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        if not math.isfinite(grad_norm):
            raise NonFiniteError(f"step {step}: gradient norm is {grad_norm} (NaN/inf in the gradients); likely "
                                 "cause: an extreme log-ratio on one token; try max_grad_norm, a lower "
                                 "learning_rate, or objective=topk_support")
        lr = self.scheduler.get_last_lr()[0]
        if n_tokens > 0:
            self.optimizer.step()
        self.scheduler.step()
        return grad_norm, lr

    def train_step(self, step: int) -> StepResult:
        """One step: rollout, score, objective, optimizer step, each timed."""
        timings: dict[str, float] = {}
        with timed(timings, "t_rollout"):
            rollout = self.draw_rollout(step)
        with timed(timings, "t_score"):
            sc = self.score(rollout.prompts, rollout.responses, grad=True,
                            head=self.fast_path is not None and not self.is_log_step(step),
                            logged=self.is_log_step(step))
        self._check_finite(step, "student logits", sc.student_logits if sc.head is None else sc.head.hidden,
                           "the student's weights diverged "
                           "(learning rate too high?) or the input contains NaN")
        self._check_finite(step, "teacher log-probs", sc.teacher.sampled_logp, "the teacher checkpoint produces "
                           "NaN (broken weights or an fp16 overflow: try dtype=float32)")
        with timed(timings, "t_objective"):
            out, record = self.objective(sc)
            loss, value, n_tokens = self.reduce(step, sc, out)
        with timed(timings, "t_optimizer"):
            grad_norm, lr = self.optimizer_step(step, loss, n_tokens)
        # each rank divided by the global count, so the sums are the global numbers
        global_value = float(all_reduce_sum(value.detach().clone(), self.dist))
        surrogate = float(all_reduce_sum(loss.detach().clone(), self.dist))
        update = Update(out, global_value, grad_norm, lr, n_tokens, surrogate_loss=surrogate, record=record)
        return StepResult(step, rollout, sc, update, timings)

    @staticmethod
    def _check_finite(step: int, name: str, t: torch.Tensor, cause: str) -> None:
        if not bool(torch.isfinite(t.detach()).all()):
            bad = int((~torch.isfinite(t.detach())).sum())
            raise NonFiniteError(f"step {step}: {name} contain {bad} NaN/inf value(s); likely cause: {cause}")

    # ------------------------------------------------------------------ statistics
    def step_metrics(self, sc: Scored, out: ObjectiveOutput, source: str, grades: list,
                     record: stats.TokenStats | None = None) -> dict:
        """The step's metrics as reductions (``stats.step_metrics``) of the full record of a logging step, or
        else of the every-step fused pass, which computes the top-K set statistics only when the objective
        works on a top-K support (a sampled-token step does not otherwise pay for a top-K)."""
        if record is None:  # (a fast-path step brings its record; it leaves the top-K set metrics to logging steps)
            k = self.support_k if self.needs is not TeacherNeeds.SAMPLED and sc.head is None else 0
            record = stats.step_stats(sc.full_student_logits(), sc.teacher.logits, sc.batch.response_ids,
                                      sc.teacher.sampled_logp, support_k=k, aligned=sc.teacher.aligned,
                                      signal=out.signal)
        metrics = stats.step_metrics(record, trained=sc.mask, real=sc.batch.response_mask, special=sc.special,
                                     eos=sc.eos, prefix_source=source)
        metrics["train_accuracy"] = float(np.mean([g.correct for g in grades])) if grades else None
        metrics.update(alignment_coverage(sc.teacher.kind, sc.batch.response_mask))
        return metrics

    def token_record(self, sc: Scored, out: ObjectiveOutput) -> stats.TokenStats:
        """The full per-token record of a scored batch from the logits already in hand (no extra forward);
        unaligned tokens get no teacher number (``TeacherScores.no_number_where_unaligned``)."""
        record = stats.dense_token_stats(sc.student_logits, sc.teacher.logits, sc.batch.response_ids,
                                       sc.teacher.sampled_logp, aligned=sc.teacher.aligned, support_k=self.support_k,
                                       log_top_k=self.cfg.log_top_k, rollout_top_p=self.cfg.top_p,
                                       # the logits are already z / tau; the rollout sampled softmax(z / T)
                                       rollout_temperature=self.cfg.temperature / self.cfg.score_temperature_value,
                                       nucleus_p=self.cfg.nucleus_p,
                                       signal=out.signal, token_loss=out.loss, token_value=out.value)
        if sc.teacher.own_topk_ids is not None:
            record = replace(record, teacher_own_topk_ids=sc.teacher.own_topk_ids,
                             teacher_own_topk_logps=sc.teacher.own_topk_logps)
        return sc.teacher.no_number_where_unaligned(record, sc.batch.response_mask)

    def grade(self, prompts: list[str], responses: list[list[int]], examples_by_prompt: dict) -> tuple[list, list]:
        texts = [self.student.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return [self.task.grade(examples_by_prompt[p], t) for p, t in zip(prompts, texts)], texts

    # ------------------------------------------------------------------ reference rollouts and logging
    def is_log_step(self, step: int) -> bool:
        n = self.cfg.log_tokens_every
        return n > 0 and (step == 1 or step % n == 0 or step == self.cfg.steps)

    def reference_rollouts(self, rollout: Rollout) -> Reference:
        """The teacher's own greedy-free rollouts for the step's prompts, scored without grad: the baseline
        the drift diagnostics compare the student's prefixes against."""
        prompts = list(dict.fromkeys(rollout.prompts))
        responses = self.rollout(prompts, "teacher", self._sampling(1.0, 0))
        ref = self.score(prompts, responses, grad=False, logged=True)
        with torch.no_grad():
            out, _ = self.objective(ref)
        grades, texts = self.grade(prompts, ref.responses, rollout.examples)
        return Reference(ref, out, self.token_record(ref, out), grades, texts)

    def flush_tokens(self) -> None:
        self.tokens.flush()

    def write_alignment(self) -> None:
        """alignment.json for this run's pair (``run_writer.write_alignment``)."""
        write_alignment(self.run_dir, self.student.tokenizer, self.teacher.tokenizer, self.pair)

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self) -> dict:
        prompts = [ex.prompt for ex in self.eval_examples]
        responses = self.rollout(prompts, "student", Sampling(max_new_tokens=self.cfg.max_new_tokens, greedy=True))
        by_prompt = {ex.prompt: ex for ex in self.eval_examples}
        grades, _ = self.grade(prompts, responses, by_prompt)
        return {"eval_accuracy": float(np.mean([g.correct for g in grades])),
                "eval_format_ok": float(np.mean([g.format_ok for g in grades])),
                "eval_response_len": float(np.mean([len(r) for r in responses]))}

    # ------------------------------------------------------------------ the loop
    def observe(self, result: StepResult, logging_step: bool) -> dict:
        """Grade, compute the step's metrics and, on logging steps, the reference rollouts and token records."""
        cfg, sc, source = self.cfg, result.scored, result.rollout.source
        timings: dict[str, float] = {}
        with timed(timings, "t_metrics"):
            grades, texts = self.grade(sc.prompts, sc.responses, result.rollout.examples)
            metrics = result.metrics()
            if not logging_step:
                metrics.update(self.step_metrics(sc, result.update.out, source, grades, result.update.record))
        reference = None
        if logging_step and cfg.reference_rollouts and source == "student":
            with timed(timings, "t_reference"):
                reference = self.reference_rollouts(result.rollout)
                ref = reference.scored
                ref_metrics = stats.step_metrics(reference.record, trained=ref.mask, real=ref.batch.response_mask,
                                                 special=ref.special, eos=ref.eos, prefix_source="teacher")
                metrics["teacher_entropy_teacher_prefix"] = ref_metrics["teacher_entropy_teacher_prefix"]
        with timed(timings, "t_logging"):
            if logging_step:  # the full record replaces the every-step pass: metrics and token table from it
                record = self.token_record(sc, result.update.out)
                metrics.update(self.step_metrics(sc, result.update.out, source, grades, record))
                rows = list(range(len(sc.prompts)))[: cfg.log_samples or None]
                self.tokens.queue(result, record.rows(rows) if cfg.log_samples else record, rows, grades, texts,
                                reference)
        if logging_step and source == "student" and cfg.rescue_budget:  # can the teacher finish these prefixes?
            with timed(timings, "t_rescue"):
                metrics.update(loop_rescue(result.step, sc.prompts, sc.responses, grades, record, self.pair,
                                           self.teacher.model, self.task, result.rollout.examples, self.sampling,
                                           max_new_tokens=cfg.max_new_tokens, reference=reference,
                                           seed=_step_seed(cfg.seed, result.step, 3), budget=cfg.rescue_budget))
        return {**metrics, **timings}

    def run(self, start_step: int = 0, progress: bool = True, time_offset: float = 0.0) -> str:
        """Train from ``start_step`` to ``cfg.steps``; returns the final state (finished/stopped).

        ``time_offset`` is the training time already spent before ``start_step`` (a resumed run).
        """
        cfg = self.cfg
        main = self.dist.is_main
        started = time.time()
        if main:
            previous = runs.read_json(self.run_dir / runs.STATUS_FILE, {}) or {}
            runs.write_status(self.run_dir, state="running", step=start_step, total_steps=cfg.steps,
                              started_at=previous.get("started_at") or started,
                              resumed_at=started if start_step else None, error=None, device=str(self.device),
                              world_size=self.dist.world_size)
            runs.mark_process(self.run_dir)
            self.write_alignment()
        bar = ProgressBar(cfg.steps, start_step, enabled=progress and main)
        last_status = 0.0
        state = "finished"
        metrics_out = runs.MetricsWriter(self.run_dir) if main else None
        step = start_step
        if main and start_step == 0 and cfg.eval_every:
            # The student before any update: the baseline that "eval accuracy falling" and Compare start from.
            metrics_out.append({"step": 0, "time_s": 0.0, "tokens": 0, **self.evaluate()})
        try:
            for step in range(start_step + 1, cfg.steps + 1):
                t_step = time.perf_counter()
                result = self.train_step(step)
                metrics = self.observe(result, main and self.is_log_step(step))
                del result  # its [B,T,V] tensors must not live on through the next step (peak memory)
                if main and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    with timed(metrics, "t_eval"):
                        metrics.update(self.evaluate())
                step_time = time.perf_counter() - t_step
                metrics["step_time_s"] = step_time
                metrics["time_s"] = time.time() - started + time_offset
                metrics["tokens_per_s"] = metrics["tokens"] / step_time if step_time > 0 else None
                stop = any_rank(self.stop_requested, self.dist) and step < cfg.steps
                if main:
                    metrics_out.append(metrics_record(metrics))
                    bar.update(1, metrics)
                    periodic = cfg.checkpoint_every and step % cfg.checkpoint_every == 0
                    if periodic or step == cfg.steps or stop:
                        self.flush_tokens()
                        checkpoints.save(self.run_dir, step, self.student.model, self.optimizer, self.scheduler)
                    now = time.time()
                    if now - last_status > 0.5 or step == cfg.steps:
                        runs.write_status(self.run_dir, step=step)
                        last_status = now
                if stop:
                    state = "stopped"
                    break
        finally:
            if metrics_out is not None:
                metrics_out.close()
            self.flush_tokens()
            bar.close()
        if main:
            runs.write_status(self.run_dir, state=state, step=step, finished_at=time.time())
            self.log(f"{state} at step {step}/{cfg.steps}: {self.run_dir}")
        return state


def __getattr__(name: str):
    """The entry points moved to :mod:`opd_core.train_entry`; old imports keep working."""
    if name in ("run_in_dir", "train", "train_from_cli"):
        from opd_core import train_entry

        return getattr(train_entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
