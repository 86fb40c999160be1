"""Processes that die with their parent: torchrun under the worker, ranks under torchrun.

Linux delivers ``PR_SET_PDEATHSIG`` to a process when the thread that started it exits,
whatever the reason (SIGKILL included). The worker starts this module as the launcher; it
arms the signal, checks that its parent has not already gone, then runs torchrun in-process.
Each rank arms the same signal against torchrun (``rank_main``). A SIGKILLed worker therefore
takes the launcher with it, and the launcher takes every rank: no orphan keeps a GPU or keeps
writing into a run folder that a retry now owns.

Arming the signal here rather than in a ``preexec_fn`` keeps the worker's fork free of
Python code, which is unsafe in a process with threads (the worker has several).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
# Set by the worker in the launcher's environment: the process the launcher must die with.
EXPECTED_PARENT_ENV = "BERT_LAUNCHER_PARENT_PID"


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits.

    ``expected_parent``: the parent's pid when known; without it, the parent seen at
    startup. A parent gone before the signal was armed means the process was orphaned
    already: exit at once.
    """
    parent = expected_parent if expected_parent is not None else os.getppid()
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}")
    if os.getppid() != parent:
        os._exit(1)


def main() -> None:
    """``python -m services.trainer.distributed.process_guard <torchrun arguments>``."""
    expected = os.environ.pop(EXPECTED_PARENT_ENV, None)
    die_with_parent(int(expected) if expected else None)
    from torch.distributed.run import main as torchrun

    torchrun(sys.argv[1:])


if __name__ == "__main__":
    main()
