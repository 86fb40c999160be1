"""A training process freezes its start-up objects once (at its first run), so each
``Trainer.train`` (whose ``free_memory`` runs a full ``gc.collect()``) does not walk the
training stack again; what runs create afterwards is still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    """
    import gc, weakref
    from services.trainer.training.startup import freeze_startup_objects

    assert gc.get_freeze_count() == 0
    freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 100_000, frozen  # the training stack, imported first
    freeze_startup_objects()
    assert gc.get_freeze_count() == frozen, "once per process"

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle
    alive = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert alive() is None, "a cycle made after the freeze is still collected"
    print("ok", frozen)
    """
)


def test_the_training_stack_is_frozen_once_and_later_garbage_is_still_collected() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ok ")
