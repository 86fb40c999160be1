"""What a training process does once, before its first run."""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_startup_objects() -> None:
    """Import the training stack, then move every object alive (modules, classes, the
    libraries' tables: about half a million) out of the garbage collector's sight, once per
    process. Each ``Trainer.train`` starts with a full ``gc.collect()`` (accelerate's
    ``free_memory``), which would otherwise walk them all again for every run and every
    halving segment (about 0.25 s each on 2 cores). Objects created later are collected as
    usual. A frozen object is still freed when its last reference goes; only a reference
    cycle among frozen objects would stay, and what a worker holds when it starts training
    (modules, its client) lives as long as the process.

    Called by the first training of a process, in its worker thread: the import takes
    seconds, which must not block a worker's event loop at start-up."""
    global _frozen
    with _lock:
        if _frozen:
            return
        from transformers import Trainer  # noqa: F401  (imported by training anyway)

        from services.trainer.training import callbacks, stages  # noqa: F401

        gc.collect()
        gc.freeze()
        _frozen = True
