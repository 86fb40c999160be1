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


class SettingsError(ValueError):
    """An environment variable has a value the workers cannot use."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


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


@dataclass(frozen=True)
class Settings:
    temporal: TemporalSettings
    runs_dir: Path
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
    graceful_shutdown_seconds: int = 30
    progress_signal_interval_seconds: int = 10
    step_stall_timeout_seconds: int = 1800
    checkpoint_interval_seconds: int = 600
    log_level: str = "INFO"
    log_format: str = "auto"

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
        return cls(
            temporal=TemporalSettings.from_env(env),
            runs_dir=Path(env.get("BERT_RUNS_DIR") or "./bert_runs").expanduser().absolute(),
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
            graceful_shutdown_seconds=_int(env, "WORKER_GRACEFUL_SHUTDOWN_SECONDS", 30),
            progress_signal_interval_seconds=_int(
                env, "BERT_PROGRESS_SIGNAL_INTERVAL_SECONDS", 10, minimum=1
            ),
            step_stall_timeout_seconds=_int(
                env, "BERT_STEP_STALL_TIMEOUT_SECONDS", 1800, minimum=10
            ),
            checkpoint_interval_seconds=_int(
                env, "BERT_CHECKPOINT_INTERVAL_SECONDS", 600, minimum=1
            ),
            log_level=log_level,
            log_format=log_format,
        )
