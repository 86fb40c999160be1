"""A small LRU cache of loaded models, keyed by run id and the run's on-disk identity.

A run directory that is replaced (retrained with overwrite) gets a new ``run.json``, so
its (inode, mtime) stamp changes and the stale model is reloaded rather than served; a load
never mixes the files of two commits (``load_model``). The
stamp includes the ONNX export's manifest too: a run first served by PyTorch switches to
ONNX Runtime as soon as its export (added after the commit) lands.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import OrderedDict
from pathlib import Path

from services.inferencer.classifiers import LoadedModel, load_classifier
from shared import metrics
from shared.errors import MODEL_LOAD_ERROR, RUN_NOT_FOUND, failure
from shared.logging import get_logger
from shared.model_files import check_model_folder
from shared.onnx_export import EXPORT_DIR, EXPORT_MANIFEST
from shared.runs import RUN_MANIFEST, read_committed

log = get_logger(__name__)
_LOAD_FIX = "retrain it or check the runs volume"


def _stamp(run_dir: Path) -> tuple[int, ...]:
    try:
        stat = (run_dir / RUN_MANIFEST).stat()
    except FileNotFoundError:  # replaced or removed since it was found complete
        raise failure(
            RUN_NOT_FOUND,
            f"run {run_dir.name!r} was removed or is being retrained; try again when it finishes",
        ) from None
    try:
        export = (run_dir / EXPORT_DIR / EXPORT_MANIFEST).stat()
        exported: tuple[int, ...] = (export.st_ino, export.st_mtime_ns)
    except FileNotFoundError:
        exported = ()
    return stat.st_ino, stat.st_mtime_ns, *exported


def load_model(run_dir: Path, device: str) -> LoadedModel:
    """Load a saved run (its ONNX export on CPU when it has one); never runs code from it.

    Every file comes from one commit: a load that overlapped an overwrite's swap of the
    run's files is done again (``shared.runs.read_committed``)."""

    def load() -> LoadedModel:
        stamp = _stamp(run_dir)
        # Only the run folder's own plain files: no link out of it, no metadata naming others.
        check_model_folder(
            run_dir, f"run {run_dir.name!r}", MODEL_LOAD_ERROR, _LOAD_FIX, links_inside=True
        )
        return LoadedModel(load_classifier(run_dir, device), stamp)

    return read_committed(run_dir, load)


class ModelCache:
    def __init__(self, max_models: int) -> None:
        self._max = max_models
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._warming: set[tuple[str, str]] = set()

    def get(self, run_dir: Path, device: str) -> LoadedModel:
        key = (run_dir.name, device)
        current = _stamp(run_dir)
        with self._lock:
            if cached := self._fresh(key, current):
                return cached
            load_lock = self._loading.setdefault(key, threading.Lock())
        # One load per key at a time; other requests for the same run wait for it.
        with load_lock:
            with self._lock:
                if cached := self._fresh(key, current):
                    return cached
            metrics.MODEL_CACHE_MISSES.inc()
            started = time.monotonic()
            loaded = load_model(run_dir, device)
            elapsed = time.monotonic() - started
            metrics.MODEL_LOADS.inc()
            metrics.MODEL_LOAD_DURATION.observe(elapsed)
            log.info(
                "model.loaded",
                run_id=run_dir.name,
                device=device,
                backend=loaded.classifier.backend,
                seconds=round(elapsed, 3),
            )
            with self._lock:
                self._models[key] = loaded
                self._models.move_to_end(key)
                while len(self._models) > self._max:
                    evicted, _ = self._models.popitem(last=False)
                    # Keep the per-run locks bounded too: drop an evicted run's idle lock.
                    evicted_lock = self._loading.get(evicted)
                    if evicted_lock is not None and not evicted_lock.locked():
                        del self._loading[evicted]
                    log.info("model.evicted", run_id=evicted[0])
                metrics.MODELS_CACHED.set(len(self._models))
            return loaded

    def _fresh(self, key: tuple[str, str], stamp: tuple[int, ...]) -> LoadedModel | None:
        """The cached model for ``key`` if it was loaded from this very ``run.json``."""
        cached = self._models.get(key)
        if cached is None or cached.stamp != stamp:
            return None
        self._models.move_to_end(key)
        metrics.MODEL_CACHE_HITS.inc()
        return cached

    def peek(self, run_dir: Path, device: str) -> LoadedModel | None:
        """The model if it is loaded from the run's current commit, else None; never loads.

        What a caller that must not wait for a load (a local activity inside a workflow task,
        the HTTP endpoint's event loop) asks first.
        """
        key = (run_dir.name, device)
        current = _stamp(run_dir)
        with self._lock:
            return self._fresh(key, current)

    def is_current(self, run_dir: Path, device: str) -> bool:
        """Whether the run's current commit is loaded (no metrics, no LRU touch)."""
        key, current = (run_dir.name, device), _stamp(run_dir)
        with self._lock:
            cached = self._models.get(key)
            return cached is not None and cached.stamp == current

    def stale(self, run_dir: Path, device: str) -> bool:
        """Whether the run is loaded from files that changed since (an export landed)."""
        key, current = (run_dir.name, device), _stamp(run_dir)
        with self._lock:
            cached = self._models.get(key)
            return cached is not None and cached.stamp != current

    def warm(self, run_dir: Path, device: str) -> None:
        """Load the model on a background thread unless it is being warmed already; returns
        at once. A failure is logged (the next request that loads it reports it)."""
        key = (run_dir.name, device)
        with self._lock:
            if key in self._warming:
                return
            self._warming.add(key)

        def load() -> None:
            try:
                self.get(run_dir, device)
            except Exception as err:
                log.warning("model.warm_failed", run_id=run_dir.name, error=str(err)[:300])
            finally:
                with self._lock:
                    self._warming.discard(key)

        # The caller's log context (the request that found the model cold) goes along.
        context = contextvars.copy_context()
        threading.Thread(
            target=context.run, args=(load,), name=f"warm-{run_dir.name}"[:60], daemon=True
        ).start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)
