"""Building many objects at once without the cyclic garbage collector running in between."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def bulk_allocation() -> Iterator[None]:
    """Pause the cyclic garbage collector while a block builds many objects with no cycles
    (a parsed or decoded flow, a run's progress). Every ~700 allocations would otherwise start a
    collection, and the occasional full one walks every object of the process: tens of
    milliseconds when a 10k-node run is resumed in a busy process. Reference counting still frees
    memory as usual; the collector resumes, as it was, when the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
