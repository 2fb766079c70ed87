"""Load the student and teacher: a local Hugging Face checkpoint folder, a GGUF file, or a built-in toy preset.

Every way a load can fail (missing path, not a checkpoint, custom code not allowed, no EOS, a tokenizer
larger than the embedding table) becomes a one-line `ModelLoadError` naming the path, the problem and the
fix. Embedding tables padded past the tokenizer (Qwen2.5: 151,936 or 152,064 rows for 151,665 tokens) are
fine (no warning: padding rows are normal): `LoadedModel.vocab_size` is the tokenizer's real size, the
part two models can be compared on. A ``.gguf`` file (or a folder holding one and no config.json) is
read through transformers' GGUF support, dequantised, with the tokenizer stored in the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from opd_core.tokenizer_files import TOKENIZER_FILES as _TOKENIZER_FILES
from opd_core.tokenizer_files import ModelLoadError, load_tokenizer, resolve_model_path
from opd_core.tokenizer_files import check_dir as _check_dir
from opd_core.tokenizer_files import check_remote_code as _check_remote_code
from opd_core.tokenizer_files import gguf_file as _gguf
from opd_core.tokenizer_files import one_line as _one_line
from opd_core.tokenizer_files import preset_path as _preset_path

__all__ = ["DTYPES", "LoadedModel", "ModelLoadError", "ModelSource", "load_model", "load_pair", "load_tokenizer",
           "preflight_model_source", "resolve_device", "resolve_dtype", "resolve_model_path", "vocab_fit_problem"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


@dataclass
class LoadedModel:
    """A ready-to-use model with its tokenizer; `vocab_size` is the tokenizer's (real) vocabulary size."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    path: Path
    name: str
    vocab_size: int

    @property
    def device(self) -> torch.device:
        """Where the model's weights live."""
        return next(self.model.parameters()).device


def resolve_device(device: str = "auto") -> torch.device:
    """Turn "auto" into CUDA when present (else CPU) and refuse a CUDA request on a machine without one."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use device='auto' or 'cpu'")
    return resolved


def resolve_dtype(dtype: str = "float32", device: torch.device | None = None) -> torch.dtype:
    """Turn a dtype name into a torch dtype; "auto" is bfloat16 on a GPU that supports it, else float32."""
    if dtype == "auto":
        device = device or resolve_device("auto")
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(path: str | Path, *, device: str = "auto", dtype: str = "float32",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local folder, on the chosen device and dtype, in eval mode.

    A preset name here means that preset's student; use `load_pair` or `resolve_model_path` for a teacher.
    """
    path = _preset_path(str(path), role="student")
    gguf_file = _gguf(path)
    if gguf_file is not None:
        return _load_gguf(path, gguf_file, device=device, dtype=dtype)
    _check_dir(path, "model checkpoint", ("config.json",))
    if not any((path / f).is_file() for f in _WEIGHT_FILES):
        raise ModelLoadError(f"{path}: config.json found but no weights ({', '.join(_WEIGHT_FILES[:3])}); "
                             "copy the full checkpoint folder")
    _check_remote_code(path, trust_remote_code)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{path}: config.json is not a loadable model config ({_one_line(exc)}); "
                             "expected a folder written by save_pretrained") from None
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a loadable causal-LM checkpoint ({_one_line(exc)}); "
                             "expected a folder written by save_pretrained for a *ForCausalLM model") from None
    return _ready(model, tokenizer, path, path.name, torch_device)


def _load_gguf(path: Path, gguf_file: Path, *, device: str, dtype: str) -> LoadedModel:
    """A GGUF checkpoint, dequantised (see `opd_core.model_tools`; once, see `opd_core.gguf_cache`), with the
    tokenizer stored in the file."""
    from opd_core.gguf_cache import load_cached

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    tokenizer = load_tokenizer(gguf_file)
    try:
        model = load_cached(gguf_file, torch_dtype)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    except Exception as exc:
        raise ModelLoadError(f"{gguf_file}: not a loadable GGUF causal LM ({_one_line(exc)}); transformers reads "
                             "GGUF files of the architectures it knows (Llama, Gemma 3, Qwen, ...)") from None
    return _ready(model, tokenizer, gguf_file, gguf_file.stem, torch_device)


def _ready(model, tokenizer, source: Path, name: str, torch_device) -> LoadedModel:
    """The same last steps for every format: on its device in eval mode, vocabulary checked, EOS/pad set."""
    model.to(torch_device).eval()
    vocab_size = _real_vocab_size(source, tokenizer, model)
    _fill_generation_config(model, tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, path=source, name=name, vocab_size=vocab_size)


def vocab_fit_problem(path: Path, n_tokens: int, rows: int) -> str | None:
    """One line saying why a tokenizer of ``n_tokens`` cannot drive an embedding table of ``rows``; None if fine.

    More tokens than rows means some ids have no embedding (a tokenizer with an extra added token saved
    next to the checkpoint). Fewer is padding, which is normal (rows a tokenizer never emits).
    """
    if n_tokens > rows:
        return (f"{path}: tokenizer has {n_tokens} tokens but the model embeds only {rows}; use the tokenizer "
                f"saved with this checkpoint (or remove the {n_tokens - rows} added token(s) it does not embed)")
    return None


def _real_vocab_size(path: Path, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    rows = model.get_input_embeddings().weight.shape[0]
    problem = vocab_fit_problem(path, len(tokenizer), rows)
    if problem:
        raise ModelLoadError(problem)
    return len(tokenizer)


def _fill_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make generate() and manual loops agree on the specials, even for checkpoints that omit them."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # common for base models; padding is masked anyway
    gen = model.generation_config
    if gen.eos_token_id is None:
        gen.eos_token_id = tokenizer.eos_token_id
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    if gen.bos_token_id is None and tokenizer.bos_token_id is not None:
        gen.bos_token_id = tokenizer.bos_token_id


def load_pair(student: str, teacher: str, **kw) -> tuple[LoadedModel, LoadedModel]:
    """Load (student, teacher); each may be a folder or a preset name (its student / teacher side)."""
    return (load_model(resolve_model_path(student, "student"), **kw),
            load_model(resolve_model_path(teacher, "teacher"), **kw))


# ----------------------------------------------------------------------------- pre-flight (before a run dir exists)


@dataclass(frozen=True)
class ModelSource:
    """What the pre-flight check learnt about a model argument without loading its weights."""

    path: Path
    vocab_size: int | None  # the tokenizer's vocabulary (a GGUF file: its token list; None where unknown)
    embedding_rows: int | None  # config.json's vocab_size (a GGUF file: its token_embd rows)
    gguf: bool = False


def preflight_model_source(spec: str, role: str = "student", *, trust_remote_code: bool = False) -> ModelSource:
    """Check a student/teacher argument the way loading it would, without the weights: ModelLoadError if bad.

    The folder exists; config.json is a readable JSON object; its own code is refused unless trusted;
    a tokenizer is there and loads; it fits the embedding table. A ``.gguf`` file (or a folder holding
    one) is read from its header: the reader is installed, it is GGUF, its token list fits its
    ``token_embd`` table.
    """
    path = resolve_model_path(spec, role).expanduser()
    if path.suffix == ".gguf" and not path.exists():
        raise ModelLoadError(f"{path}: no such file; give a .gguf file, a checkpoint folder or a toy preset")
    gguf_file = _gguf(path)  # a .gguf file, or a folder holding exactly one (and no config.json)
    if gguf_file is not None:
        n_tokens, rows = _preflight_gguf(gguf_file)
        return ModelSource(gguf_file, n_tokens, rows, gguf=True)
    _check_dir(path, "checkpoint", ("config.json",))
    try:
        config = json.loads((path / "config.json").read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}/config.json: not readable JSON ({_one_line(exc)}); re-save the "
                             "checkpoint with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}/config.json: holds a {type(config).__name__}, not a JSON object; re-save "
                             "the checkpoint with save_pretrained")
    _check_remote_code(path, trust_remote_code)
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        raise ModelLoadError(f"{path}: no tokenizer (none of {', '.join(_TOKENIZER_FILES)}); save the tokenizer "
                             "into the checkpoint folder (tokenizer.save_pretrained)")
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    rows = config.get("vocab_size")
    rows = rows if isinstance(rows, int) and not isinstance(rows, bool) and rows > 0 else None
    n = len(tokenizer)
    if rows is not None and n > rows:
        raise ModelLoadError(f"{path}: tokenizer has {n} tokens but config.json's vocab_size is {rows}; "
                             "use the tokenizer saved with this checkpoint")
    return ModelSource(path, n, rows)


def _preflight_gguf(file: Path) -> tuple[int | None, int | None]:
    """Check a GGUF file in a moment: the reader is installed, the file is GGUF, and its token list fits
    its embedding table (read from the header, see ``model_tools.gguf_vocab_and_rows``). Returns
    (tokens, embedding rows), None where the header does not say."""
    from opd_core.model_tools import gguf_available, gguf_vocab_and_rows

    if not gguf_available():
        raise ModelLoadError(f"{file}: reading a GGUF file needs the 'gguf' package; install it with "
                             "`pip install gguf` (or pip install -e '.[real]')")
    try:
        with open(file, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(f"{file}: cannot be read ({_one_line(exc)})") from None
    if magic != b"GGUF":
        raise ModelLoadError(f"{file}: not a GGUF file (it does not start with 'GGUF'); give a .gguf checkpoint "
                             "or the folder save_pretrained wrote")
    n_tokens, rows = gguf_vocab_and_rows(file)
    if n_tokens is not None and rows is not None and n_tokens > rows:
        raise ModelLoadError(f"{file}: its token list has {n_tokens} tokens but its token_embd table has only "
                             f"{rows} rows, so {n_tokens - rows} token id(s) have no embedding; re-export the GGUF "
                             "from a checkpoint whose tokenizer fits its embeddings, or use a Hugging Face folder")
    return n_tokens, rows
