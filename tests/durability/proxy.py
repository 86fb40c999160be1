"""A TCP proxy between one worker and the Temporal server that a test can cut, like a network
partition: the worker keeps running, but nothing it sends reaches the server any more.

It runs its own event loop in a thread, so the test's loop (or a blocking call in the test)
never delays the traffic it forwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from shared.temporal import free_loopback_port

CHUNK = 64 * 1024


class PartitionProxy:
    """Forwards ``127.0.0.1:port`` to ``target``; ``cut()`` partitions, ``heal()`` restores.

    A cut is a black hole rather than a refusal: open connections stop carrying bytes in
    either direction and new connections are accepted but never forwarded, which is what a
    lost route looks like to the worker (timeouts, not errors).
    """

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host or "127.0.0.1", int(port))
        self.port = free_loopback_port()
        self.address = f"127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = threading.Event()
        self.forwarded_bytes = 0

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def start(self) -> PartitionProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        self._cut.set()

    def heal(self) -> None:
        """Restore forwarding; connections held during the cut are closed so clients redial."""
        self._call(self._close_connections())
        self._cut.clear()

    def close(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.is_cut:
                await self._hold(reader)
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            self._writers.add(upstream_writer)
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        except OSError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _hold(self, reader: asyncio.StreamReader) -> None:
        """Swallow everything the client sends, answer nothing."""
        while await reader.read(CHUNK):
            pass

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                if self.is_cut:
                    continue  # dropped on the floor, like packets on a dead route
                writer.write(data)
                self.forwarded_bytes += len(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                writer.close()

    async def _close_connections(self) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._close_connections()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@contextlib.contextmanager
def partition_proxy(target: str) -> Iterator[PartitionProxy]:
    proxy = PartitionProxy(target).start()
    try:
        yield proxy
    finally:
        proxy.close()
