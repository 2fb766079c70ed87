"""The distillation loop: rollout -> score -> objective -> step -> log, one run directory per run.

Read top to bottom: ``Trainer.rollout`` draws responses (student prefixes, or teacher prefixes with
probability 1 - lmbda), ``Trainer.score`` runs one student forward (with grad) and one teacher
forward and derives every per-token statistic from those two logit tensors, ``Trainer.train_step``
applies the objective and the optimizer, and ``Trainer.run`` logs, evaluates, checkpoints and handles
SIGTERM (finish the step, checkpoint, write ``stopped``). Every step's randomness is seeded from
(seed, step), so a resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

import math
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from opd_core import checkpoints, runs
from opd_core.config import ConfigError, RunConfig
from opd_core.distributed import (
    DistInfo,
    all_reduce_gradients,
    all_reduce_sum,
    any_rank,
)
from opd_core.objectives import ObjectiveBatch, TeacherNeeds, compute_objective, get_objective, reduce_loss
from opd_core.objectives.chunked import token_logprob_stats
from opd_core.pairing import TokenizerPair
from opd_core.rollout import Sampling, sample_responses
from opd_core.scoring import (
    SequenceBatch,
    TeacherScores,
    build_batch,
    nucleus_membership,
    response_logits,
    score_teacher,
    step_stats,
    support_mass,
)
from opd_core.token_records import SampleInfo, build_table

DEFAULT_SUPPORT_K = 32


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


@dataclass
class Scored:
    """One batch after both forward passes: everything the objective and the logger read."""

    prompts: list[str]
    responses: list[list[int]]
    batch: SequenceBatch
    student_logits: torch.Tensor
    teacher: TeacherScores
    views: list
    mask: torch.Tensor          # tokens that carry supervision
    special: torch.Tensor
    eos: torch.Tensor


class Trainer:
    """Owns the models, optimizer and run directory of one run."""

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
        self.spec = get_objective(cfg.objective)
        self.params = dict(cfg.objective_params)
        self.needs = self.spec.needs_for(self.params)
        V = self.pair.student_vocab_size
        self.support_k = min(int(self.params.get("k", DEFAULT_SUPPORT_K)), V)
        self.stats_k = max(cfg.log_top_k, self.support_k)
        self.optimizer = torch.optim.AdamW(self.student.model.parameters(), lr=cfg.learning_rate,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0)
        self.sampling = self._sampling(cfg.top_p, cfg.top_k)
        self.eval_examples = self.task.examples("eval", cfg.eval_size, seed=cfg.seed)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opd-token-writer")
        self._pending: list[Future] = []
        self.stop_requested = False

    # ------------------------------------------------------------------ rollouts
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

    # ------------------------------------------------------------------ scoring
    def score(self, prompts: list[str], responses: list[list[int]], *, grad: bool) -> Scored:
        """One student forward (with grad when training) and one teacher forward over the same responses."""
        responses = [r if r else [self.pair.student_eos_ids[0]] for r in responses]
        prompt_ids = [self.pair.student_prompt_ids(p) for p in prompts]
        batch = build_batch(prompt_ids, responses, self.pair.student_pad_id, self.device)
        views = [self.pair.teacher_view(p, r) for p, r in zip(prompts, responses)]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.autocast):
            with torch.set_grad_enabled(grad):
                s_logits = response_logits(self.student.model, batch, self.pair.student_vocab_size)
            t_scores = score_teacher(self.pair, self.teacher.model, views, batch)
        ids = batch.response_ids
        real = batch.response_mask
        eos = torch.isin(ids, self._id_tensor(self.pair.student_eos_ids))
        special = torch.isin(ids, self._id_tensor(self.pair.special_ids))
        mask = real & ~torch.isin(ids, self._id_tensor(self.pair.masked_ids))
        if self.cfg.mask_after_eos:
            seen_eos = (eos & real).long().cumsum(-1) - (eos & real).long()
            mask &= seen_eos == 0
        if self.needs is not TeacherNeeds.SAMPLED:
            mask &= t_scores.aligned  # a full distribution exists only where the two tokenizations agree
        return Scored(prompts, responses, batch, s_logits, t_scores, views, mask, special & real, eos & real)

    def _id_tensor(self, ids) -> torch.Tensor:
        return torch.tensor(sorted(ids), dtype=torch.long, device=self.device)

    def objective(self, sc: Scored):
        ids = sc.batch.response_ids
        ob = ObjectiveBatch(student_logits=sc.student_logits, sampled_ids=ids, mask=sc.mask)
        if self.needs is TeacherNeeds.FULL:
            ob.teacher_logits = sc.teacher.logits
        elif self.needs is TeacherNeeds.TOPK:
            stats = token_logprob_stats(sc.teacher.logits, ids, top_k=self.support_k, chunk_tokens=None)
            ob.teacher_topk_ids, ob.teacher_topk_logps = stats["topk_ids"], stats["topk_logps"]
            ob.teacher_sampled_logp = sc.teacher.sampled_logp  # a support that adds the sampled token needs it
        else:
            ob.teacher_sampled_logp = sc.teacher.sampled_logp
        return compute_objective(self.cfg.objective, ob, **self.params)

    # ------------------------------------------------------------------ one step
    def _examples(self, step: int):
        """This rank's share of the step's prompts (all of them in a single process)."""
        examples = self.task.examples("train", self.cfg.prompts_per_step, seed=_step_seed(self.cfg.seed, step))
        return examples[self.dist.rank::self.dist.world_size]

    def train_step(self, step: int) -> tuple[dict, Scored, object, list]:
        cfg = self.cfg
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        examples = self._examples(step)
        rng = np.random.default_rng(_step_seed(cfg.seed, step, 1))
        source = "student" if rng.random() < cfg.lmbda else "teacher"
        torch.manual_seed(_step_seed(cfg.seed, step, 2))
        prompts = [ex.prompt for ex in examples for _ in range(cfg.num_rollouts)]
        responses = self.rollout(prompts, source, self.sampling)
        timings["t_rollout"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        sc = self.score(prompts, responses, grad=True)
        timings["t_score"] = time.perf_counter() - t1
        self._check_finite(step, "student logits", sc.student_logits, "the student's weights diverged "
                           "(learning rate too high?) or the input contains NaN")
        self._check_finite(step, "teacher log-probs", sc.teacher.sampled_logp, "the teacher checkpoint produces "
                           "NaN (broken weights or an fp16 overflow: try dtype=float32)")

        t2 = time.perf_counter()
        out = self.objective(sc)
        # Divide by the token count of the whole global batch (all ranks), never a mean of per-rank means.
        n_tokens = int(all_reduce_sum(sc.mask.sum().to(torch.float64), self.dist))
        loss = reduce_loss(out.loss, sc.mask, num_tokens=max(n_tokens, 1))
        self._check_finite(step, "loss", loss, "a log-probability of -inf reached the objective (a token the "
                           "teacher gives zero probability: try objective=topk_support or mask_special_tokens=true)")
        timings["t_objective"] = time.perf_counter() - t2

        t3 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        if n_tokens > 0:
            loss.backward()
        all_reduce_gradients(list(self.student.model.parameters()), self.dist)
        params = [p for p in self.student.model.parameters() if p.grad is not None]
        clip = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip)) if params else 0.0
        if not math.isfinite(grad_norm):
            raise NonFiniteError(f"step {step}: gradient norm is {grad_norm} (NaN/inf in the gradients); likely "
                                 "cause: an extreme log-ratio on one token; try max_grad_norm, a lower "
                                 "learning_rate, or objective=topk_support")
        lr = self.scheduler.get_last_lr()[0]
        if n_tokens > 0:
            self.optimizer.step()
        self.scheduler.step()
        timings["t_optimizer"] = time.perf_counter() - t3
        global_loss = float(all_reduce_sum(loss.detach().clone(), self.dist))
        metrics = {"step": step, "loss": global_loss, "grad_norm": grad_norm, "lr": lr,
                   "tokens": n_tokens, "prefix_source": source, **timings}
        return metrics, sc, out, examples

    @staticmethod
    def _check_finite(step: int, name: str, t: torch.Tensor, cause: str) -> None:
        if not bool(torch.isfinite(t.detach()).all()):
            bad = int((~torch.isfinite(t.detach())).sum())
            raise NonFiniteError(f"step {step}: {name} contain {bad} NaN/inf value(s); likely cause: {cause}")

    # ------------------------------------------------------------------ statistics
    def token_stats(self, sc: Scored, out) -> dict[str, torch.Tensor]:
        """Every per-token column, computed from the two logit tensors already in hand (no extra forward)."""
        ids = sc.batch.response_ids
        with torch.no_grad():
            s_logits = sc.student_logits.detach()
            s = token_logprob_stats(s_logits, ids, top_k=self.stats_k, chunk_tokens=None)
            t = token_logprob_stats(sc.teacher.logits, ids, top_k=self.stats_k, chunk_tokens=None)
            aligned = sc.teacher.aligned
            nan = torch.full_like(t["entropy"], float("nan"))
            s_lp = s["logp"]
            t_lp = sc.teacher.sampled_logp
            in_topp = (nucleus_membership(s_logits, ids, self.cfg.top_p, self.cfg.temperature)
                       if self.cfg.top_p < 1.0 and self.cfg.temperature > 0 else torch.ones_like(sc.mask))
            in_nucleus = nucleus_membership(sc.teacher.logits, ids, self.cfg.nucleus_p)
            # Where the two tokenizations disagree, judge the token by its own (chain-rule) probability.
            in_nucleus = torch.where(aligned, in_nucleus, t_lp >= math.log(1.0 - self.cfg.nucleus_p))
            k = self.support_k
            smass = support_mass(s_logits, t["topk_ids"][..., :k])
            overlap = (s["topk_ids"][..., :k, None] == t["topk_ids"][..., None, :k]).any(-1).float().mean(-1)
            L = self.cfg.log_top_k
            return {
                "student_logp": s_lp, "teacher_logp": t_lp, "log_ratio": t_lp - s_lp,
                "student_entropy": s["entropy"], "teacher_entropy": torch.where(aligned, t["entropy"], nan),
                "teacher_top1_prob": torch.where(aligned, t["topk_logps"][..., 0].exp(), nan),
                "teacher_rank": torch.where(aligned, t["rank"], torch.zeros_like(t["rank"])),
                "in_teacher_topk": aligned & (t["rank"] <= k), "in_student_topp": in_topp,
                "in_teacher_nucleus": in_nucleus, "aligned": aligned,
                "signal": out.signal.detach().float(), "token_loss": out.loss.detach().float(),
                "student_support_mass": torch.where(aligned, smass, nan),
                "topk_overlap": torch.where(aligned, overlap, nan),
                "teacher_topk_ids": t["topk_ids"][..., :L], "teacher_topk_logps": t["topk_logps"][..., :L],
                "student_topk_ids": s["topk_ids"][..., :L], "student_topk_logps": s["topk_logps"][..., :L],
            }

    def step_metrics(self, sc: Scored, out, grades: list) -> dict:
        """The step's metrics from one fused pass over both logit tensors (``scoring.step_stats``)."""
        from opd_core.diagnostics.imbalance import gini, top_share

        m = sc.mask
        real = sc.batch.response_mask
        al = sc.teacher.aligned
        k = self.support_k if self.needs is not TeacherNeeds.SAMPLED else 0
        st = step_stats(sc.student_logits.detach(), sc.teacher.logits, sc.batch.response_ids, top_k=k)
        sig = out.signal.detach().abs()[m].float().cpu().numpy()
        total = float(sig.sum())
        special_sig = float(out.signal.detach().abs()[m & (sc.special | sc.eos)].sum())
        lr = (sc.teacher.sampled_logp - st["student_logp"])[m]
        te = st["teacher_entropy"][real & al]
        scored = al & m
        return {
            "reverse_kl": float(st["reverse_kl"][scored].mean()) if scored.any() else None,
            "forward_kl": float(st["forward_kl"][scored].mean()) if scored.any() else None,
            "response_len": float(real.sum(-1).float().mean()),
            "signal_gini": gini(sig) if sig.size else None,
            "signal_top1pct_share": top_share(sig, 0.01) if sig.size else None,
            "special_token_signal_share": special_sig / total if total > 0 else 0.0,
            "negative_reward_share": float((lr < 0).float().mean()) if lr.numel() else None,
            "mean_log_ratio": float(lr.mean()) if lr.numel() else None,
            "teacher_entropy": float(te.mean()) if te.numel() else None,
            "student_support_mass": float(st["support_mass"][scored].mean()) if k and scored.any() else None,
            "masked_share": float(1 - m.sum() / real.sum().clamp(min=1)),
            "train_accuracy": float(np.mean([g.correct for g in grades])) if grades else None,
            "eos_rate": float((sc.eos & real).any(-1).float().mean()),
        }

    def grade(self, prompts: list[str], responses: list[list[int]], examples_by_prompt: dict) -> tuple[list, list]:
        texts = [self.student.tokenizer.decode(r, skip_special_tokens=True) for r in responses]
        return [self.task.grade(examples_by_prompt[p], t) for p, t in zip(prompts, texts)], texts

    def sample_infos(self, sc: Scored, grades: list, texts: list[str]) -> list[SampleInfo]:
        infos = []
        for p, r, v, g, text in zip(sc.prompts, sc.responses, sc.views, grades, texts):
            full_text, spans = self.pair.response_spans(r)
            strings = [full_text[a:b] for a, b in spans]
            infos.append(SampleInfo(p, text, g.correct, g.format_ok, g.first_error_char, spans, strings,
                                    v.teacher_strings))
        return infos

    # ------------------------------------------------------------------ logging
    def is_log_step(self, step: int) -> bool:
        n = self.cfg.log_tokens_every
        return n > 0 and (step == 1 or step % n == 0 or step == self.cfg.steps)

    def log_tokens(self, step: int, sc: Scored, out, cols: dict, examples_by_prompt: dict, grades, texts) -> None:
        """Queue this step's token records (and the teacher's reference rollouts) for a background write."""
        cfg = self.cfg
        rows = list(range(len(sc.prompts)))
        if cfg.log_samples:
            rows = rows[: cfg.log_samples]
        infos = self.sample_infos(sc, grades, texts)
        tables = [build_table(step=step, sample_offset=0, prefix_source=self._last_source,
                              reference_only=False, response_ids=sc.batch.response_ids, real=sc.batch.response_mask,
                              masked=~sc.mask, special=sc.special, eos=sc.eos, cols=cols, samples=infos, rows=rows,
                              id_to_string=self.pair.student_strings)]
        if cfg.reference_rollouts and self._last_source == "student":
            ref_prompts = list(dict.fromkeys(sc.prompts))
            ref_resp = self.rollout(ref_prompts, "teacher", self._sampling(1.0, 0))
            ref = self.score(ref_prompts, ref_resp, grad=False)
            with torch.no_grad():
                ref_out = self.objective(ref)
            ref_cols = self.token_stats(ref, ref_out)
            ref_grades, ref_texts = self.grade(ref_prompts, ref.responses, examples_by_prompt)
            tables.append(build_table(step=step, sample_offset=len(sc.prompts), prefix_source="teacher",
                                      reference_only=True, response_ids=ref.batch.response_ids,
                                      real=ref.batch.response_mask, masked=~ref.mask, special=ref.special,
                                      eos=ref.eos, cols=ref_cols, samples=self.sample_infos(ref, ref_grades,
                                                                                            ref_texts),
                                      id_to_string=self.pair.student_strings))
            self._reference_entropy = float(np.nanmean(ref_cols["teacher_entropy"][ref.batch.response_mask]
                                                       .cpu().numpy()))
        import pyarrow as pa

        table = pa.concat_tables(tables, promote_options="default")
        self._pending.append(self._writer.submit(runs.write_token_records, self.run_dir, step, table))

    def flush_tokens(self) -> None:
        for f in self._pending:
            f.result()
        self._pending.clear()

    def write_alignment(self) -> None:
        """alignment.json: the tokenizer comparison of this run's pair, which the mismatch page reads."""
        from opd_core.alignment import compare_tokenizers

        report = compare_tokenizers(self.student.tokenizer, self.teacher.tokenizer)
        data = report.to_dict()
        data["masked_student_ids"] = sorted(self.pair.masked_ids)
        data["masked_student_tokens"] = [self.pair.student_strings[i] for i in sorted(self.pair.masked_ids)]
        data["shared_vocabulary"] = self.pair.shared
        runs.atomic_write_json(self.run_dir / "alignment.json", data)

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
    def run(self, start_step: int = 0, progress: bool = True) -> str:
        """Train from ``start_step`` to ``cfg.steps``; returns the final state (finished/stopped)."""
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
        bar = _progress_bar(cfg.steps, start_step, enabled=progress and main)
        last_status = 0.0
        state = "finished"
        self._reference_entropy = None
        metrics_out = runs.MetricsWriter(self.run_dir) if main else None
        step = start_step
        if main and start_step == 0 and cfg.eval_every:
            # The student before any update: the baseline that "eval accuracy falling" and Compare start from.
            metrics_out.append({"step": 0, "time_s": 0.0, "tokens": 0, **self.evaluate()})
        try:
            for step in range(start_step + 1, cfg.steps + 1):
                t_step = time.perf_counter()
                metrics, sc, out, examples = self.train_step(step)
                self._last_source = metrics["prefix_source"]
                t4 = time.perf_counter()
                by_prompt = {ex.prompt: ex for ex in examples}
                grades, texts = self.grade(sc.prompts, sc.responses, by_prompt)
                logging_step = main and self.is_log_step(step)
                extra = self.step_metrics(sc, out, grades)
                entropy = extra.pop("teacher_entropy")
                metrics.update(extra)
                key = "teacher_entropy_student_prefix" if self._last_source == "student" else \
                    "teacher_entropy_teacher_prefix"
                metrics[key] = entropy
                t_log0 = time.perf_counter()
                if logging_step:
                    self.log_tokens(step, sc, out, self.token_stats(sc, out), by_prompt, grades, texts)
                    if self._reference_entropy is not None:
                        metrics["teacher_entropy_teacher_prefix"] = self._reference_entropy
                metrics["t_logging"] = time.perf_counter() - t_log0
                metrics["t_metrics"] = t_log0 - t4
                if main and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    t_eval = time.perf_counter()
                    metrics.update(self.evaluate())
                    metrics["t_eval"] = time.perf_counter() - t_eval
                step_time = time.perf_counter() - t_step
                metrics["step_time_s"] = step_time
                metrics["time_s"] = time.time() - started + self._time_offset
                metrics["tokens_per_s"] = metrics["tokens"] / step_time if step_time > 0 else None
                stop = any_rank(self.stop_requested, self.dist) and step < cfg.steps
                if main:
                    metrics_out.append(metrics)
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
    _time_offset = 0.0


class _progress_bar:
    """tqdm on a terminal; a plain line every 10% when writing to a log file."""

    def __init__(self, total: int, start: int, enabled: bool):
        self.total = total
        self.tty = enabled and sys.stderr.isatty()
        self.done = start
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(self, n: int, metrics: dict) -> None:
        self.done += n
        post = {"loss": f"{metrics['loss']:.3f}", "gnorm": f"{metrics['grad_norm']:.2f}"}
        if metrics.get("eval_accuracy") is not None:
            post["eval_acc"] = f"{metrics['eval_accuracy']:.2f}"
        if self.bar is not None:
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(n)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            print(f"step {self.done}/{self.total} " + " ".join(f"{k}={v}" for k, v in post.items()), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def __getattr__(name: str):
    """The entry points moved to :mod:`opd_core.train_entry`; old imports keep working."""
    if name in ("run_in_dir", "train", "train_from_cli"):
        from opd_core import train_entry

        return getattr(train_entry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
