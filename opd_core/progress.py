"""How the training loop reports itself: the phase timer ``timed`` and the progress line (tqdm on a
terminal, a plain line every 10% when writing to a log file)."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator


@contextlib.contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block as ``timings[name]`` (seconds): the one timer of the loop."""
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start


class ProgressBar:
    """Shows step, loss, grad norm and (when measured) eval accuracy: a tqdm bar when enabled on a terminal,
    else a plain line every 10% of the steps (what a log file wants)."""

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
