"""Waiting for the ONNX export a run, sweep or promotion starts after the run commits."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from shared.export_types import BertExportOutput, export_workflow_id


async def wait_for_export(client: Client, run_id: str, timeout: float = 120) -> BertExportOutput:
    """The result of ``run_id``'s ``BertExportWorkflow`` (started, not awaited, by its parent:
    it may not have been started yet when the parent returns to a concurrent caller)."""
    handle = client.get_workflow_handle(export_workflow_id(run_id), result_type=BertExportOutput)
    async with asyncio.timeout(timeout):
        while True:
            try:
                return await handle.result()
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:
                    raise
            await asyncio.sleep(0.2)
