"""Health on a cross-tokenizer run: alignment coverage, the pair's warnings, fixes that are not already on."""

from __future__ import annotations

import pandas as pd

from opd_core.diagnostics.health import Finding, check_tokenizer_pair, without_current_settings
from opd_core.diagnostics.mismatch import alignment_problems


def test_low_alignment_coverage_is_a_finding_and_high_coverage_is_not():
    low = pd.DataFrame({"step": [1, 2], "align_one_to_one_share": [0.5, 0.5], "align_multi_token_share": [0.2, 0.2],
                        "align_unaligned_share": [0.3, 0.3]})
    found = check_tokenizer_pair(low, None)
    assert len(found) == 1 and found[0].severity == "warning" and "30%" in found[0].title
    assert found[0].evidence["align_unaligned_share"] == 0.3
    high = low.assign(align_unaligned_share=[0.01, 0.02])
    assert check_tokenizer_pair(high, None) == []


def test_a_missing_chat_template_warning_reaches_the_report():
    warning = "teacher (gemma) has no chat template: prompts are the raw text after its BOS"
    found = check_tokenizer_pair(pd.DataFrame({"step": [1]}), {"warnings": [warning]})
    assert [f.title for f in found] == [warning] and found[0].severity == "info"


def test_a_fix_never_suggests_the_setting_the_run_already_has():
    f = Finding("imbalance", "warning", "t", {}, "objective=topk_support (objective_params.k=32): dense", "imbalance")
    assert "objective=topk_support" not in without_current_settings(f, {"objective": "topk_support"}).fix
    assert without_current_settings(f, {"objective": "sampled_token"}).fix == f.fix
    g = Finding("collapse", "warning", "t", {}, "objective=topk_support with objective_params.renormalize=true; "
                "or a lower learning_rate", "collapse")
    assert without_current_settings(g, {"objective": {"name": "topk_support"}}).fix == "a lower learning_rate"


def test_differing_id_count_comes_from_the_report_count_not_the_truncated_list():
    report = {"eos_a": "<|im_end|>", "eos_b": "<eos>", "differing_ids": [{"id": i} for i in range(50)],
              "n_differing_ids": 49_150}
    assert alignment_problems(report)["n_differing_ids"] == 49_150
    assert alignment_problems({"differing_ids": [{"id": 1}, {"id": 2}]})["n_differing_ids"] == 2  # older reports
