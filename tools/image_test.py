"""`make image-test`: build the CPU images from the project's Dockerfiles and run them as the
chart runs them, against a local Temporal dev server.

1. A Docker engine: the running one, else Debian's `docker.io` (installed when missing) with
   `dockerd` started here.
2. Bases: the Dockerfiles' own (`ubuntu:24.04`, `python:3.12-slim`) when Docker Hub answers;
   otherwise one local Debian base built with `mmdebstrap` and passed as a build argument
   (the production bases stay the Dockerfiles' defaults). torch's CPU wheel comes from the
   PyTorch index, or from /opt/wheels served on loopback when that index is unreachable.
3. Builds the trainer's CPU image (`-cpu`: the controller and CPU training) and the
   torch-free inferencer, timing each and recording its size.
4. Runs them like the chart does (uid 10001, read-only root filesystem, /tmp and /cache
   writable, the runs volume mounted, host network to the dev server): a tiny training in
   the trainer container (a 2-layer BERT and a CSV put on the runs volume, trained on CPU),
   its ONNX export, a prediction from the inferencer container (ONNX Runtime, no torch), a
   run without an export refused with the export hint, then, with the trainer stopped, the
   controller container promoting the run and a prediction through the alias.
5. Writes the sizes and build times to docs/benchmarks.md ("Images").

`python -m tools.image_test [--keep] [--no-build]`; exits non-zero on the first failure.
The CUDA images, their wheels and `ct install` need indexes and a cluster this machine may
not reach: the GitHub workflows build and install those (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE = REPO / ".image-test"
TAG = "image-test"
TRAINER = f"bert-finetune-trainer:{TAG}-cpu"
INFERENCER = f"bert-finetune-inferencer:{TAG}"
LOCAL_BASE = "bert-finetune-base:bookworm"
UID = "10001"
BENCHMARKS = REPO / "docs" / "benchmarks.md"
SECTION = "## Images (`make image-test`)"


def say(message: str) -> None:
    print(f"image-test: {message}", flush=True)


def run(*args: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, text=True, **kwargs)  # type: ignore[call-overload]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(1)


def reachable(url: str, timeout: float = 8) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout).close()  # noqa: S310
        return True
    except urllib.error.HTTPError:
        return True  # it answered
    except OSError:
        return False


# --- 1. the engine ---------------------------------------------------------------------------


def engine_up() -> bool:
    return run("docker", "info", check=False, capture_output=True).returncode == 0


def ensure_engine() -> subprocess.Popen | None:
    if shutil.which("docker") and engine_up():
        return None
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    if not shutil.which("dockerd"):
        say("installing Debian's Docker engine (docker.io)")
        run(*sudo, "apt-get", "update", "-qq")
        run(
            *sudo,
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-qq",
            "docker.io",
        )
    STATE.mkdir(exist_ok=True)
    say("starting dockerd")
    log = (STATE / "dockerd.log").open("w")
    daemon = subprocess.Popen([*sudo, "dockerd"], stdout=log, stderr=subprocess.STDOUT)
    wait_for(engine_up, 60, f"dockerd did not start (see {STATE / 'dockerd.log'})")
    return daemon


# --- 2. bases and torch ------------------------------------------------------------------------


def local_base() -> str:
    """A Debian bookworm root file system with Python and tini, imported as an image."""
    inspected = run(
        "docker",
        "image",
        "inspect",
        "-f",
        "{{json .Config.Env}}",
        LOCAL_BASE,
        check=False,
        capture_output=True,
    )
    # A base from before it carried the CA bundle is rebuilt (pip in the builds needs it).
    if inspected.returncode == 0 and "PIP_CERT=" in inspected.stdout:
        return LOCAL_BASE
    if not shutil.which("mmdebstrap"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        run(
            *sudo,
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-qq",
            "mmdebstrap",
        )
    say("Docker Hub unreachable: building a local Debian base with mmdebstrap")
    packages = "python3,python3-venv,python-is-python3,tini,ca-certificates,passwd"
    tarball = STATE / "bookworm.tar"
    # This machine reaches the package index through a TLS proxy whose CA is in the host's
    # bundle only: the local base takes that bundle, and pip inside the builds trusts it.
    # (Under its own name: apt's ca-certificates triggers rebuild the system bundle.)
    host_bundle, bundle = "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/host-ca-bundle.crt"
    run(
        "mmdebstrap",
        "--variant=minbase",
        f"--include={packages}",
        f"--customize-hook=upload {host_bundle} {bundle}",
        "bookworm",
        str(tarball),
    )
    run(
        "docker",
        "import",
        *(f"--change=ENV {name}={bundle}" for name in ("PIP_CERT", "SSL_CERT_FILE")),
        str(tarball),
        LOCAL_BASE,
    )
    tarball.unlink()
    return LOCAL_BASE


def torch_version() -> str:
    """The torch version the Dockerfiles install (their ``TORCH_VERSION`` default)."""
    for line in (REPO / "services/trainer/Dockerfile").read_text().splitlines():
        if line.startswith("ARG TORCH_VERSION="):
            return line.split("=", 1)[1].strip()
    raise SystemExit("services/trainer/Dockerfile has no `ARG TORCH_VERSION=` line")


@contextlib.contextmanager
def torch_index() -> Iterator[str]:
    """The PyTorch CPU index, or /opt/wheels served as a simple index on loopback."""
    if reachable("https://download.pytorch.org/whl/cpu/torch/"):
        yield "https://download.pytorch.org/whl/cpu"
        return
    wheels = sorted(Path("/opt/wheels").glob("torch-*+cpu-*.whl"))
    if not wheels:
        raise SystemExit("no PyTorch index and no CPU torch wheel in /opt/wheels")
    with tempfile.TemporaryDirectory() as root:
        # The image installs torch with this as its only index, as with PyTorch's own (which
        # carries torch's dependencies too): the CPU wheel and its dependencies, fetched here
        # through the package index this machine reaches, one folder per project.
        downloads = Path(root) / ".downloads"
        run(
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--only-binary=:all:",
            "--find-links",
            "/opt/wheels",
            "--dest",
            str(downloads),
            f"torch=={torch_version()}",
        )
        for wheel in downloads.glob("*.whl"):
            project = wheel.name.split("-")[0].lower().replace("_", "-").replace(".", "-")
            (Path(root) / project).mkdir(exist_ok=True)
            (Path(root) / project / wheel.name).symlink_to(wheel)
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "http.server",
                str(port),
                "--bind",
                "127.0.0.1",
                "--directory",
                root,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for(lambda: reachable(f"http://127.0.0.1:{port}/torch/"), 20, "wheel server")
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()


# --- 3. builds -------------------------------------------------------------------------------


def build(tag: str, dockerfile: str, build_args: dict[str, str], hub: bool) -> float:
    args = [f"--build-arg={k}={v}" for k, v in build_args.items()]
    say(f"building {tag}")
    started = time.monotonic()
    # BuildKit fetches the `# syntax=docker/dockerfile:1.7` frontend from Docker Hub; offline
    # the classic builder reads the same Dockerfiles (they use no BuildKit-only instruction).
    # (Debian's docker.io ships no buildx, which BuildKit needs with a newer client.)
    buildx = run("docker", "buildx", "version", check=False, capture_output=True).returncode == 0
    buildkit = "1" if hub and buildx else "0"
    run(
        "docker",
        "build",
        "--network=host",
        "-f",
        dockerfile,
        *args,
        "-t",
        tag,
        str(REPO),
        env={**os.environ, "DOCKER_BUILDKIT": buildkit},
    )
    return time.monotonic() - started


def image_size(tag: str) -> int:
    out = run("docker", "image", "inspect", "-f", "{{.Size}}", tag, capture_output=True).stdout
    return int(out.strip())


def build_images() -> tuple[dict[str, dict[str, float]], str]:
    hub = reachable("https://registry-1.docker.io/v2/")
    trainer_args: dict[str, str] = {}
    inferencer_args: dict[str, str] = {}
    base = "the Dockerfiles' own (ubuntu:24.04, python:3.12-slim)"
    if hub:
        trainer_args["BASE_IMAGE"] = "ubuntu:24.04"
    else:
        base = f"a local Debian bookworm built with mmdebstrap ({local_base()})"
        trainer_args |= {
            "BASE_IMAGE": LOCAL_BASE,
            "PYTHON": "python3.11",
            "PYTHON_VERSION": "3.11.*",
        }
        inferencer_args["PYTHON_IMAGE"] = LOCAL_BASE
    with torch_index() as index:
        trainer_args["TORCH_INDEX_URL"] = index
        results = {}
        for tag, dockerfile, args in (
            (TRAINER, "services/trainer/Dockerfile", trainer_args),
            (INFERENCER, "services/inferencer/Dockerfile", inferencer_args),
        ):
            seconds = build(tag, dockerfile, args, hub)
            results[tag] = {"build_seconds": seconds, "bytes": image_size(tag)}
    return results, base


# --- 4. running them as the chart does ---------------------------------------------------------


class Stack:
    def __init__(self, runs: Path, temporal: str) -> None:
        self.runs = runs
        self.temporal = temporal
        self.containers: list[str] = []

    def start(self, name: str, image: str, role: str, port: int) -> str:
        """`bert-finetune worker ROLE` as the chart runs it: uid 10001, read-only root, the
        writable emptyDirs as tmpfs, the runs volume mounted at BERT_RUNS_DIR."""
        container = f"bert-image-test-{name}"
        run("docker", "rm", "-f", container, check=False, capture_output=True)
        run(
            "docker",
            "run",
            "-d",
            "--name",
            container,
            "--network=host",
            "--user",
            f"{UID}:{UID}",
            "--read-only",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
            "--tmpfs",
            "/tmp:rw,size=512m",
            "--tmpfs",
            f"/cache:rw,size=512m,uid={UID}",
            "-v",
            f"{self.runs}:/data/bert_runs",
            "-e",
            f"TEMPORAL_ADDRESS={self.temporal}",
            "-e",
            f"METRICS_PORT={port}",
            "-e",
            "METRICS_BIND_ADDRESS=127.0.0.1",
            "-e",
            "HF_HUB_OFFLINE=1",
            "-e",
            "BERT_LOCAL_PATH_ROOTS=/data/bert_runs",
            "-e",
            "OMP_NUM_THREADS=1",
            image,
            "worker",
            role,
            capture_output=True,
        )
        self.containers.append(container)

        def ready() -> bool:
            state = run(
                "docker",
                "inspect",
                "-f",
                "{{.State.Running}}",
                container,
                capture_output=True,
                check=False,
            ).stdout.strip()
            if state != "true":
                logs = run(
                    "docker", "logs", "--tail", "30", container, capture_output=True, check=False
                )
                raise RuntimeError(f"{container} exited:\n{logs.stdout}{logs.stderr}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2):  # noqa: S310
                    return True
            except OSError:
                return False

        wait_for(ready, 240, f"{container} never became ready")
        say(f"{container} ready ({image})")
        return container

    def stop(self, container: str) -> None:
        run("docker", "stop", "-t", "60", container, capture_output=True)

    def remove_all(self) -> None:
        for container in self.containers:
            run("docker", "rm", "-f", container, check=False, capture_output=True)


def prepare_runs_volume(runs: Path) -> dict[str, object]:
    """A tiny BERT and a labelled CSV on the runs volume (no Hub access needed)."""
    sys.path.insert(0, str(REPO))
    from tests.tiny import build_tiny_bert, sentiment_rows, write_csv

    build_tiny_bert(runs / "_inputs" / "tiny-bert")
    write_csv(runs / "_inputs" / "train.csv", sentiment_rows(160, seed=1))
    write_csv(runs / "_inputs" / "validation.csv", sentiment_rows(40, seed=2))
    # The workers (uid 10001) write here; no root needed to let them. They read the inputs,
    # which safetensors writes private to their owner (0600).
    runs.chmod(0o777)
    for path in (runs / "_inputs").rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return {
        "experiment_name": "image-test",
        "runs": [
            {
                "model_name": "/data/bert_runs/_inputs/tiny-bert",
                "train_file": "/data/bert_runs/_inputs/train.csv",
                "validation_file": "/data/bert_runs/_inputs/validation.csv",
                "num_epochs": 1,
                "batch_size": 16,
                "use_gpu": False,
            }
        ],
    }


async def exercise(stack: Stack, experiment: dict[str, object], trainer: str) -> dict[str, str]:
    from temporalio.client import WorkflowFailureError

    from bert_finetune import client_ops
    from shared.settings import Settings
    from shared.temporal import connect
    from shared.types import BertExperimentInput

    settings = Settings.from_env({**os.environ, "TEMPORAL_ADDRESS": stack.temporal})
    client = await connect(settings.temporal)
    say("training a tiny BERT in the trainer container")
    handle = await client_ops.start_experiment(
        client,
        BertExperimentInput.model_validate(experiment),
        settings.training_task_queue,
        None,
    )
    output = await handle.result()
    run_id = output.runs[0].run_id
    say(f"trained {run_id}; waiting for its ONNX export")
    exported = await client_ops.export_run(client, run_id, settings.training_task_queue)
    say(client_ops.export_summary(exported))
    result = await client_ops.predict(
        client, run_id, ["good great fun", "awful boring sad"], settings.inference_task_queue
    )
    say(f"prediction from the inferencer container: {result.label_names}")
    # A run without an export: the torch-free image refuses it, naming the fix.
    bare = stack.runs / "image-test-bare"
    shutil.copytree(stack.runs / run_id, bare, symlinks=True)
    shutil.rmtree(bare / "onnx")
    # The copy is ours (root here) with the worker's private modes: let the worker read it.
    for path in [bare, *bare.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        await client_ops.predict(client, "image-test-bare", ["good"], settings.inference_task_queue)
        raise AssertionError("the torch-free inferencer served a run without an export")
    except WorkflowFailureError as err:
        message = client_ops.failure_message(err)
        assert "bert-finetune export image-test-bare" in message, message
        say("a run without an export is refused with the export hint")
    # The controller alone (trainer stopped) runs the promotion.
    stack.stop(trainer)
    promoted = await client_ops.promote(client, run_id, "production", settings.training_task_queue)
    aliased = await client_ops.predict(
        client, "@production", ["love it"], settings.inference_task_queue
    )
    say(f"the controller promoted {promoted.run_id}; @production answers {aliased.label_names}")
    return {"run_id": run_id, "labels": ",".join(result.label_names)}


@contextlib.contextmanager
def temporal_dev_server() -> Iterator[str]:
    temporal = shutil.which("temporal") or str(REPO / ".venv" / "bin" / "temporal")
    port = free_port()
    server = subprocess.Popen(
        [
            temporal,
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--ui-port",
            str(free_port()),
            "--log-level",
            "error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _tcp("127.0.0.1", port), 60, "Temporal dev server did not start")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def _tcp(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


def run_images(keep: bool) -> dict[str, str]:
    runs = STATE / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    runs.mkdir(parents=True)
    experiment = prepare_runs_volume(runs)
    with temporal_dev_server() as address:
        stack = Stack(runs, address)
        try:
            trainer = stack.start("trainer", TRAINER, "trainer", free_port())
            stack.start("controller", TRAINER, "controller", free_port())
            stack.start("inferencer", INFERENCER, "inferencer", free_port())
            return asyncio.run(exercise(stack, experiment, trainer))
        finally:
            if not keep:
                stack.remove_all()


# --- 5. the record -----------------------------------------------------------------------------


# What the images hold, written under the table each time (the table itself is measured).
CONTENTS = """The trainer is the CPU build (torch's CPU wheel); the CUDA images the release builds
carry the CUDA wheels (several GB more). The inferencer carries no torch (nor torch's own
dependencies, which its lock lists for the `-torch` variant): ONNX Runtime, transformers for
the tokenizer files, scipy/scikit-learn/seqeval for promotion gates. The local mmdebstrap base
is about 218 MB, the production base (`python:3.12-slim`) about 125 MB.
"""


def record(results: dict[str, dict[str, float]], base: str, cold: bool) -> None:
    rows = "\n".join(
        f"| `{tag}` | {r['bytes'] / 1e9:.2f} GB | {r['build_seconds'] / 60:.1f} min |"
        for tag, r in results.items()
    )
    cache = (
        "from an empty Docker engine (no image, no build cache: every wheel downloaded)"
        if cold
        else "with the Docker layer cache earlier builds left on the machine (a layer whose "
        "inputs changed is rebuilt; a first build also downloads torch and every wheel)"
    )
    section = (
        f"{SECTION}\n\nBuilt from the project's Dockerfiles by `make image-test` on "
        f"{os.cpu_count()} cores on {time.strftime('%Y-%m-%d')}, base {base}, {cache}. Sizes "
        f"uncompressed, as `docker image inspect` reports them:\n\n"
        f"| image | size | build |\n|---|---|---|\n{rows}\n\n{CONTENTS}"
    )
    text = BENCHMARKS.read_text()
    if SECTION in text:
        start = text.index(SECTION)
        end = text.find("\n## ", start + len(SECTION))
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCHMARKS.write_text(text)
    say(f"recorded in {BENCHMARKS.relative_to(REPO)}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.image_test", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave the containers running")
    parser.add_argument("--no-build", action="store_true", help="reuse the images built before")
    args = parser.parse_args()
    STATE.mkdir(exist_ok=True)
    daemon = ensure_engine()
    try:
        results: dict[str, dict[str, float]] = {}
        base = ""
        cold = not run("docker", "images", "-q", capture_output=True).stdout.strip()
        if not args.no_build:
            results, base = build_images()
            (STATE / "images.json").write_text(json.dumps(results, indent=2))
        outcome = run_images(args.keep)
        say(f"passed: {outcome}")
        if results:
            record(results, base, cold)
        return 0
    finally:
        if daemon is not None:
            daemon.terminate()


if __name__ == "__main__":
    sys.exit(main())
