"""Deterministic workflow code of the trainer task queue.

The workflows (``BertFineTuningWorkflow``, ``BertSweepWorkflow``, ``BertPromoteWorkflow`` and
the internal ``BertRunWorkflow`` / ``BertExportWorkflow``), one run's lifecycle
(``run_lifecycle``: re-execution after preemption, fencing tokens), the live board of runs a
workflow answers ``progress`` from, and a sweep's rules as pure functions. Everything here
replays: it imports only ``shared`` and ``temporalio`` (a test enforces it), never torch,
transformers or the run-folder layer, and does no I/O. Patch ids live in ``versioning``.
"""
