"""Find and load a model argument's tokenizer without torch: folders, GGUF files (converted once), presets.

Why a module of its own: `opd-lab tokenizers compare` needs tokenizers only, yet ``AutoTokenizer``
imports torch (through transformers' config classes, ~1.5 s of CPU), some tokenizer classes rebuild
their whole BPE in Python from tokenizer.json (``GemmaTokenizer``: 2.2 s for Gemma-3's 262K tokens),
and transformers rebuilds a GGUF file's tokenizer from the file's metadata on every load (4 s for
SmolLM2, 17 s for Gemma-3). Here:

- :func:`gguf_tokenizer_dir` converts a GGUF file's tokenizer once into a folder in the user cache
  (``$OPD_LAB_CACHE`` or ``~/.cache/opd-lab``), keyed by the file's path, size and modification time and
  by the transformers version; every later load reads that folder.
- :func:`load_tokenizer` with ``fast=True`` reads a folder's tokenizer.json with the Rust library, the
  way transformers reads it for classes that keep tokenizer.json as it is. A class that rebuilds its
  pipeline is read this way only when it is in :data:`REBUILT_AS_FILE` (the tests compare both readings
  on the real files of those classes), and only when the added-token table agrees; anything else is
  loaded by ``AutoTokenizer``. Training loads with ``fast=False`` (the tokenizer's own class).

Every failure is a one-line :class:`ModelLoadError` naming the path, the problem and the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# Classes whose __init__ rebuilds the tokenizer from tokenizer.json's vocabulary and merges with the same
# normalizer, pre-tokenizer and decoder the file holds (the tests compare both readings on the real Gemma-3
# and Qwen-3 files), with the role tokens each sets when the config does not (its __init__ defaults; a test
# checks them against transformers). Importing the class to read them would cost a scan of transformers.
REBUILT_AS_FILE: dict[str, dict[str, str | None]] = {
    "GemmaTokenizer": {"unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
                       "mask_token": "<mask>"},
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": None, "eos_token": "<|endoftext|>",
                       "pad_token": "<|endoftext|>"},
}
_AS_FILE = ("TokenizersBackend", "PreTrainedTokenizerFast")  # transformers reads tokenizer.json as it is
_PASSED_CONFIG = ("chat_template", "model_max_length", "padding_side", "clean_up_tokenization_spaces",
                  "split_special_tokens", "additional_special_tokens", "extra_special_tokens",
                  "model_specific_special_tokens", "spaces_between_special_tokens")


class ModelLoadError(ValueError):
    """A model or tokenizer could not be loaded; the message names the path, the problem and the fix."""


def cache_root() -> Path:
    """The user cache folder of OPD Lab (``$OPD_LAB_CACHE``, else ``$XDG_CACHE_HOME/opd-lab`` or ~/.cache/opd-lab)."""
    if os.environ.get("OPD_LAB_CACHE"):
        return Path(os.environ["OPD_LAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "opd-lab"


def one_line(exc: Exception) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- model arguments


def preset_path(spec: str, role: str) -> Path:
    """Map "toy:matched"/"toy:mismatched" to the preset's student or teacher folder; other specs unchanged."""
    if not spec.startswith("toy:"):
        return Path(spec)
    from opd_core.toy.presets import PRESETS, resolve_pair

    pair = resolve_pair(spec)
    if pair is None:
        raise ModelLoadError(f"{spec}: unknown toy preset; use one of {', '.join(PRESETS)}")
    path = pair[0] if role == "student" else pair[1]
    if not path.is_dir():
        raise ModelLoadError(f"{path}: toy assets missing for {spec}; run `opd-lab toy build`")
    return path


def resolve_model_path(spec: str, role: str = "student") -> Path:
    """Return the folder a model argument names: a local path, or a preset's student/teacher folder."""
    if role not in ("student", "teacher"):
        raise ValueError(f"role must be 'student' or 'teacher', got {role!r}")
    return preset_path(spec, role)


def check_dir(path: Path, what: str, needed: tuple[str, ...]) -> None:
    """ModelLoadError unless ``path`` is a folder holding one of ``needed``."""
    if not path.exists():
        raise ModelLoadError(f"{path}: no such folder; expected a local {what} directory, a .gguf file or a toy "
                             "preset (toy:matched, toy:mismatched)")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: is a file; expected a {what} directory (the folder save_pretrained wrote) "
                             "or a .gguf file")
    if not any((path / f).is_file() for f in needed):
        raise ModelLoadError(f"{path}: not a {what} directory (none of {', '.join(needed)} found); "
                             "point to the folder save_pretrained wrote")


def wants_remote_code(path: Path) -> bool:
    """Whether a checkpoint folder asks for its own Python code (``auto_map`` in its configs)."""
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file():
            try:
                if "auto_map" in json.loads(file.read_text(encoding="utf-8")):
                    return True
            except (OSError, json.JSONDecodeError):
                continue
    return False


def check_remote_code(path: Path, trust_remote_code: bool) -> None:
    """ModelLoadError when the folder needs its own code and the user has not said it may run."""
    if wants_remote_code(path) and not trust_remote_code:
        raise ModelLoadError(f"{path}: this checkpoint needs its own Python code (auto_map in its config); "
                             "set the config field trust_remote_code=true only if you trust its source")


def gguf_file(path: Path) -> Path | None:
    """The GGUF file a model argument names (see ``model_tools.find_gguf``), as a ModelLoadError if ambiguous."""
    from opd_core.model_tools import find_gguf

    try:
        return find_gguf(path)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


# ----------------------------------------------------------------------------- GGUF tokenizers, converted once


def converted_copy_dir(kind: str, file: Path) -> Path:
    """Where the converted copy of a GGUF file lives in the user cache (``kind``: ``gguf-tokenizers``,
    ``gguf-models``). The key is the file's resolved path, size and modification time plus the transformers
    version (the conversion is transformers' own): a replaced or rewritten file is converted again."""
    import transformers

    file = Path(file)
    st = file.stat()
    ident = f"{file.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{transformers.__version__}"
    return cache_root() / kind / f"{file.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}"


def publish_folder(folder: Path, write) -> None:
    """Put a folder into the cache whole: ``write(staging)`` fills a folder beside it, renamed into place (a
    reader sees no folder or a whole one). OSError when it cannot be written, unless another process put the
    same folder there first."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(staging)
        staging.rename(folder)
    except OSError:
        if not folder.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def gguf_tokenizer_dir(file: Path) -> Path:
    """A folder holding the GGUF file's tokenizer (save_pretrained), converted on first use and cached
    (:func:`converted_copy_dir`)."""
    folder = converted_copy_dir("gguf-tokenizers", file)
    if not (folder / "tokenizer_config.json").is_file():
        publish_folder(folder, _read_gguf_tokenizer(Path(file)).save_pretrained)
    return folder


def _read_gguf_tokenizer(file: Path):
    """transformers' reading of the tokenizer stored in a GGUF file (slow: rebuilt from its metadata)."""
    from transformers import AutoTokenizer

    from opd_core.model_tools import require_gguf

    require_gguf(file)
    return AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)


def load_gguf_tokenizer(file: Path, *, fast: bool = False):
    """The tokenizer stored inside a GGUF file, read from its converted copy in the cache when possible."""
    try:
        folder = gguf_tokenizer_dir(file)
    except OSError:  # no writable cache: read the file itself every time
        tokenizer = _read_gguf_tokenizer(file)
    else:
        tokenizer = (fast and read_tokenizer_json(folder)) or _auto_tokenizer(folder, False)
    tokenizer.name_or_path = str(file)  # warnings and reports name the file the user gave, not the cache
    return tokenizer


# ----------------------------------------------------------------------------- folders


def _auto_tokenizer(path: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)


def _content(value):
    return value.get("content") if isinstance(value, dict) else value


def read_tokenizer_json(folder: Path):
    """The folder's tokenizer read from tokenizer.json without torch, or None where only AutoTokenizer can.

    ``TokenizersBackend`` and ``PreTrainedTokenizerFast``, which keep tokenizer.json as it is, are loaded by
    their own ``from_pretrained``: the object ``AutoTokenizer`` builds. A class in :data:`REBUILT_AS_FILE`
    becomes a ``TokenizersBackend`` over the same file, with the class's default role tokens
    (``GemmaTokenizer``'s ``<mask>``) under the config's; it is returned only when its special tokens are
    the ones the config's added-token table flags. Any other class: None.
    """
    config_file, json_file = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (config_file.is_file() and json_file.is_file()):
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or "auto_map" in config:
        return None
    import transformers

    name = str(config.get("tokenizer_class") or "")  # none: AutoTokenizer picks it from config.json's model type
    if name in _AS_FILE:
        return getattr(transformers, name).from_pretrained(folder)
    defaults = REBUILT_AS_FILE.get(name.removesuffix("Fast"))
    if defaults is None or any((folder / f).is_file() for f in ("special_tokens_map.json", "chat_template.json")):
        return None  # files only transformers' own loading merges in
    kwargs = {**defaults, **{k: _content(v) for k, v in config.items() if k.endswith("_token") or k in _PASSED_CONFIG}}
    template = folder / "chat_template.jinja"
    if "chat_template" not in kwargs and template.is_file():
        kwargs["chat_template"] = template.read_text(encoding="utf-8")
    tok = transformers.TokenizersBackend(tokenizer_file=str(json_file), name_or_path=str(folder), **kwargs)
    flagged = {int(i) for i, t in (config.get("added_tokens_decoder") or {}).items()
               if isinstance(t, dict) and t.get("special")}
    if flagged and flagged != {i for i, t in tok.added_tokens_decoder.items() if t.special}:
        return None
    return tok


def require_eos(path: Path, tokenizer):
    """The tokenizer itself, or ModelLoadError when it has no EOS token (a reply could never end)."""
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"{path}: tokenizer has no EOS token; set \"eos_token\" in its "
                             "tokenizer_config.json so responses can end")
    return tokenizer


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, fast: bool = False):
    """Load a tokenizer folder or GGUF file (or a preset's student tokenizer); it must define an EOS token.

    ``fast=True`` reads tokenizer.json without torch where that gives the same tokenizer (see
    :func:`read_tokenizer_json`); the comparison tools use it, training does not.
    """
    path = preset_path(str(path), role="student")
    found = gguf_file(path)
    if found is not None:
        try:
            tokenizer = load_gguf_tokenizer(found, fast=fast)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from None
        except Exception as exc:
            raise ModelLoadError(f"{found}: the tokenizer inside this GGUF file could not be read "
                                 f"({one_line(exc)}); convert it with `opd-lab models convert`") from None
        return require_eos(path, tokenizer)
    check_dir(path, "tokenizer", TOKENIZER_FILES)
    check_remote_code(path, trust_remote_code)
    try:
        tokenizer = (fast and not trust_remote_code and read_tokenizer_json(path)) or _auto_tokenizer(
            path, trust_remote_code)
    except Exception as exc:  # transformers raises many types for a broken folder; report one line
        raise ModelLoadError(f"{path}: tokenizer files could not be loaded ({one_line(exc)}); "
                             "re-save it with save_pretrained") from None
    return require_eos(path, tokenizer)
