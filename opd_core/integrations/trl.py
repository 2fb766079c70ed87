"""Make a TRL on-policy distillation run (``GKDTrainer``, ``DistillationTrainer``) diagnosable by OPD Lab.

One call after building the trainer::

    trainer = GKDTrainer(model=..., teacher_model=..., args=..., train_dataset=..., processing_class=tok)
    attach_opd_lab(trainer, runs_dir="runs", name="gkd-qwen", every=10)
    trainer.train()          # the run directory is complete when train() returns (or failed/stopped)

Why a wrapper around ``compute_loss`` and not a plain ``TrainerCallback``: callbacks never see the
batch. The wrapper leaves TRL's loss untouched and, on the steps the logger samples (every N steps,
M responses), runs one extra no-grad forward pass of the student and of the teacher over those M
responses, then hands the logits to :meth:`OPDLogger.log_logits`. That is independent of how each
trainer computes its loss (GKD materialises logits, ``DistillationTrainer`` never does). It reads
only the batch layout (``input_ids``/``labels`` for GKD; ``prompt_ids``/``completion_ids``/
``completion_mask`` for ``DistillationTrainer``) and ``trainer.teacher_model``; when those are
missing the error names the TRL version. Metrics (loss, grad_norm, learning rate) come from a
callback on TRL's own ``on_log``.

Cost: on a logged step, M/B of one student forward and one teacher forward (no backward); nothing
on the other steps. Under DeepSpeed ZeRO-3 / FSDP the extra forwards run on every rank (their
parameters are gathered collectively); only rank 0 writes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from opd_core import runs
from opd_core.logging_sdk import OPDLogger, OPDLoggerError


class TRLIntegrationError(OPDLoggerError):
    """A trainer the TRL bridge cannot hook, naming the TRL version and what to do instead."""


def _trl_version() -> str:
    try:
        import trl
    except ImportError:
        return "not installed"
    return str(getattr(trl, "__version__", "unknown"))


def objective_of(beta: float) -> tuple[str, dict]:
    """The OPD Lab objective matching TRL's generalized JSD at ``beta`` (same convention: 0 forward, 1 reverse)."""
    if beta == 0:
        return "forward_kl", {}
    if beta == 1:
        return "reverse_kl", {}
    return "jsd", {"beta": float(beta)}


def _model_name(model: Any) -> str | None:
    model = getattr(model, "module", model)
    return getattr(getattr(model, "config", None), "_name_or_path", None) or getattr(model, "name_or_path", None)


def trainer_config(trainer: Any, every: int) -> dict:
    """config.json for a TRL run, in the keys OPD Lab reads (DESIGN.md), from the trainer's own arguments."""
    args = trainer.args
    beta = float(getattr(trainer, "beta", getattr(args, "beta", 0.5)))
    objective, params = objective_of(beta)
    max_steps = getattr(args, "max_steps", -1)
    return {
        "trainer": f"trl.{type(trainer).__name__}", "trl_version": _trl_version(),
        "student": _model_name(trainer.model), "teacher": _model_name(getattr(trainer, "teacher_model", None)),
        "objective": objective, "objective_params": params,
        "lmbda": float(getattr(trainer, "lmbda", getattr(args, "lmbda", 1.0))),
        "seq_kd": bool(getattr(args, "seq_kd", False)),
        "temperature": float(getattr(args, "temperature", 1.0)), "top_p": float(getattr(args, "top_p", 1.0) or 1.0),
        "top_k": getattr(args, "top_k", None),
        "max_new_tokens": getattr(args, "max_new_tokens", None) or getattr(args, "max_completion_length", None),
        "steps": max_steps if max_steps and max_steps > 0 else None,
        "learning_rate": float(args.learning_rate), "max_grad_norm": getattr(args, "max_grad_norm", None),
        "per_device_train_batch_size": getattr(args, "per_device_train_batch_size", None),
        "gradient_accumulation_steps": getattr(args, "gradient_accumulation_steps", None),
        "mask_special_tokens": False, "mask_after_eos": True, "seed": getattr(args, "seed", None),
        "log_tokens_every": every,
    }


def _left_align(mask: Tensor, *tensors: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Shift each row so its first response token sits at column 0 (``pos`` is a position in the response)."""
    length = mask.shape[1]
    start = torch.where(mask.any(1), mask.int().argmax(1), torch.zeros_like(mask[:, 0], dtype=torch.long))
    last = length - 1 - mask.flip(1).int().argmax(1)
    width = int((last - start + 1).clamp(min=0).max()) if mask.any() else 0
    cols = (start[:, None] + torch.arange(width, device=mask.device)[None, :]).clamp(max=length - 1)
    aligned = mask.gather(1, cols) & (torch.arange(width, device=mask.device)[None, :] <= (last - start)[:, None])
    out = []
    for t in tensors:
        index = cols if t.dim() == 2 else cols[:, :, None].expand(-1, -1, t.shape[-1])
        out.append(t.gather(1, index))
    return aligned, out


def _forward_logits(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Logits without a graph and without dropout (the logged numbers must not carry dropout noise)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(input_ids=input_ids, attention_mask=attention_mask).logits
    finally:
        model.train(was_training)


def _batch_tokens(inputs: Mapping[str, Any]) -> int | None:
    """Trained tokens in the whole micro-batch (the metrics' ``tokens``), not only in the logged responses."""
    if isinstance(inputs.get("completion_mask"), Tensor):
        return int(inputs["completion_mask"].sum())
    if isinstance(inputs.get("labels"), Tensor):
        return int((inputs["labels"][:, 1:] != -100).sum())
    return None


def _batch(trainer: Any, model: Any, inputs: Mapping[str, Any], rows: int, temperature: float
           ) -> tuple[Tensor, Tensor, Tensor | None, Tensor, Tensor]:
    """(token_ids, mask, loss_mask, student_logits, teacher_logits) of the first ``rows`` responses, response-aligned."""
    student = trainer.accelerator.unwrap_model(model) if hasattr(trainer, "accelerator") else model
    teacher = trainer.teacher_model
    if "completion_ids" in inputs and "prompt_ids" in inputs:  # DistillationTrainer (and GRPO-style layouts)
        p_ids, c_ids = inputs["prompt_ids"][:rows], inputs["completion_ids"][:rows]
        c_mask = inputs["completion_mask"][:rows].bool()
        ids = torch.cat([p_ids, c_ids], 1)
        attn = torch.cat([inputs["prompt_mask"][:rows], inputs["completion_mask"][:rows]], 1)
        p, c = p_ids.shape[1], c_ids.shape[1]
        s_logits = _forward_logits(student, ids, attn)[:, p - 1 : p + c - 1]
        t_logits = _forward_logits(teacher, ids, attn)[:, p - 1 : p + c - 1]
        loss_mask = c_mask & inputs["tool_mask"][:rows].bool() if "tool_mask" in inputs else None
        return c_ids, c_mask, loss_mask, s_logits / temperature, t_logits / temperature
    if "input_ids" in inputs and "labels" in inputs:  # GKDTrainer (SFT-style layout, -100 = not trained)
        ids, attn, labels = inputs["input_ids"][:rows], inputs["attention_mask"][:rows], inputs["labels"][:rows]
        s_logits = _forward_logits(student, ids, attn)[:, :-1]
        t_logits = _forward_logits(teacher, ids, attn)[:, :-1]
        mask, (tok, s_logits, t_logits) = _left_align(labels[:, 1:] != -100, ids[:, 1:], s_logits, t_logits)
        return tok, mask, None, s_logits / temperature, t_logits / temperature
    raise TRLIntegrationError(
        f"OPD Lab's TRL bridge does not recognise the batch of {type(trainer).__name__} (keys {sorted(inputs)}) "
        f"under trl {_trl_version()}: it reads input_ids/labels (GKDTrainer) or prompt_ids/completion_ids/"
        "completion_mask (DistillationTrainer). Call opd_core.logging_sdk.OPDLogger.log_logits from your own "
        "compute_loss instead (docs/integrations.md)."
    )


class _Bridge:
    """The state shared by the wrapped methods of one trainer: the logger, the schedule, the prefix source."""

    def __init__(self, trainer: Any, logger: OPDLogger):
        self.trainer, self.logger = trainer, logger
        self.first_step: int | None = None
        self.generated_by: str | None = None
        self.sharded = bool(getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False))
        # GKD's loss ignores args.temperature (it scores at 1); DistillationTrainer divides by it.
        self.distillation_layout = not hasattr(trainer, "generate_on_policy_outputs")
        self.temperature = float(getattr(trainer.args, "temperature", 1.0)) if self.distillation_layout else 1.0
        cfg = logger.config if logger.enabled else {}
        self.objective, self.params = cfg.get("objective"), cfg.get("objective_params") or {}
        if self.objective in (None, "unknown"):
            self.objective, self.params = objective_of(float(getattr(trainer, "beta", 0.5)))
        self.logged_step: int | None = None

    def scheduled(self, step: int) -> bool:
        """The same answer on every rank (so sharded models can run the extra forward together)."""
        if self.first_step is None:
            self.first_step = step
        return step != self.logged_step and (step == self.first_step or step % self.logger.every == 0)

    def after_loss(self, model: Any, inputs: Mapping[str, Any]) -> None:
        trainer = self.trainer
        if not trainer.model.training:
            return
        step = int(trainer.state.global_step) + 1  # the number TRL's on_log will give this step
        if not self.scheduled(step) or not (self.logger.should_log(step) or self.sharded):
            return
        self.logged_step = step
        ids, mask, loss_mask, s_logits, t_logits = _batch(trainer, model, inputs, self.logger.max_samples,
                                                          self.temperature)
        if not self.logger.enabled:
            return
        prefix = "student" if self.distillation_layout else (self.generated_by or "teacher")
        tokens = _batch_tokens(inputs)
        if tokens is not None:
            self.logger.log_metrics(step, {"tokens": tokens})
        self.logger.log_logits(step, token_ids=ids, mask=mask, loss_mask=loss_mask, student_logits=s_logits,
                               teacher_logits=t_logits, objective=self.objective, objective_params=self.params,
                               prefix_source=prefix, prompts=self._prompts(inputs, ids.shape[0]))

    def _prompts(self, inputs: Mapping[str, Any], rows: int) -> list[str] | None:
        tok = self.logger.tokenizer
        ids = inputs.get("prompt_ids", inputs.get("prompts"))
        if tok is None or not isinstance(ids, Tensor):
            return None
        mask = inputs.get("prompt_mask", inputs.get("prompt_attention_mask"))
        rows_ids = [r[m.bool()].tolist() if isinstance(mask, Tensor) else r.tolist()
                    for r, m in zip(ids[:rows], mask[:rows] if isinstance(mask, Tensor) else ids[:rows])]
        return tok.batch_decode(rows_ids, skip_special_tokens=True)


def _callback_class() -> type:
    from transformers import TrainerCallback

    class OPDLabCallback(TrainerCallback):
        """Forwards TRL's logged metrics to the run's metrics.jsonl and closes the run when training ends."""

        def __init__(self, logger: OPDLogger):
            self.logger = logger

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback signature
            if self.logger.enabled and state.max_steps:
                runs.write_status(self.logger.run_dir, total_steps=int(state.max_steps))

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not logs or not self.logger.enabled:
                return
            renamed = {"learning_rate": "lr"}
            self.logger.log_metrics(int(state.global_step), {renamed.get(k, k): v for k, v in logs.items()})

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            self.logger.close("finished")

    return OPDLabCallback


def attach_opd_lab(
    trainer: Any,
    logger: OPDLogger | None = None,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    every: int = 10,
    max_samples: int = 8,
    top_k: int = 8,
    enabled: bool = True,
    config: Mapping[str, Any] | None = None,
) -> OPDLogger:
    """Hook a built TRL distillation trainer so its run is written as an OPD Lab run directory; returns the logger.

    Pass your own ``logger`` to choose every SDK option, or let this build one in ``runs_dir/name``
    with a config read from the trainer's arguments (``config`` entries override it). The trainer's
    loss, gradients and schedule are unchanged; ``trainer.train()`` closes the run (finished, failed
    with the error, or stopped on Ctrl-C).
    """
    missing = [a for a in ("compute_loss", "training_step", "train", "args", "state", "add_callback")
               if not hasattr(trainer, a)]
    if missing or getattr(trainer, "teacher_model", None) is None:
        raise TRLIntegrationError(
            f"{type(trainer).__name__} (trl {_trl_version()}) has no {missing or ['teacher_model']}: "
            "attach_opd_lab needs a transformers Trainer with a teacher_model (GKDTrainer, DistillationTrainer). "
            "For other trainers call OPDLogger from your loss (docs/integrations.md)."
        )
    if getattr(trainer, "_opd_lab_logger", None) is not None:
        raise TRLIntegrationError("this trainer already has an OPD Lab logger attached; attach once per trainer")
    if logger is None:
        cfg = {**trainer_config(trainer, every), **dict(config or {})}
        logger = OPDLogger(runs_dir=runs_dir, name=name, config=cfg, tokenizer=getattr(trainer, "processing_class", None),
                           every=every, max_samples=max_samples, top_k=top_k, enabled=enabled,
                           total_steps=cfg.get("steps"))
    bridge = _Bridge(trainer, logger)
    original_loss, original_step, original_train = trainer.compute_loss, trainer.training_step, trainer.train

    def compute_loss(model, inputs, *args, **kwargs):  # noqa: ANN001, ANN202 - Trainer.compute_loss signature
        result = original_loss(model, inputs, *args, **kwargs)
        bridge.after_loss(model, inputs)
        return result

    def training_step(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        bridge.generated_by = None
        return original_step(*args, **kwargs)

    def train(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        started = time.time()
        try:
            return original_train(*args, **kwargs)
        except KeyboardInterrupt:
            logger.close("stopped")
            raise
        except BaseException as exc:
            logger.close("failed", error=f"{type(exc).__name__}: {exc} (after {time.time() - started:.0f}s)")
            raise

    trainer.compute_loss, trainer.training_step, trainer.train = compute_loss, training_step, train
    if hasattr(trainer, "generate_on_policy_outputs"):  # GKD: remember who wrote this step's prefixes
        original_generate = trainer.generate_on_policy_outputs
        teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)

        def generate_on_policy_outputs(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            unwrapped = trainer.accelerator.unwrap_model(model)
            bridge.generated_by = "teacher" if unwrapped is teacher else "student"
            return original_generate(model, *args, **kwargs)

        trainer.generate_on_policy_outputs = generate_on_policy_outputs
    trainer.add_callback(_callback_class()(logger))
    trainer._opd_lab_logger = logger
    return logger
