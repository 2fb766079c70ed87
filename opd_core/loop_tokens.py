"""The loop's per-token logging: a logged step's rows become token tables, written off the training thread.

A module of its own because it is the one part of a step that only *reports*: it needs the tokenizer
pair (to show each token as text, its spans and the teacher's pieces) and the run directory, never the
models or the optimizer. Tables are built by :func:`opd_core.run_writer.token_table` and written by
:func:`opd_core.runs.write_token_records` on one background thread, so a slow disk never stalls a
step; :meth:`TokenLog.flush` waits for them (before a checkpoint, and when the run ends), so a kill
loses at most the steps after the last checkpoint, never a half-written file.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch

from opd_core import runs, stats
from opd_core.loop_records import Reference, Scored, StepResult
from opd_core.pairing import TokenizerPair
from opd_core.run_writer import SampleInfo, TokenRows, token_table


class TokenLog:
    """Builds a logged step's token tables and writes them in the background, in step order."""

    def __init__(self, run_dir: Path, pair: TokenizerPair):
        self.run_dir = Path(run_dir)
        self.pair = pair
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="opd-token-writer")
        self._pending: list[Future] = []

    def sample_infos(self, sc: Scored, grades: list, texts: list[str], rows: list[int]) -> list[SampleInfo]:
        """Per logged response: its prompt, text, grade, token spans and the teacher's own pieces."""
        infos = []
        for i in rows:
            full_text, spans = self.pair.response_spans(sc.responses[i])
            g = grades[i]
            infos.append(SampleInfo(sc.prompts[i], texts[i], g.correct, g.format_ok, g.first_error_char, spans,
                                    [full_text[a:b] for a, b in spans], sc.views[i].teacher_strings,
                                    teacher_pieces=sc.views[i].teacher_pieces or None,
                                    token_raw=[self.pair.student_raw[t] or "" for t in sc.responses[i]]))
        return infos

    def token_rows(self, sc: Scored, rows: list[int], source: str, *, reference: bool, offset: int,
                   infos: list[SampleInfo]) -> TokenRows:
        """The facts of the logged rows a token table repeats (masks by reason, who wrote them, texts)."""
        idx = torch.tensor(rows, dtype=torch.long, device=sc.mask.device)

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, idx)

        return TokenRows(token_ids=pick(sc.batch.response_ids), real=pick(sc.batch.response_mask),
                         special=pick(sc.special), eos=pick(sc.eos),
                         masks={k: pick(v) for k, v in sc.masks.items()}, prefix_source=source,
                         reference_only=reference, sample_offset=offset, sample_ids=rows, samples=infos,
                         id_to_string=self.pair.student_strings, topk_strings=True,
                         teacher_id_to_string=None if self.pair.shared else self.pair.teacher_strings)

    def queue(self, result: StepResult, record: stats.TokenStats, rows: list[int], grades: list,
              texts: list[str], reference: Reference | None) -> None:
        """Queue this step's token tables (and the reference rollouts') for the background writer."""
        import pyarrow as pa

        sc = result.scored
        infos = self.sample_infos(sc, grades, texts, rows)
        tables = [token_table(result.step, record, self.token_rows(sc, rows, result.rollout.source,
                                                                   reference=False, offset=0, infos=infos))]
        if reference is not None:
            ref = reference.scored
            ref_rows = list(range(len(ref.prompts)))
            ref_infos = self.sample_infos(ref, reference.grades, reference.texts, ref_rows)
            tables.append(token_table(result.step, reference.record,
                                      self.token_rows(ref, ref_rows, "teacher", reference=True,
                                                      offset=len(sc.prompts), infos=ref_infos)))
        table = pa.concat_tables(tables, promote_options="default")
        self._pending.append(self._writer.submit(runs.write_token_records, self.run_dir, result.step, table))

    def flush(self) -> None:
        """Wait until every queued table is on disk (re-raising a write error here, on the loop's thread)."""
        for f in self._pending:
            f.result()
        self._pending.clear()
