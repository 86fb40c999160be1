"""The inferencer's HTTP endpoint: Open Inference Protocol v2 on ``BERT_HTTP_PORT``.

FastAPI on uvicorn, in the inferencer worker's own process and event loop, next to the
Temporal worker: it serves the same runs and ``@aliases`` from the same ``ModelCache``
(same classifiers, exports and labels as ``BertInferenceWorkflow``), without a Temporal round
trip. Routes (``{name}``: a run id, or ``@alias``, ``%40alias`` accepted):

- ``GET /v2/health/live``: the process and its event loop are alive;
- ``GET /v2/health/ready``: alive and not shutting down (Temporal is not needed);
- ``GET /v2/models/{name}``: metadata (``versions``: the run id serving the name now);
- ``GET /v2/models/{name}/ready``: 200 when the model is loaded here; else 503 and it starts
  loading (poll it to warm a replica);
- ``POST /v2/models/{name}/infer``: input ``text`` (BYTES, ``[n]`` or ``[n, 1]``), and
  ``text_pair`` for a run trained on pairs (required then, refused otherwise), JSON or
  binary tensors; outputs by the run's task (``oip.TASKS``: single-label ``label`` and
  ``score``, regression ``score``, multi-label ``scores``, token classification
  ``entities``); ``model_version`` is the run id that answered.

A request by ``@alias`` whose alias has a canary draws once (``random.random()``) and is
answered by the canary when the draw falls in its share; ``versions/{run_id}`` pins the
alias's run or its canary. An alias's shadow run scores the texts after the answer is sent
(``shadow.py``): never in the response, never before it.

The ``versions/{version}`` forms of the model routes are accepted too (the version must be
the run id serving the name). Errors are ``{"error": "..."}``: unknown model 404, bad request
400, too large 413 (bytes or texts), overloaded 503 (``max_in_flight`` infer requests
admitted), a run that cannot be loaded 500. Concurrent requests for one model are batched
(``batching.py``). Metrics: ``bert_inference_http_*`` on the worker's metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
import socket
import time
import zlib
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from temporalio.exceptions import ApplicationError

from services.inferencer.activities import served_run
from services.inferencer.batching import DynamicBatcher
from services.inferencer.classifiers import BatchCallback, LoadedModel
from services.inferencer.model_cache import ModelCache
from services.inferencer.oip import (
    HEADER_LENGTH,
    TASKS,
    InferRequest,
    Prediction,
    ProtocolError,
    TaskSpec,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from services.inferencer.shadow import ShadowScorer
from shared import metrics
from shared.aliases import AliasRoute, route_alias
from shared.errors import INVALID_CONFIG, RUN_NOT_FOUND
from shared.health import WorkerHealth
from shared.logging import get_logger
from shared.onnx_export import has_export
from shared.runs import ServedRun
from shared.settings import HttpSettings, SettingsError
from shared.storage import store_for

log = get_logger(__name__)

# The HTTP path serves on CPU: ONNX Runtime for a run with an export, else PyTorch (as the
# workflow path with use_gpu false, its default).
DEVICE = "cpu"


class HttpPortInUse(SettingsError):
    """``BERT_HTTP_PORT`` is taken by another process."""


class _Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> JSONResponse:
    # One line: the message is JSON-escaped, and newlines in it become spaces.
    return JSONResponse({"error": " ".join(message.split())}, status_code=status)


def _version() -> str:
    try:
        return version("bert-finetune")
    except PackageNotFoundError:
        return "unknown"


def _on_batch() -> BatchCallback:
    def on_batch(done: int, size: int) -> None:
        metrics.INFERENCE_BATCH_SIZE.observe(size)

    return on_batch


def _task_of(served: ServedRun) -> TaskSpec:
    """The outputs of the run's task (its ``run.json``; runs trained before tasks existed
    are single-label)."""
    return TASKS[served.record.config.task]


def _check_pairs(parsed: InferRequest, served: ServedRun) -> None:
    """``text_pair`` is required exactly for a run trained on pairs."""
    column = served.record.config.text_pair_column
    if parsed.pairs is not None and column is None:
        raise ProtocolError(
            f"input 'text_pair': run {served.run_id!r} classifies single texts (it was "
            "trained without text pairs); send only 'text'"
        )
    if parsed.pairs is None and column is not None:
        raise ProtocolError(
            f"input 'text_pair' is missing: run {served.run_id!r} was trained on text pairs "
            f"(text_pair_column {column[:100]!r}); send each pair's second text in 'text_pair'"
        )


class _NoSignals(uvicorn.Server):
    """uvicorn inside the worker's loop: the worker owns SIGTERM/SIGINT and stops us."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpEndpoint:
    """The app, its dynamic batcher and its uvicorn server; ``start`` / ``draining`` /
    ``stop`` (graceful: requests admitted before are answered)."""

    def __init__(
        self,
        settings: HttpSettings,
        runs_root: Path,
        cache: ModelCache,
        *,
        classify_threads: int = 4,
        graceful_shutdown_seconds: float = 30,
        shadow: ShadowScorer | None = None,
    ) -> None:
        self.settings = settings
        self._runs_root = runs_root
        self._cache = cache
        self._shadow = shadow if shadow is not None else ShadowScorer(runs_root, cache)
        self._health: WorkerHealth | None = None
        self._draining = False
        self._in_flight = 0
        self._grace = graceful_shutdown_seconds
        self._classify_pool = ThreadPoolExecutor(classify_threads, thread_name_prefix="http-infer")
        self._load_pool = ThreadPoolExecutor(2, thread_name_prefix="http-load")
        self.batcher = DynamicBatcher(
            self._classify_pool,
            window_seconds=settings.batch_window_ms / 1000,
            max_batch_texts=settings.max_batch_texts,
            on_batch=_on_batch,
        )
        self.app = self._build_app()
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self, health: WorkerHealth | None = None) -> None:
        self._health = health
        sock = self._bind()
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=max(1, int(self._grace)),
        )
        self._server = _NoSignals(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise RuntimeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        log.info(
            "http.started",
            address=self.settings.bind_address,
            port=self.port,
            batch_window_ms=self.settings.batch_window_ms,
            max_batch_texts=self.settings.max_batch_texts,
        )

    def draining(self) -> None:
        """Readiness fails from now on (the Service stops sending us requests); requests
        still arriving are served until ``stop``."""
        self._draining = True

    async def stop(self) -> None:
        self._draining = True
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await self._task
        self._classify_pool.shutdown(wait=False, cancel_futures=True)
        self._load_pool.shutdown(wait=False, cancel_futures=True)
        log.info("http.stopped")

    def _bind(self) -> socket.socket:
        address, port = self.settings.bind_address, self.settings.port or 0
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as err:
            sock.close()
            if err.errno != errno.EADDRINUSE:
                raise
            raise HttpPortInUse(
                f"BERT_HTTP_PORT={port} is already in use on {address} (another inferencer or "
                "`bert-finetune dev` on this machine?); set BERT_HTTP_PORT to a free port"
            ) from None
        sock.listen(2048)
        sock.setblocking(False)
        return sock

    # ---- the app ---------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI(
            title="bert-finetune inference (Open Inference Protocol v2)",
            version=_version(),
            docs_url=None,
            redoc_url=None,
            openapi_url=None,
        )

        @app.exception_handler(StarletteHTTPException)
        async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
            if exc.status_code == 404:
                return _error(
                    404,
                    f"no route {request.url.path[:200]}; routes: /v2/health/live, "
                    "/v2/health/ready, /v2/models/{name}, /v2/models/{name}/ready, "
                    "/v2/models/{name}/infer",
                )
            return _error(exc.status_code, str(exc.detail))

        @app.get("/v2/health/live")
        async def live() -> Response:
            return self._counted("health", *self._live())

        @app.get("/v2/health/ready")
        async def ready() -> Response:
            return self._counted("health", *self._ready())

        @app.get("/v2")
        async def server_metadata() -> Response:
            return JSONResponse(
                {
                    "name": "bert-finetune",
                    "version": _version(),
                    "extensions": ["binary_tensor_data"],
                }
            )

        @app.get("/v2/models/{name}")
        @app.get("/v2/models/{name}/versions/{model_version}")
        async def metadata(name: str, model_version: str | None = None) -> Response:
            return await self._metadata(name, model_version)

        @app.get("/v2/models/{name}/ready")
        @app.get("/v2/models/{name}/versions/{model_version}/ready")
        async def model_ready(name: str, model_version: str | None = None) -> Response:
            return await self._model_ready(name, model_version)

        @app.post("/v2/models/{name}/infer")
        @app.post("/v2/models/{name}/versions/{model_version}/infer")
        async def infer(request: Request, name: str, model_version: str | None = None) -> Response:
            return await self._infer(request, name, model_version)

        return app

    @staticmethod
    def _counted(route: str, status: int, body: dict[str, Any]) -> JSONResponse:
        metrics.HTTP_REQUESTS.labels(route=route, code=str(status)).inc()
        if status >= 400:
            return _error(status, str(body.get("error", "")))
        return JSONResponse(body, status_code=status)

    def _live(self) -> tuple[int, dict[str, Any]]:
        if self._health is not None:
            ok, why = self._health.alive()
            if not ok:
                return 503, {"error": why}
        return 200, {"live": True}

    def _ready(self) -> tuple[int, dict[str, Any]]:
        status, body = self._live()
        if status != 200:
            return status, body
        if self._draining:
            return 503, {"error": "shutting down"}
        return 200, {"ready": True}

    # ---- models ----------------------------------------------------------------------

    def _resolve(
        self, name: str, model_version: str | None, draw: float | None = None
    ) -> tuple[ServedRun, AliasRoute | None]:
        """The run serving ``name`` (a run id, or ``@alias``: its run, or its canary when
        ``draw`` falls in the canary's share or ``model_version`` names the canary), and the
        alias's route; ``_Failure`` 404 when none."""
        route: AliasRoute | None = None
        try:
            if name.startswith("@"):
                alias: str | None = name[1:]
                route = route_alias(self._runs_root, name[1:], draw, pinned=model_version)
                run_id = route.run_id
            else:
                alias, run_id = None, name
            served = served_run(self._runs_root, run_id, alias)
        except ApplicationError as err:
            if err.type in (RUN_NOT_FOUND, INVALID_CONFIG):
                raise _Failure(404, f"model {name[:200]!r}: {err.message}") from None
            raise
        if model_version is not None and model_version != served.run_id:
            raise _Failure(
                404,
                f"model {name[:200]!r} has no version {model_version[:200]!r}: it is served by "
                f"run {served.run_id!r}",
            )
        return served, route

    async def _resolved(
        self, name: str, model_version: str | None, draw: float | None = None
    ) -> tuple[ServedRun, AliasRoute | None]:
        """``_resolve`` off the event loop when the runs live in an object store (requests
        to it, and the download of a cold commit); on a filesystem it is a few stats."""
        if store_for(self._runs_root) is None:
            return self._resolve(name, model_version, draw)
        return await asyncio.to_thread(self._resolve, name, model_version, draw)

    async def _loaded(self, served: ServedRun) -> LoadedModel:
        loaded = self._cache.peek(served.model_dir, DEVICE)
        if loaded is not None:
            return loaded
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._load_pool, self._cache.get, served.model_dir, DEVICE
        )

    async def _metadata(self, name: str, model_version: str | None) -> Response:
        try:
            served, route = await self._resolved(name, model_version)
        except _Failure as failure:
            return self._counted("metadata", failure.status, {"error": str(failure)})
        platform = "onnxruntime" if has_export(served.model_dir) else "pytorch"
        body = model_metadata(
            name, served.run_id, platform, _task_of(served), served.record.label_names
        )
        if route is not None and model_version is None:
            # Every run that may answer the alias: its own, and its canary's.
            body["versions"] = route.versions
        return self._counted("metadata", 200, body)

    async def _model_ready(self, name: str, model_version: str | None) -> Response:
        try:
            served, _ = await self._resolved(name, model_version)
            loaded = self._cache.peek(served.model_dir, DEVICE)
        except _Failure as failure:
            return self._counted("ready", failure.status, {"error": str(failure)})
        except ApplicationError as err:  # removed since it was resolved, or unreadable
            status = 404 if err.type == RUN_NOT_FOUND else 500
            return self._counted("ready", status, {"error": err.message})
        if loaded is None:
            self._cache.warm(served.model_dir, DEVICE)
            return self._counted(
                "ready",
                503,
                {"error": f"model {name!r} (run {served.run_id!r}) is loading on this replica"},
            )
        return self._counted("ready", 200, {"name": name, "ready": True})

    # ---- infer -----------------------------------------------------------------------

    async def _infer(self, request: Request, name: str, model_version: str | None) -> Response:
        started = time.perf_counter()
        if self._in_flight >= self.settings.max_in_flight or self._draining:
            why = (
                "shutting down"
                if self._draining
                else (
                    f"overloaded: {self._in_flight} requests in flight (the limit is "
                    f"{self.settings.max_in_flight}); retry shortly"
                )
            )
            return self._counted("infer", 503, {"error": why})
        self._in_flight += 1
        metrics.HTTP_IN_FLIGHT.inc()
        status = 500
        try:
            body = await self._body(request)
            parsed = parse_infer_request(
                body, request.headers.get(HEADER_LENGTH), self.settings.max_texts
            )
            # One draw per request: it picks the alias's run or its canary.
            served, route = await self._resolved(name, model_version, draw=random.random())
            _check_pairs(parsed, served)
            loaded = await self._loaded(served)
            response = await self._classify(parsed, name, served, loaded, route)
            status = 200
            return response
        except ProtocolError as err:
            status = err.status
            return _error(status, str(err))
        except _Failure as failure:
            status = failure.status
            return _error(status, str(failure))
        except ClientDisconnect:
            status = 499  # the client went away before sending its whole request
            return Response(status_code=400)
        except ApplicationError as err:
            status = 404 if err.type == RUN_NOT_FOUND else 500
            log.warning("http.infer_failed", model=name, error_type=err.type, error=err.message)
            return _error(status, err.message)
        except Exception as err:
            log.exception("http.infer_crashed", model=name)
            return _error(500, f"{type(err).__name__}: {err}")
        finally:
            self._in_flight -= 1
            metrics.HTTP_IN_FLIGHT.dec()
            metrics.HTTP_REQUESTS.labels(route="infer", code=str(status)).inc()
            metrics.HTTP_LATENCY.observe(time.perf_counter() - started)

    async def _classify(
        self,
        parsed: InferRequest,
        name: str,
        served: ServedRun,
        loaded: LoadedModel,
        route: AliasRoute | None,
    ) -> Response:
        predictions = await self.batcher.predict(
            loaded, parsed.texts, parsed.max_seq_length, parsed.pairs
        )
        metrics.INFERENCE_TEXTS.inc(len(parsed.texts))
        if route is not None and route.shadow_run_id is not None:
            # Queued for the shadow's own thread; this request does not wait for it.
            self._shadow.submit(
                name[1:],
                route.shadow_run_id,
                _task_of(served).name,
                parsed.texts,
                parsed.pairs,
                parsed.max_seq_length,
                predictions,
            )
        body, headers = encode_infer_response(
            parsed,
            name,
            served.run_id,
            _task_of(served),
            Prediction(predictions, loaded.label_names),
        )
        media = "application/octet-stream" if HEADER_LENGTH in headers else "application/json"
        return Response(body, 200, headers=headers, media_type=media)

    async def _body(self, request: Request) -> bytes:
        """The request body, decompressed (gzip, deflate), at most ``max_request_bytes``."""
        limit = self.settings.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(
                f"request body of {declared} bytes, over the {limit}-byte limit", 413
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(f"request body over the {limit}-byte limit", 413)
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = (request.headers.get("content-encoding") or "identity").lower()
        if encoding in ("identity", ""):
            return body
        if encoding not in ("gzip", "deflate"):
            raise ProtocolError(f"Content-Encoding {encoding[:20]!r}: use gzip, deflate or none")
        inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
        try:
            inflated = inflater.decompress(body, limit + 1)
        except zlib.error as err:
            raise ProtocolError(f"the {encoding} body does not decompress: {err}") from None
        if len(inflated) > limit or inflater.unconsumed_tail:
            raise ProtocolError(f"decompressed request body over the {limit}-byte limit", 413)
        return inflated
