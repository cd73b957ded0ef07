"""Pausing Python's cyclic garbage collector around bulk, cycle-free allocation.

Cutting and scoring a table's turns allocates hundreds of thousands of short-lived lists (words,
tokens and windows per text). They hold only strings and numbers, so reference counting frees
them and none can form a cycle, yet their number triggers collections, and each full collection
walks every object the stage holds (the table's rows included): a few tenths of a second each,
several per ten thousand rows. Pausing the collector around such a block skips that walk and
changes nothing that is computed.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for the block, then restore it as it was (nesting is safe).

    >>> import gc
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
