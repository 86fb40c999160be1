"""The export workflow's interface: ``BertExportWorkflow`` adds a run's ONNX export after the
run has committed, off the training's critical path.

Imported by workflows: free of I/O and heavy imports, like ``shared.types``.
"""

from __future__ import annotations

from shared.types import SavedRunId, _Strict

# Internal: started (and abandoned) by a run, a sweep or a promotion; `bert-finetune export`
# starts it by hand for runs trained before exports existed.
EXPORT_WORKFLOW = "BertExportWorkflow"
# A regular activity on the training queue: only trainers have torch and the ONNX tools.
EXPORT_ACTIVITY = "export_run"
# The export is a derived file set; when it cannot be built the run is served by PyTorch.
EXPORT_FAILED = "ExportFailed"


def export_workflow_id(run_id: str) -> str:
    """One export workflow per run folder at a time (a second start is a no-op)."""
    return f"bert-export/{run_id}"


class BertExportInput(_Strict):
    """Which run to export. A run that reuses another run's model exports that run."""

    run_id: SavedRunId


class BertExportOutput(_Strict):
    run_id: str
    # The run folder that holds the weights (and now the export): ``run_id`` itself, or the
    # run it reused.
    exported_run_id: str
    # "model.int8.onnx" or "model.onnx"; None when nothing was published (see ``outcome``).
    served_graph: str | None = None
    # "exported"; "already_exported" (an export of this very commit was there); "superseded"
    # (the run was overwritten or removed while exporting: nothing was published);
    # "abandoned" (the activity was cancelled while the graph was being built).
    outcome: str = "exported"
    export_seconds: float = 0.0
