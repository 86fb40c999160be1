"""The Temporal side of the trainer: activities and what they need from the SDK.

``fine_tune`` wraps the training core as the ``fine_tune_bert`` activity (heartbeats,
cancellation, typed failures); ``export``, ``promotion``, ``sweep`` and ``sweep_tracking`` are
the other activities; ``progress`` heartbeats from a helper thread and ``watchdog`` detects a
phase that hangs. This is the only trainer group besides ``orchestration`` that imports
``temporalio.activity``; the training core below it knows nothing of Temporal.
"""
