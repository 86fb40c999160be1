"""One typed settings object built from the environment, then passed explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shared.types import INFERENCE_TASK_QUEUE, TRAINING_TASK_QUEUE

DEFAULT_TRAINER_METRICS_PORT = 9464
DEFAULT_INFERENCER_METRICS_PORT = 9465
DEFAULT_CONTROLLER_METRICS_PORT = 9466


# The most a training phase may go without progress before the watchdog takes the attempt
# as hung. Training and evaluation progress per batch and tokenization per chunk of rows;
# loading and saving have no finer progress, so their limit covers the whole phase (a
# large hub download can take long, hence the hour for data).
DEFAULT_PHASE_TIMEOUTS_SECONDS = {
    "loading_data": 3600,
    "loading_model": 1800,
    "tokenizing": 1800,
    "training": 1800,
    "evaluating": 1800,
    "saving": 1800,
}
MIN_PHASE_TIMEOUT_SECONDS = 10
# The most classes a run may have (``BERT_MAX_CLASSES``): every class is a row and a column
# of the confusion matrix and a name in each record and inference result.
DEFAULT_MAX_CLASSES = 1000


class SettingsError(ValueError):
    """An environment variable has a value the workers cannot use."""


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _tracking_uri(env: Mapping[str, str]) -> str | None:
    uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri:
        return None
    if not uri.startswith(("http://", "https://")):
        # A file or database URI would make every trainer pod write its own private store.
        raise SettingsError(
            f"MLFLOW_TRACKING_URI={uri!r} must be an MLflow tracking server's http(s):// address"
        )
    return uri


def _int(
    env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    if maximum is not None and value > maximum:
        raise SettingsError(f"{name}={value} must be at most {maximum}")
    return value


def max_classes(env: Mapping[str, str] | None = None) -> int:
    """``BERT_MAX_CLASSES``: the most classes a run's labels may have (default 1,000)."""
    return _int(os.environ if env is None else env, "BERT_MAX_CLASSES", DEFAULT_MAX_CLASSES, 2)


def _local_path_roots(env: Mapping[str, str], runs_dir: Path | None) -> tuple[Path, ...]:
    """``BERT_LOCAL_PATH_ROOTS``: absolute folders separated by ``:``; default cwd + runs
    (the runs folder only when it is the shared runs root, not a store's private cache)."""
    raw = env.get("BERT_LOCAL_PATH_ROOTS")
    if raw is None or raw.strip() == "":
        return (Path.cwd(),) if runs_dir is None else (Path.cwd(), runs_dir)
    roots = []
    for part in raw.split(":"):
        if not part.strip():
            continue
        root = Path(part.strip())
        if not root.is_absolute():
            raise SettingsError(
                f"BERT_LOCAL_PATH_ROOTS: {part.strip()!r} is not an absolute path; list "
                "absolute folders separated by ':'"
            )
        roots.append(root)
    if not roots:
        raise SettingsError("BERT_LOCAL_PATH_ROOTS lists no folder; unset it for the defaults")
    return tuple(roots)


def _phase_timeouts(env: Mapping[str, str]) -> dict[str, int]:
    """``BERT_PHASE_TIMEOUTS_SECONDS`` (``phase=seconds,...``) over the defaults.

    ``BERT_STEP_STALL_TIMEOUT_SECONDS`` still sets the training phase's limit.
    """
    timeouts = dict(DEFAULT_PHASE_TIMEOUTS_SECONDS)
    timeouts["training"] = _int(
        env, "BERT_STEP_STALL_TIMEOUT_SECONDS", timeouts["training"], MIN_PHASE_TIMEOUT_SECONDS
    )
    raw = env.get("BERT_PHASE_TIMEOUTS_SECONDS") or ""
    for item in filter(None, (part.strip() for part in raw.split(","))):
        phase, _, seconds = (part.strip() for part in item.partition("="))
        if phase not in timeouts:
            raise SettingsError(
                f"BERT_PHASE_TIMEOUTS_SECONDS: unknown phase {phase!r}; phases are "
                f"{', '.join(timeouts)}"
            )
        value = int(seconds) if seconds.isdigit() else -1
        if value < MIN_PHASE_TIMEOUT_SECONDS:
            raise SettingsError(
                f"BERT_PHASE_TIMEOUTS_SECONDS: {item!r} needs whole seconds >= "
                f"{MIN_PHASE_TIMEOUT_SECONDS}, e.g. {phase}=600"
            )
        timeouts[phase] = value
    return timeouts


def _processes(env: Mapping[str, str], name: str) -> int | Literal["auto"]:
    raw = (env.get(name) or "").strip().lower()
    if raw == "auto":
        return "auto"
    return _int(env, name, 1, minimum=1)


@dataclass(frozen=True)
class TemporalSettings:
    """How to reach Temporal: the SDK's standard TEMPORAL_* variables (address, TLS, API key)."""

    connect_config: dict[str, Any] = field(repr=False)

    @property
    def address(self) -> str:
        return str(self.connect_config.get("target_host", "localhost:7233"))

    @property
    def namespace(self) -> str:
        return str(self.connect_config.get("namespace", "default"))

    @property
    def uses_tls(self) -> bool:
        return bool(self.connect_config.get("tls"))

    @property
    def uses_api_key(self) -> bool:
        return bool(self.connect_config.get("api_key"))

    def __repr__(self) -> str:
        # Never show the API key or key paths; these objects end up in logs.
        return (
            f"TemporalSettings(address={self.address!r}, namespace={self.namespace!r}, "
            f"tls={self.uses_tls}, api_key={'set' if self.uses_api_key else 'unset'})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TemporalSettings:
        from temporalio.envconfig import ClientConfig

        env = dict(os.environ if env is None else env)
        env.setdefault("TEMPORAL_ADDRESS", "localhost:7233")
        env.setdefault("TEMPORAL_NAMESPACE", "default")
        try:
            config = ClientConfig.load_client_connect_config(
                disable_file="TEMPORAL_CONFIG_FILE" not in env, override_env_vars=env
            )
        except Exception as err:  # the Rust loader raises plain RuntimeError/ValueError
            raise SettingsError(f"Temporal connection settings: {err}") from None
        return cls(connect_config=dict(config))


# The most a dynamic batch may be configured to hold (its memory is bounded per forward
# pass by the classifier's token budget; this bounds the tokenized batch held at once).
MAX_BATCH_TEXTS_LIMIT = 4096


@dataclass(frozen=True)
class HttpSettings:
    """The inferencer's Open Inference Protocol v2 endpoint (``BERT_HTTP_*``); off when
    ``BERT_HTTP_PORT`` is unset (the chart sets it from ``inferencer.http.port``)."""

    # None: no HTTP server; 0: any free port (tests).
    port: int | None = None
    bind_address: str = "0.0.0.0"
    # Concurrent requests for one model arriving within this window are classified together;
    # 0: no wait, only what queued while the previous batch ran (under load, as fast as a
    # window and no cost to an idle endpoint's latency: docs/benchmarks.md, "HTTP serving").
    batch_window_ms: float = 0.0
    # The most texts one dynamic batch takes (requests are never split between batches).
    # Large enough to take every waiting request under load: sorting a large batch by length
    # pads less (measured in docs/benchmarks.md, "HTTP serving").
    max_batch_texts: int = 256
    # Per request: the most texts, and the most body bytes (413 above either).
    max_texts: int = 256
    max_request_bytes: int = 1024 * 1024
    # Infer requests admitted at once (queued for a batch or classified); 503 above.
    max_in_flight: int = 64

    @property
    def enabled(self) -> bool:
        return self.port is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpSettings:
        raw_port = (env.get("BERT_HTTP_PORT") or "").strip()
        raw_window = (env.get("BERT_HTTP_BATCH_WINDOW_MS") or "").strip()
        try:
            window = float(raw_window) if raw_window else cls.batch_window_ms
        except ValueError:
            window = -1.0
        if not 0 <= window <= 1000:
            raise SettingsError(
                f"BERT_HTTP_BATCH_WINDOW_MS={raw_window!r} must be milliseconds from 0 to 1000"
            )
        port = _int(env, "BERT_HTTP_PORT", 0) if raw_port else None
        if port is not None and port > 65535:
            raise SettingsError(f"BERT_HTTP_PORT={port} is not a TCP port (0-65535)")
        return cls(
            port=port,
            bind_address=env.get("BERT_HTTP_BIND_ADDRESS") or "0.0.0.0",
            batch_window_ms=window,
            max_batch_texts=_int(
                env, "BERT_HTTP_MAX_BATCH_TEXTS", cls.max_batch_texts, 1, MAX_BATCH_TEXTS_LIMIT
            ),
            max_texts=_int(env, "BERT_HTTP_MAX_TEXTS", cls.max_texts, 1),
            max_request_bytes=_int(env, "BERT_HTTP_MAX_REQUEST_BYTES", cls.max_request_bytes, 1024),
            max_in_flight=_int(env, "BERT_HTTP_MAX_IN_FLIGHT", cls.max_in_flight, 1),
        )


@dataclass(frozen=True)
class Settings:
    temporal: TemporalSettings
    runs_dir: Path
    # ``BERT_RUNS_URI`` (s3://bucket/prefix): runs live in that object store, and ``runs_dir``
    # is this worker's private cache and staging area (``shared/storage``); None: runs_dir is
    # the shared runs folder.
    runs_uri: str | None = None
    # ``BERT_STORE_CACHE_GB``: the most disk the downloaded commits of a store may take.
    store_cache_bytes: int = 20 * 1024**3
    # Folders whose files a training config may name (train_file, a local model_name...).
    local_path_roots: tuple[Path, ...] = ()
    training_task_queue: str = TRAINING_TASK_QUEUE
    inference_task_queue: str = INFERENCE_TASK_QUEUE
    metrics_bind_address: str = "0.0.0.0"
    trainer_metrics_port: int = DEFAULT_TRAINER_METRICS_PORT
    inferencer_metrics_port: int = DEFAULT_INFERENCER_METRICS_PORT
    controller_metrics_port: int = DEFAULT_CONTROLLER_METRICS_PORT
    trainer_max_concurrent_activities: int = 1
    # Processes (DDP ranks) that train one run together; "auto": one per visible GPU.
    trainer_processes: int | Literal["auto"] = 1
    inference_max_concurrent_activities: int = 4
    model_cache_size: int = 4
    # The inferencer's HTTP endpoint (Open Inference Protocol v2); off unless BERT_HTTP_PORT.
    http: HttpSettings = field(default_factory=HttpSettings)
    # Seconds between the inferencer's looks at the aliases, to load promoted runs ahead of
    # traffic (services/inferencer/warming.py); 0: never.
    warm_aliases_seconds: int = 10
    graceful_shutdown_seconds: int = 30
    # ``BERT_GATE_QUEUE_TIMEOUT_SECONDS``: how long a gated promotion waits for an inferencer
    # to pick up its gate before it is refused (the alias left as it was).
    gate_queue_timeout_seconds: int = 600
    progress_signal_interval_seconds: int = 10
    # Per phase, the most seconds without progress before the watchdog fails the attempt.
    phase_timeouts_seconds: dict[str, int] = field(
        default_factory=lambda: dict(DEFAULT_PHASE_TIMEOUTS_SECONDS)
    )
    checkpoint_interval_seconds: int = 600
    # The most classes a run's labels may have: checked with the data, before training
    # (the data checks read it from the environment, ``max_classes()``; here it is
    # validated when the worker starts).
    max_classes: int = DEFAULT_MAX_CLASSES
    log_level: str = "INFO"
    log_format: str = "auto"
    # Experiment tracking (trainer only): an MLflow server, TensorBoard event files, or both.
    mlflow_tracking_uri: str | None = None
    tensorboard: bool = False
    # Promotions also become versions of this MLflow registered model (None: not mirrored).
    mlflow_registered_model: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        log_level = (env.get("LOG_LEVEL") or "INFO").upper()
        if log_level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise SettingsError(
                f"LOG_LEVEL={log_level!r} must be DEBUG, INFO, WARNING, ERROR or CRITICAL"
            )
        log_format = env.get("LOG_FORMAT", "auto").lower()
        if log_format not in {"auto", "json", "console"}:
            raise SettingsError(f"LOG_FORMAT={log_format!r} must be auto, json or console")
        runs_dir = Path(env.get("BERT_RUNS_DIR") or "./bert_runs").expanduser().absolute()
        runs_uri = (env.get("BERT_RUNS_URI") or "").strip() or None
        return cls(
            temporal=TemporalSettings.from_env(env),
            runs_dir=runs_dir,
            runs_uri=runs_uri,
            store_cache_bytes=_int(env, "BERT_STORE_CACHE_GB", 20, minimum=1) * 1024**3,
            # With a store, BERT_RUNS_DIR is a private cache: no longer a default input root.
            local_path_roots=_local_path_roots(env, None if runs_uri else runs_dir),
            training_task_queue=env.get("BERT_TRAINING_TASK_QUEUE") or TRAINING_TASK_QUEUE,
            inference_task_queue=env.get("BERT_INFERENCE_TASK_QUEUE") or INFERENCE_TASK_QUEUE,
            metrics_bind_address=env.get("METRICS_BIND_ADDRESS") or "0.0.0.0",
            trainer_metrics_port=_int(env, "METRICS_PORT", DEFAULT_TRAINER_METRICS_PORT),
            inferencer_metrics_port=_int(env, "METRICS_PORT", DEFAULT_INFERENCER_METRICS_PORT),
            controller_metrics_port=_int(env, "METRICS_PORT", DEFAULT_CONTROLLER_METRICS_PORT),
            trainer_max_concurrent_activities=_int(
                env, "BERT_TRAINER_MAX_CONCURRENT_ACTIVITIES", 1, minimum=1
            ),
            trainer_processes=_processes(env, "BERT_TRAINER_PROCESSES"),
            inference_max_concurrent_activities=_int(
                env, "BERT_INFERENCE_MAX_CONCURRENT_ACTIVITIES", 4, minimum=1
            ),
            model_cache_size=_int(env, "BERT_MODEL_CACHE_SIZE", 4, minimum=1),
            http=HttpSettings.from_env(env),
            warm_aliases_seconds=_int(env, "BERT_WARM_ALIASES_SECONDS", 10),
            graceful_shutdown_seconds=_int(env, "WORKER_GRACEFUL_SHUTDOWN_SECONDS", 30),
            gate_queue_timeout_seconds=_int(
                env, "BERT_GATE_QUEUE_TIMEOUT_SECONDS", 600, minimum=1, maximum=7 * 24 * 3600
            ),
            progress_signal_interval_seconds=_int(
                env, "BERT_PROGRESS_SIGNAL_INTERVAL_SECONDS", 10, minimum=1
            ),
            phase_timeouts_seconds=_phase_timeouts(env),
            checkpoint_interval_seconds=_int(
                env, "BERT_CHECKPOINT_INTERVAL_SECONDS", 600, minimum=1
            ),
            max_classes=max_classes(env),
            log_level=log_level,
            log_format=log_format,
            mlflow_tracking_uri=_tracking_uri(env),
            tensorboard=_bool(env, "BERT_TENSORBOARD", False),
            mlflow_registered_model=(env.get("BERT_MLFLOW_REGISTERED_MODEL") or "").strip() or None,
        )
