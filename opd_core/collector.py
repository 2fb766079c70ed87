"""Keep Python's cyclic garbage collector off the objects a process holds for its whole life.

Why: torch, transformers, pandas, plotly and Streamlit leave hundreds of thousands of long-lived objects
(modules, classes, functions, registries; ~400,000 tracked ones after importing the trainer) behind their
imports, and every full (generation-2) collection walks all of them. In the dashboard's server that was 41% of
its CPU while a user moved through 18 pages (24 full collections, ~120 ms each), and each trainer, scorer or
rank process spent ~0.7 s at exit on the interpreter's final collections after its work was done.
``gc.freeze`` moves what exists into a permanent generation that collections skip: reference counting still
frees those objects, only cycles among them are never collected.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Whether this process froze, kept here: ``gc.get_freeze_count()`` walks the whole permanent generation (33 ms
# with transformers imported), and the dashboard asks on every page run.
_state = {"frozen": False, "at_exit": False}


def freeze_long_lived_once(collect_first: bool = True) -> bool:
    """Collect once, then freeze what survives, the first time this process calls it; later calls do nothing.

    Call it when the process has imported what it keeps (the dashboard after its first page run): what is
    created later is collected as usual. The collection first means garbage alive now is freed, not frozen;
    ``collect_first=False`` skips it where that garbage is known to be small. Returns whether this call froze.
    """
    if _state["frozen"]:
        return False
    _state["frozen"] = True
    if collect_first:
        gc.collect()
    gc.freeze()
    return True


@contextmanager
def paused_until_frozen(collect_first: bool = True) -> Iterator[None]:
    """No collections during the block, then ``freeze_long_lived_once``: for the block in which a process imports
    and builds what it keeps. Once the process has frozen, the block runs as any other, collector on.

    Importing torch and transformers creates ~400,000 objects that live as long as the process, and the collector
    walked them again and again as they piled up: 0.6 of the 3.5 CPU s it takes to import the trainer, 0.3-0.6 s
    of the dashboard's first page. What is garbage right after those imports is ~10,000 objects (measured), so
    the trainer freezes it with the rest (``collect_first=False``) rather than pay a 0.26 s full collection.
    """
    if _state["frozen"]:
        yield
        return
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        freeze_long_lived_once(collect_first)


def skip_collection_at_exit() -> None:
    """Freeze everything as the interpreter exits (``atexit``), so that its final collections have nothing to
    walk (0.85 -> 0.17 s for a process that imported transformers' models). Nothing a clean exit relies on is
    skipped: files are closed by reference counting or explicitly, and Python never promised to finalise
    cycles still alive at exit. Registered once per process; the collector keeps working until exit."""
    if not _state["at_exit"]:
        _state["at_exit"] = True
        atexit.register(gc.freeze)
