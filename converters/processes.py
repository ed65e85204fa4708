"""Worker processes that do not outlive the process that started them.

A ``ProcessPoolExecutor`` worker waits for work forever. When its parent is killed
(``kill -9``, the out-of-memory killer), nothing tells it, and each idle worker stays
with its imported libraries in memory. Pools here start their workers with
:func:`exit_with_parent`, which ends the worker once it has been orphaned.
"""

from __future__ import annotations

import os
import threading
import time

#: How often a worker checks that its parent is still there.
POLL_SECONDS = 1.0


def _watch(owner: int) -> None:
    while os.getppid() == owner:
        time.sleep(POLL_SECONDS)
    os._exit(1)  # re-parented: the pool's owner is gone


def exit_with_parent(owner: int) -> None:
    """Pool initializer (``initargs=(os.getpid(),)``): end this worker once ``owner`` is no longer its parent.

    The owner's pid comes from the owner: a worker killed while it still imports its libraries
    starts this check already orphaned, and must see that.
    """
    threading.Thread(target=_watch, args=(owner,), name="exit-with-parent", daemon=True).start()
