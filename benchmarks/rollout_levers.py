"""Rollout levers of issue #21 measured against the loop's own ``generate`` call, same model and prompts.

Why: on the toy pair the rollout is the largest share of a step. This times, for the student of a pair,
one step's rollouts (``--prompts`` prompts x ``--rollouts`` rollouts, ``--new`` new tokens, sampling at
temperature 1, one thread, best of ``--rounds``):

* ``dynamic``: what the loop does (``rollout.sample_responses``: HF ``generate``, dynamic KV cache);
* ``static``: the same with ``cache_implementation="static"``;
* ``static+compile``: static cache and the forward through ``torch.compile`` (the first call, which
  compiles, is reported apart and not counted);
* ``prefill share``: the prompts' forward alone, an upper bound on what reusing one prompt's KV cache
  across its rollouts could save (all but 1/rollouts of it).

    python benchmarks/rollout_levers.py                  # toy:matched student
    python benchmarks/rollout_levers.py --vocab 32768    # the realistic-vocab student
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _student(vocab: int):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if vocab:
        from benchmarks.realistic_vocab import build_pair

        path = build_pair(vocab).student
    else:
        from opd_core.toy.presets import resolve_pair

        path = resolve_pair("toy:matched")[0]
    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def measure(vocab: int, prompts: int, rollouts: int, new: int, rounds: int, compile_: bool) -> dict[str, float]:
    import torch
    from transformers import GenerationConfig

    from opd_core.rollout import left_pad
    from opd_core.toy.task import AdditionTask

    torch.set_num_threads(1)
    model, tok = _student(vocab)
    model.eval()
    texts = [ex.prompt for ex in AdditionTask().examples("train", prompts, 0)]
    ids = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    ids = [list(i["input_ids"]) if isinstance(i, dict) or hasattr(i, "keys") else list(i) for i in ids]
    batch = [p for p in ids for _ in range(rollouts)]
    input_ids, mask = left_pad(batch, tok.pad_token_id, torch.device("cpu"))

    def gen(**extra):
        cfg = GenerationConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=None, max_new_tokens=new,
                               min_new_tokens=new, pad_token_id=tok.pad_token_id, **extra)
        with torch.no_grad():
            model.generate(input_ids=input_ids, attention_mask=mask, generation_config=cfg)

    def prefill():
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=mask, use_cache=True, logits_to_keep=1)

    cases = {"dynamic": lambda: gen(), "static": lambda: gen(cache_implementation="static"), "prefill": prefill}
    out: dict[str, float] = {}
    if compile_:
        compiled = torch.compile(model.forward, dynamic=False)
        plain = model.forward

        def static_compiled():
            model.forward = compiled
            try:
                gen(cache_implementation="static")
            finally:
                model.forward = plain

        t0 = time.perf_counter()
        try:
            static_compiled()
            cases["static+compile"] = static_compiled
        except Exception as exc:  # noqa: BLE001  (a CPU without a working compiler: reported, not fatal)
            out["static+compile error"] = str(exc)[:200]
        out["compile (first call) s"] = time.perf_counter() - t0
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # one warm-up each
        fn()
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    out.update({f"{k} ms": 1e3 * min(v) for k, v in times.items()})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--new", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    res = measure(args.vocab, args.prompts, args.rollouts, args.new, args.rounds, not args.no_compile)
    base = res["dynamic ms"]
    for name, value in res.items():
        if name.endswith(" ms"):
            print(f"{name[:-3]}: {value:.0f} ms ({value / base:.2f}x of dynamic)")
        else:
            print(f"{name}: {value}")


if __name__ == "__main__":
    main()
