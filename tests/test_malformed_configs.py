"""Validation before side effects: every malformed config is one line on stderr, exit 2 and no run dir.

The CLI runs in-process (`opd_core.cli.main`), with the trainer replaced by a stub: a config that
slipped through validation would create a run directory, and the test would say which one did.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from opd_core import cli, runs, train_entry
from opd_core.config import load_config
from opd_core.toy.presets import resolve_pair

STUDENT = str(resolve_pair("toy:matched")[0])
GARBAGE = bytes(range(256)) * 4


def _model_folder(tmp: Path, name: str, **files: bytes | str) -> str:
    folder = tmp / name
    folder.mkdir()
    for file, content in files.items():
        target = folder / file.replace("__", ".")
        target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(folder)


def _fixtures(tmp: Path) -> dict[str, str]:
    """Files and folders the cases point at, created once per test in ``tmp``."""
    tok = (Path(STUDENT) / "tokenizer.json").read_text()
    tok_cfg = (Path(STUDENT) / "tokenizer_config.json").read_text()
    good_cfg = (Path(STUDENT) / "config.json").read_text()
    small = json.loads(good_cfg)
    small["vocab_size"] = 10
    auto = json.loads(good_cfg)
    auto["auto_map"] = {"AutoModelForCausalLM": "modeling_x.X"}
    (tmp / "afile.txt").write_text("not a folder")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "garbage.jsonl").write_bytes(GARBAGE)
    (tmp / "noprompt.jsonl").write_text('{"question": "2+2"}\n')
    (tmp / "list.json").write_text("[1, 2, 3]")
    (tmp / "string.json").write_text('"steps"')
    (tmp / "garbage.toml").write_bytes(GARBAGE)
    (tmp / "bad.toml").write_text("steps = = 3\n")
    (tmp / "unknown.toml").write_text("stepz = 3\n")
    (tmp / "nan.toml").write_text("learning_rate = nan\n")
    (tmp / "inf.json").write_text('{"max_grad_norm": Infinity}')
    (tmp / "params_list.toml").write_text('objective = "topk_support"\nobjective_params = [1, 2]\n')
    (tmp / "folder.toml").mkdir()
    return {
        "FILE": str(tmp / "afile.txt"),
        "EMPTY_TASK": str(tmp / "empty.jsonl"),
        "GARBAGE_TASK": str(tmp / "garbage.jsonl"),
        "NOPROMPT_TASK": str(tmp / "noprompt.jsonl"),
        "NO_CONFIG": _model_folder(tmp, "no_config", **{"tokenizer__json": tok}),
        "GARBAGE_CONFIG": _model_folder(tmp, "garbage_config", **{"config__json": GARBAGE, "tokenizer__json": tok}),
        "LIST_CONFIG": _model_folder(tmp, "list_config", **{"config__json": "[1]", "tokenizer__json": tok}),
        "NO_TOKENIZER": _model_folder(tmp, "no_tokenizer", **{"config__json": good_cfg}),
        "BROKEN_TOKENIZER": _model_folder(tmp, "broken_tok", **{"config__json": good_cfg,
                                                                 "tokenizer__json": GARBAGE,
                                                                 "tokenizer_config__json": tok_cfg}),
        "SMALL_VOCAB": _model_folder(tmp, "small_vocab", **{"config__json": json.dumps(small), "tokenizer__json": tok,
                                                            "tokenizer_config__json": tok_cfg}),
        "AUTO_MAP": _model_folder(tmp, "auto_map", **{"config__json": json.dumps(auto), "tokenizer__json": tok,
                                                      "tokenizer_config__json": tok_cfg}),
        "LIST_JSON": str(tmp / "list.json"),
        "STRING_JSON": str(tmp / "string.json"),
        "GARBAGE_TOML": str(tmp / "garbage.toml"),
        "BAD_TOML": str(tmp / "bad.toml"),
        "UNKNOWN_TOML": str(tmp / "unknown.toml"),
        "NAN_TOML": str(tmp / "nan.toml"),
        "INF_JSON": str(tmp / "inf.json"),
        "PARAMS_LIST_TOML": str(tmp / "params_list.toml"),
        "FOLDER_TOML": str(tmp / "folder.toml"),
    }


# (case id, config file or None, --set overrides, extra CLI args, text the one line must contain)
CASES = [
    ("lr-nan", None, ["learning_rate=nan"], [], "'learning_rate': nan is not a finite number"),
    ("lr-inf", None, ["learning_rate=inf"], [], "'learning_rate'"),
    ("temperature-nan", None, ["temperature=nan"], [], "'temperature'"),
    ("nucleus-nan", None, ["nucleus_p=nan"], [], "'nucleus_p'"),
    ("top-p-nan", None, ["top_p=nan"], [], "'top_p'"),
    ("lmbda-nan", None, ["lmbda=nan"], [], "'lmbda'"),
    ("weight-decay-nan", None, ["weight_decay=nan"], [], "'weight_decay'"),
    ("grad-norm-inf", None, ["max_grad_norm=inf"], [], "'max_grad_norm'"),
    ("grad-norm-minus-inf", None, ["max_grad_norm=-inf"], [], "'max_grad_norm'"),
    ("seed-huge", None, ["seed=99999999999999999999999"], [], "'seed'"),
    ("seed-negative", None, ["seed=-1"], [], "'seed'"),
    ("eval-size-huge", None, ["eval_size=1e9"], [], "'eval_size'"),
    ("eval-size-zero", None, ["eval_size=0"], [], "'eval_size'"),
    ("cpu-threads-1024", None, ["cpu_threads=1024"], [], "'cpu_threads'"),
    ("cpu-threads-negative", None, ["cpu_threads=-1"], [], "'cpu_threads'"),
    ("k-beyond-vocab", None, ["objective=topk_support", "k=100000"], [], "k=100000 is more than the teacher's"),
    ("k-text", None, ["objective=topk_support", "k=abc"], [], "'objective_params'"),
    ("k-zero", None, ["objective=topk_support", "objective_params.k=0"], [], "'objective_params'"),
    ("support-unknown", None, ["objective=topk_support", "support=banana"], [], "'objective_params'"),
    ("params-json-list", None, ["objective_params=[1, 2]"], [], "'objective_params'"),
    ("params-json-broken", None, ["objective_params={bad json"], [], "'objective_params'"),
    ("params-wrong-objective", None, ['objective_params={"k": 4}'], [], "'objective_params'"),
    ("device-cuda7", None, ["device=cuda:7"], [], "'device'"),
    ("device-banana", None, ["device=banana"], [], "'device': 'banana'"),
    ("device-tpu", None, ["device=xla"], [], "'device'"),
    ("student-missing", None, ["student=/no/such/model"], [], "'student'"),
    ("student-file", None, ["student=FILE"], [], "'student'"),
    ("student-no-config", None, ["student=NO_CONFIG"], [], "'student'"),
    ("student-garbage-config", None, ["student=GARBAGE_CONFIG"], [], "config.json: not readable JSON"),
    ("student-list-config", None, ["student=LIST_CONFIG"], [], "config.json: holds a list"),
    ("student-no-tokenizer", None, ["student=NO_TOKENIZER"], [], "no tokenizer"),
    ("student-broken-tokenizer", None, ["student=BROKEN_TOKENIZER"], [], "'student'"),
    ("student-small-vocab", None, ["student=SMALL_VOCAB"], [], "vocab_size is 10"),
    ("student-auto-map", None, ["student=AUTO_MAP"], [], "trust_remote_code=true"),
    ("teacher-missing", None, ["teacher=/no/such/teacher"], [], "'teacher'"),
    ("teacher-no-tokenizer", None, ["teacher=NO_TOKENIZER"], [], "'teacher'"),
    ("teacher-preset-unknown", None, ["teacher=toy:nope"], [], "'teacher'"),
    ("task-missing", None, ["task=/no/such/task.jsonl"], [], "'task'"),
    ("task-empty", None, ["task=EMPTY_TASK"], [], "'task'"),
    ("task-garbage", None, ["task=GARBAGE_TASK"], [], "'task'"),
    ("task-no-prompt", None, ["task=NOPROMPT_TASK"], [], "'task'"),
    ("task-unknown-builtin", None, ["task=toy:banana"], [], "'task'"),
    ("objective-unknown", None, ["objective=banana"], [], "'objective'"),
    ("unknown-field", None, ["stepz=3"], [], "'stepz' is not a known field"),
    ("steps-zero", None, ["steps=0"], [], "'steps'"),
    ("steps-text", None, ["steps=abc"], [], "'steps'"),
    ("steps-fraction", None, ["steps=1.5"], [], "'steps'"),
    ("max-new-tokens-zero", None, ["max_new_tokens=0"], [], "'max_new_tokens'"),
    ("rollouts-zero", None, ["num_rollouts=0"], [], "'num_rollouts'"),
    ("prompts-huge", None, ["prompts_per_step=100000"], [], "'prompts_per_step'"),
    ("dtype-unknown", None, ["dtype=float8"], [], "'dtype'"),
    ("top-p-zero", None, ["top_p=0"], [], "'top_p'"),
    ("top-p-above-one", None, ["top_p=1.5"], [], "'top_p'"),
    ("temperature-negative", None, ["temperature=-1"], [], "'temperature'"),
    ("lmbda-two", None, ["lmbda=2"], [], "'lmbda'"),
    ("bool-maybe", None, ["mask_after_eos=maybe"], [], "'mask_after_eos'"),
    ("log-top-k-zero", None, ["log_top_k=0"], [], "'log_top_k'"),
    ("warmup-negative", None, ["warmup_steps=-1"], [], "'warmup_steps'"),
    ("checkpoint-every-negative", None, ["checkpoint_every=-1"], [], "'checkpoint_every'"),
    ("override-without-equals", None, ["steps"], [], "is not KEY=VALUE"),
    ("name-queue-lock", None, [], ["--name", ".queue.lock"], "may not start with '.'"),
    ("name-queue-json", None, [], ["--name", ".queue.json"], "may not start with '.'"),
    ("name-path", None, [], ["--name", "../escape"], "is not allowed"),
    ("config-json-list", "LIST_JSON", [], [], "holds a JSON list"),
    ("config-json-string", "STRING_JSON", [], [], "holds a JSON str"),
    ("config-toml-garbage", "GARBAGE_TOML", [], [], "garbage.toml"),
    ("config-toml-invalid", "BAD_TOML", [], [], "bad.toml' is not valid TOML"),
    ("config-toml-unknown-field", "UNKNOWN_TOML", [], [], "'stepz'"),
    ("config-toml-nan", "NAN_TOML", [], [], "'learning_rate'"),
    ("config-json-infinity", "INF_JSON", [], [], "'max_grad_norm'"),
    ("config-params-list", "PARAMS_LIST_TOML", [], [], "'objective_params'"),
    ("config-missing", "/no/such/config.toml", [], [], "does not exist"),
    ("config-folder", "FOLDER_TOML", [], [], "folder.toml"),
]


@pytest.fixture
def no_training(monkeypatch):
    """A config that passed validation must not train here: the stub marks the run failed at once."""
    def refuse(run_dir, **kw):  # noqa: ARG001
        return "failed"
    monkeypatch.setattr(train_entry, "run_in_dir", refuse)


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def _argv(command: list[str], case: tuple, fixtures: dict[str, str], runs_dir: Path) -> list[str]:
    _, config, sets, extra, _ = case
    argv = [*command]
    if config is not None:
        argv.append(fixtures.get(config, config))
    for item in sets:
        key, _, value = item.partition("=")
        argv += ["--set", f"{key}={fixtures.get(value, value)}" if _ else item]
    return [*argv, *extra, "--runs-dir", str(runs_dir)]


def _assert_refused(code: int, out: str, err: str, runs_dir: Path, needle: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("opd-lab: error: "), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in out + err
    made = [p for p in runs_dir.iterdir() if not p.name.startswith(".")] if runs_dir.is_dir() else []
    assert made == [], f"a run directory was created: {made}"


def test_there_are_at_least_60_malformed_configs():
    assert len(CASES) >= 60 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_opd_lab_train_refuses_a_malformed_config_in_one_line_without_a_run_dir(tmp_path, no_training, case):
    fixtures = _fixtures(tmp_path)
    runs_dir = tmp_path / "runs"
    code, out, err = _run(_argv(["train"], case, fixtures, runs_dir))
    _assert_refused(code, out, err, runs_dir, case[4])


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in {
    "lr-nan", "seed-huge", "device-banana", "student-no-tokenizer", "task-garbage", "k-beyond-vocab",
    "name-queue-lock", "config-json-list", "config-toml-garbage", "params-json-list"}], ids=lambda c: c[0])
def test_opd_lab_runs_launch_refuses_the_same_configs(tmp_path, case):
    fixtures = _fixtures(tmp_path)
    runs_dir = tmp_path / "runs"
    code, out, err = _run(_argv(["runs", "launch"], case, fixtures, runs_dir))
    _assert_refused(code, out, err, runs_dir, case[4])


@pytest.mark.parametrize("overrides", [
    ['objective_params={"k": 4}'],
    ["k=4"],
    ["objective_params.k=4"],
    ['objective_params={"k": 2}', "objective_params.k=4"],
])
def test_objective_params_are_accepted_in_every_documented_form(overrides):
    cfg = load_config(None, ["objective=topk_support", *overrides])
    assert cfg.objective_params["k"] == 4


def test_an_objective_params_table_in_toml_merges_with_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('objective = "topk_support"\n[objective_params]\nk = 4\nrenormalize = false\n')
    cfg = load_config(path, ['objective_params={"k": 6}'])
    assert cfg.objective_params["k"] == 6 and cfg.objective_params["renormalize"] is False


def test_a_dot_name_never_becomes_a_run_or_breaks_the_runs_folder(tmp_path):
    with pytest.raises(runs.RunDirError, match="may not start with"):
        runs.create_run_dir(tmp_path, ".queue.lock")
    assert runs.list_runs(tmp_path) == []
