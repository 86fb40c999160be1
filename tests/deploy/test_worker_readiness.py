"""Readiness conditions the chart relies on, checked without a cluster: a trainer that cannot
see the GPUs its pod asked for stays alive and not ready with a one-line reason, and the SDK's
``namespace`` label never clashes with the Kubernetes one."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from services.trainer.worker import EXPECTED_GPUS_ENV, missing_gpus
from shared.health import WorkerHealth, rename_sdk_namespace_label
from tests.deploy.chartlib import Render, only
from tests.helpers.binaries import bert_finetune
from tests.helpers.ports import free_port
from tests.helpers.processes import WorkerProcess


def test_a_trainer_that_sees_its_gpus_is_not_blocked() -> None:
    assert missing_gpus(0, lambda: (0, None)) is None  # gpu.enabled=false: nothing asked
    assert missing_gpus(1, lambda: (1, "12.8")) is None
    assert missing_gpus(2, lambda: (4, "13.0")) is None


@pytest.mark.parametrize(
    ("probe", "expected_words"),
    [
        ((0, None), ["CPU build", "-cu128", "gpu.enabled=false"]),
        ((0, "13.0"), ["CUDA 13.0", "sees 0", "driver", "-cu128 needs driver 570+"]),
        ((1, "12.8"), ["asks for 2 GPU(s)", "sees 1"]),
    ],
)
def test_missing_gpus_say_why_in_one_line(probe: tuple, expected_words: list[str]) -> None:
    reason = missing_gpus(2 if probe[0] == 1 else 1, lambda: probe)
    assert reason is not None and "\n" not in reason
    assert EXPECTED_GPUS_ENV in reason
    for words in expected_words:
        assert words in reason


def test_a_blocked_worker_is_alive_but_not_ready_whatever_temporal_says() -> None:
    health = WorkerHealth()
    health.set_temporal_ok(True)
    health.set_worker_running(True)
    assert health.ready() == (True, "ok")
    health.block("no GPU")
    assert health.ready() == (False, "no GPU")
    assert health.alive() == (True, "ok")


def test_the_chart_tells_a_gpu_trainer_how_many_gpus_it_was_given(render: Render) -> None:
    def env(values: dict) -> dict[str, str]:
        deployment = only(render(values), "Deployment", "trainer")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {v["name"]: v.get("value") for v in container["env"]}

    assert env({})[EXPECTED_GPUS_ENV] == "1"
    assert env({"gpu": {"count": 4}})[EXPECTED_GPUS_ENV] == "4"
    assert EXPECTED_GPUS_ENV not in env({"gpu": {"enabled": False}})
    for worker in ("inferencer", "controller"):
        deployment = only(render({}), "Deployment", worker)
        assert EXPECTED_GPUS_ENV not in str(deployment)


def test_sdk_namespace_label_is_served_as_temporal_namespace() -> None:
    sdk = (
        b"# HELP temporal_num_pollers pollers\n"
        b"# TYPE temporal_num_pollers gauge\n"
        b'temporal_num_pollers{namespace="default",poller_type="activity_task",'
        b'task_queue="q"} 2\n'
        b'temporal_request{operation="Poll",namespace="ml-team",service_name="x"} 1\n'
        b'temporal_worker_start{task_queue="has namespace=\\"in it\\""} 1\n'
        b"temporal_plain 3\n"
    )
    served = rename_sdk_namespace_label(sdk).decode()
    assert 'temporal_num_pollers{temporal_namespace="default",poller_type=' in served
    assert 'temporal_request{operation="Poll",temporal_namespace="ml-team",' in served
    assert 'task_queue="has namespace=\\"in it\\""' in served  # values are left alone
    assert "temporal_plain 3" in served and "# HELP temporal_num_pollers" in served
    assert ' namespace="' not in served and '{namespace="' not in served


@pytest.mark.slow
def test_a_gpu_trainer_without_a_gpu_stays_alive_and_not_ready(
    render: Render, tmp_path: Path
) -> None:
    """The real worker process, with the chart's GPU environment, on this GPU-less machine:
    /readyz is 503 with the reason, /healthz 200, and it never connects to Temporal."""
    import torch

    if torch.cuda.device_count() > 0:
        pytest.skip("this machine has a GPU")
    objects = render({})
    deployment = only(objects, "Deployment", "trainer")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = dict(only(objects, "ConfigMap")["data"])
    env |= {v["name"]: v["value"] for v in container["env"] if "value" in v}
    env |= {
        "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",  # nothing listens: it must not try
        "BERT_RUNS_DIR": str(tmp_path / "runs"),
        "HF_HOME": str(tmp_path / "cache"),
        "METRICS_BIND_ADDRESS": "127.0.0.1",
        "LOG_FORMAT": "json",
    }
    process = WorkerProcess.with_env(
        "trainer",
        {**os.environ, **env},
        tmp_path / "trainer.log",
        command=[bert_finetune(), *container["args"]],
    )
    try:
        body = ""
        for _ in range(240):
            process.assert_running()
            try:
                with urllib.request.urlopen(f"{process.base_url}/readyz", timeout=2):  # noqa: S310
                    pytest.fail("a trainer without its GPU became ready")
            except urllib.error.HTTPError as err:
                body = err.read().decode()
                if "GPU" in body:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert "asks for 1 GPU(s)" in body and body.count("\n") == 1, body
        with urllib.request.urlopen(f"{process.base_url}/healthz", timeout=2) as alive:  # noqa: S310
            assert alive.status == 200
        log = (tmp_path / "trainer.log").read_text()
        assert "worker.not_ready" in log and "temporal.connect_failed" not in log
    finally:
        process.signal(signal.SIGTERM)
        assert process.terminate(timeout=60) == 0
