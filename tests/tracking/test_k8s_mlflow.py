"""k8s-dev/mlflow.yaml: valid Kubernetes objects running the same server command as
`bert-finetune dev --mlflow`, reachable by trainers through its Service name."""

from __future__ import annotations

import fnmatch

import kubernetes_validate
import yaml

from tests.durability.harness import REPO_ROOT

MANIFEST = REPO_ROOT / "k8s-dev" / "mlflow.yaml"


def _objects() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_manifest_objects_are_valid_kubernetes() -> None:
    objects = _objects()
    assert set(objects) == {"PersistentVolumeClaim", "Deployment", "Service"}
    for doc in objects.values():
        kubernetes_validate.validate(doc, "1.33", strict=True)


def test_server_keeps_state_on_the_volume_and_accepts_the_service_host() -> None:
    deployment = _objects()["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in container["command"][2:])
    mount = container["volumeMounts"][0]["mountPath"]
    assert args["backend-store-uri"] == f"sqlite:///{mount}/mlflow.db"
    assert args["artifacts-destination"].startswith(mount)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # SQLite: one writer
    allowed = args["allowed-hosts"].split(",")
    service = _objects()["Service"]
    port = service["spec"]["ports"][0]["port"]
    for host in ("mlflow", f"mlflow:{port}", f"mlflow.bert.svc:{port}", f"localhost:{port}"):
        assert any(fnmatch.fnmatch(host, pattern) for pattern in allowed), host
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
