"""A real S3 server for tests: moto's standalone server in its own process, on a free port.

moto speaks the S3 protocol over HTTP and honours conditional writes (``If-None-Match: *``,
``If-Match``), so the runs store is tested through the same client, requests and failure
answers as against AWS S3 or MinIO. Each test gets its own bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.temporal import free_loopback_port

STARTUP_SECONDS = 60.0


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables a worker needs to reach it."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its ``s3://`` runs URI with a prefix."""
        import boto3  # type: ignore[import-untyped]

        name = f"runs-{uuid.uuid4().hex[:12]}"
        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket=name)
        return f"s3://{name}/team/runs"


@contextmanager
def moto_server(log_path: Path) -> Iterator[S3Server]:
    """``moto_server`` listening on a free loopback port until the block ends."""
    port = free_loopback_port()
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "moto.server"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"},
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log_path}") from None
                time.sleep(0.1)
        yield S3Server(endpoint)
    finally:
        process.kill()
        process.wait(timeout=10)
