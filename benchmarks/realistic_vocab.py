"""A student/teacher pair with the toy architecture but a realistic vocabulary, built once into a cache dir.

Why: at the toy vocabulary (87) a training step is almost all ``generate`` and model forwards that every
tool shares, so it cannot show what a chunked loss saves; real pairs have 32K-152K tokens. This builds
the toy sizes (Llama-style, teacher 2 layers hidden 96, student 2 layers hidden 64) with a vocabulary of
``vocab`` tokens and random, seeded weights, plus a byte-free BPE tokenizer of exactly that many tokens
(the toy's specials, alphabet and chat template, then synthetic merges of existing tokens), and a JSONL
file of the toy addition prompts. Nothing is written into the repository.

    python benchmarks/realistic_vocab.py --vocab 32768     # prints the three paths
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))



def default_cache() -> Path:
    """``$OPD_LAB_BENCH_CACHE`` (read at call time, so a parent's ``--cache-dir`` reaches its workers)."""
    return Path(os.environ.get("OPD_LAB_BENCH_CACHE", Path.home() / ".cache" / "opd-lab-bench"))

BUILD_VERSION = 2  # bump when what build_pair writes changes, so cached pairs are rebuilt
PROMPTS = 512


@dataclass(frozen=True)
class VocabPair:
    """Where a built pair lives: the two checkpoint directories and the prompt file for the engine."""

    student: Path
    teacher: Path
    task: Path
    vocab: int


def synthetic_tokenizer(vocab: int, seed: int = 0):
    """A fast BPE tokenizer of exactly ``vocab`` tokens with the toy student's specials and chat template."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    from opd_core.toy.tokenizers import ALPHABET, STUDENT_SPECIALS, STUDENT_TEMPLATE

    specials = [STUDENT_SPECIALS[k] for k in ("pad", "bos", "eos", "unk", "user", "assistant")]
    tokens = specials + list(ALPHABET)
    if vocab < len(tokens) + 1:
        raise ValueError(f"vocab={vocab} is too small; the specials and alphabet alone take {len(tokens)} tokens")
    rng = random.Random(seed)
    seen = set(tokens)
    ordinary = list(ALPHABET)
    merges: list[tuple[str, str]] = []
    while len(tokens) < vocab:  # each merge joins two existing ordinary tokens, so every token is reachable
        a, b = rng.choice(ordinary), rng.choice(ordinary)
        if len(a) + len(b) > 8 or a + b in seen:
            continue
        merges.append((a, b))
        seen.add(a + b)
        tokens.append(a + b)
        ordinary.append(a + b)
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                                   unk_token=STUDENT_SPECIALS["unk"], fuse_unk=True))
    backend.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=STUDENT_SPECIALS["bos"], eos_token=STUDENT_SPECIALS["eos"],
        pad_token=STUDENT_SPECIALS["pad"], unk_token=STUDENT_SPECIALS["unk"],
        additional_special_tokens=[STUDENT_SPECIALS["user"], STUDENT_SPECIALS["assistant"]],
        padding_side="left", clean_up_tokenization_spaces=False, model_max_length=512,
    )
    tok.chat_template = STUDENT_TEMPLATE
    return tok


def _write_pair(vocab: int, out: Path) -> None:
    from opd_core.toy.recipes import STUDENT_SIZE, TEACHER_SIZE, new_model
    from opd_core.toy.task import AdditionTask

    tok = synthetic_tokenizer(vocab)
    if len(tok) != vocab:
        raise RuntimeError(f"built a tokenizer of {len(tok)} tokens, wanted {vocab}")
    for role, size, seed in (("student", STUDENT_SIZE, 1), ("teacher", TEACHER_SIZE, 2)):
        model = new_model(tok, size, seed=seed)
        model.save_pretrained(out / role)
        tok.save_pretrained(out / role)
    with (out / "prompts.jsonl").open("w", encoding="utf-8") as fh:
        for split, n in (("train", PROMPTS), ("eval", 16)):  # explicit splits: the engine's end-of-run eval
            for ex in AdditionTask().examples(split, n, 0):
                fh.write(json.dumps({"prompt": ex.prompt, "answer": ex.answer, "split": split}) + "\n")


def build_pair(vocab: int, cache_dir: Path | None = None) -> VocabPair:
    """Return the pair for ``vocab``, building it first if the cache does not hold a complete one."""
    if vocab < 100:
        raise ValueError(f"vocab={vocab}: use the toy preset for small vocabularies; pass 100 or more")
    out = Path(cache_dir or default_cache()) / f"vocab-{vocab}-v{BUILD_VERSION}"
    pair = VocabPair(out / "student", out / "teacher", out / "prompts.jsonl", vocab)
    done = out / "COMPLETE"
    if not done.exists():
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        _write_pair(vocab, tmp)
        (tmp / "COMPLETE").write_text("ok\n")
        if out.exists():  # a partial build from an interrupted run
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
    return pair


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32_768)
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: $OPD_LAB_BENCH_CACHE or "
                        "~/.cache/opd-lab-bench")
    args = parser.parse_args(argv)
    pair = build_pair(args.vocab, args.cache_dir)
    print(f"student={pair.student}\nteacher={pair.teacher}\ntask={pair.task}")


if __name__ == "__main__":
    main()
