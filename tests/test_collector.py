"""opd_core.collector: frozen objects leave the collector's walks, garbage made later is still collected.

Run in a fresh interpreter: the test workers freeze their own objects after collection (tests/conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import atexit, gc, weakref
from opd_core import collector

class Node:
    pass

def cycle():
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a

kept = cycle()                      # alive at the freeze: frozen, never walked again
garbage = cycle()
dead = weakref.ref(garbage)
del garbage                         # garbage at the freeze: collected first, not frozen
assert collector.freeze_long_lived_once() is True
assert dead() is None, "garbage alive at the freeze was frozen instead of collected"
frozen = gc.get_freeze_count()
assert frozen > 1000, frozen
assert collector.freeze_long_lived_once() is False and gc.get_freeze_count() == frozen  # once per process

later = cycle()                     # made after the freeze: collected as usual
gone = weakref.ref(later)
del later
gc.collect()
assert gone() is None, "a cycle made after the freeze was never collected"

registered = []
atexit.register = registered.append
collector.skip_collection_at_exit()
collector.skip_collection_at_exit()
assert registered == [gc.freeze], registered
print("ok")
"""


PAUSED_PROBE = """
import gc
from opd_core import collector

assert gc.isenabled() and gc.get_freeze_count() == 0
with collector.paused_until_frozen(collect_first=False):
    assert not gc.isenabled()       # nothing walks the objects the imports pile up
    import json, decimal  # noqa: F401
assert gc.isenabled(), "the collector stays off after the block"
assert gc.get_freeze_count() > 1000  # what the block left is frozen
assert collector.freeze_long_lived_once() is False  # the process's one freeze is spent
with collector.paused_until_frozen():
    assert gc.isenabled()           # a later block (the dashboard's next page run) runs with the collector on
print("ok")
"""


def _probe(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_the_first_block_runs_without_collections_and_what_it_leaves_is_frozen() -> None:
    _probe(PAUSED_PROBE)


def test_freezing_collects_garbage_first_keeps_collecting_new_garbage_and_happens_once() -> None:
    _probe(PROBE)
