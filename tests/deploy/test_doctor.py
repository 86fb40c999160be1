"""`bert-finetune doctor` against healthy and broken installs, without a cluster.

The installs are the chart's own rendered objects, turned into the `kubernetes` client's models
(`V1Deployment`, `V1Pod`, ...) with the status a live cluster would report; `collect` reads
them through the real client from a stand-in API server.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from bert_finetune import doctor
from bert_finetune.doctor import FAIL, OK, WARN, Check, Install
from tests.deploy.chartlib import CHART_DIR, NAMESPACE, RELEASE, Render, find, load_yaml

SINGLE_NODE = load_yaml(CHART_DIR / "ci" / "single-node-values.yaml")
API = client.ApiClient()


def as_sent(obj: Any, key: str = "") -> Any:
    """``obj`` as the API server sends it: resource quantities are strings ("1", not 1)."""
    if isinstance(obj, dict):
        if key in ("limits", "requests", "allocatable", "capacity"):
            return {k: str(v) for k, v in obj.items()}
        return {k: as_sent(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [as_sent(v) for v in obj]
    return obj


def model(obj: dict[str, Any], kind: str) -> Any:
    """A dict as the API would send it, deserialized into the client's model."""
    return API.deserialize(json.dumps(as_sent(obj)), kind, "application/json")


def node(
    name: str,
    cpu: str,
    memory: str,
    gpus: int = 0,
    labels: dict[str, str] | None = None,
    tainted: bool = False,
) -> Any:
    allocatable = {"cpu": cpu, "memory": memory, "pods": "29"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec = {"taints": [{"key": "nvidia.com/gpu", "effect": "NoSchedule"}]} if tainted else {}
    return model(
        {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": spec,
            "status": {"allocatable": allocatable, "capacity": allocatable},
        },
        "V1Node",
    )


GPU_NODE = node(
    "gpu-1", "3920m", "14848Mi", gpus=1, labels={"nvidia.com/gpu.present": "true"}, tainted=True
)
CPU_NODE = node("cpu-1", "1930m", "3300Mi")


def ready_pod(deployment: dict[str, Any], index: int, ready: bool = True, **status: Any) -> Any:
    template = copy.deepcopy(deployment["spec"]["template"])
    pod = {
        "metadata": {
            "name": f"{deployment['metadata']['name']}-{index}",
            "namespace": NAMESPACE,
            "labels": template["metadata"]["labels"],
        },
        "spec": template["spec"],
        "status": {
            "phase": "Running",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True" if ready else "False"},
            ],
            **status,
        },
    }
    return model(pod, "V1Pod")


def install_of(
    objects: list[dict[str, Any]],
    *,
    ready: dict[str, int] | None = None,
    claim_phase: str = "Bound",
    nodes: list[Any] | None = None,
    scaled_objects: list[dict[str, Any]] | None = None,
    pods: list[Any] | None = None,
) -> Install:
    """The rendered release as a live cluster shows it: every replica ready unless ``ready``
    says otherwise, the claim in ``claim_phase``, Temporal's frontend Service with an
    endpoint."""
    install = Install(namespace=NAMESPACE, release=RELEASE)
    ready = ready or {}
    generated_pods = []
    for deployment in find(objects, "Deployment"):
        role = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        wanted = deployment["spec"].get("replicas", 1)
        count = ready.get(role, wanted)
        live = copy.deepcopy(deployment)
        live["status"] = {"replicas": wanted, "readyReplicas": count}
        install.deployments.append(model(live, "V1Deployment"))
        generated_pods += [ready_pod(deployment, i, i < count) for i in range(wanted)]
    install.pods = generated_pods if pods is None else pods
    for claim in find(objects, "PersistentVolumeClaim"):
        live = copy.deepcopy(claim)
        live["status"] = {"phase": claim_phase}
        if claim_phase == "Bound":
            live["status"]["accessModes"] = claim["spec"]["accessModes"]
        install.claims.append(model(live, "V1PersistentVolumeClaim"))
    install.config_maps = [
        model(c, "V1ConfigMap")
        for c in find(objects, "ConfigMap")
        if "grafana_dashboard" not in c["metadata"].get("labels", {})
    ]
    install.nodes = [GPU_NODE, CPU_NODE] if nodes is None else nodes
    install.scaled_objects = scaled_objects
    install.services = [
        model({"metadata": {"name": "temporal-frontend", "namespace": NAMESPACE}}, "V1Service")
    ]
    install.endpoint_slices = [
        model(
            {
                "metadata": {
                    "name": "temporal-frontend-abc",
                    "namespace": NAMESPACE,
                    "labels": {"kubernetes.io/service-name": "temporal-frontend"},
                },
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": True}}],
            },
            "V1EndpointSlice",
        )
    ]
    return install


def reachable(host: str, port: int) -> None:
    return None


def unreachable(host: str, port: int) -> None:
    raise OSError(f"[Errno -2] Name or service not known: {host!r}")


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def statuses(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.status for c in checks}


# --- a healthy install --------------------------------------------------------------------------


def test_a_healthy_install_passes_every_check(render: Render) -> None:
    install = install_of(render())
    checks = doctor.run_checks(install, connect=reachable, namespace_exists=lambda a, n: True)
    assert statuses(checks) == {
        "pods/trainer": OK,
        "pods/inferencer": OK,
        "pods/controller": OK,
        "gpu": OK,
        "runs-claim": OK,
        "temporal": OK,
        "temporal-namespace": OK,
        "keda": OK,
    }
    lines: list[str] = []
    assert doctor.report(checks, lines.append) == 0
    assert len(lines) == len(checks) + 1 and lines[-1] == f"all {len(checks)} checks passed"
    assert by_name(checks)["gpu"].detail.startswith("1 node(s) with 1 x nvidia.com/gpu")
    assert by_name(checks)["pods/inferencer"].detail == "2/2 ready"


def test_keda_scaled_to_zero_trainers_and_ready_scaled_objects_are_healthy(
    render: Render,
) -> None:
    values = load_yaml(CHART_DIR / "ci" / "keda-values.yaml")
    objects = render(values)
    scaled = [
        {**so, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
        for so in find(objects, "ScaledObject")
    ]
    install = install_of(objects, scaled_objects=scaled)
    trainer = next(d for d in install.deployments if doctor._role(d) == "trainer")
    trainer.spec.replicas = 0  # what KEDA sets with no work
    checks = by_name(doctor.run_checks(install, connect=reachable))
    assert checks["pods/trainer"].status == OK
    assert "KEDA" in checks["pods/trainer"].detail
    assert checks["keda/trainer"].status == checks["keda/inferencer"].status == OK


# --- broken installs ---------------------------------------------------------------------------


def test_a_trainer_pending_for_a_gpu_says_so(render: Render) -> None:
    objects = render()
    deployment = next(
        d for d in find(objects, "Deployment") if d["metadata"]["name"].endswith("trainer")
    )
    pending = ready_pod(deployment, 0, ready=False)
    pending.status.phase = "Pending"
    pending.status.conditions = [
        client.V1PodCondition(
            type="PodScheduled",
            status="False",
            reason="Unschedulable",
            message="0/2 nodes are available: 1 Insufficient nvidia.com/gpu, 1 node(s) had "
            "untolerated taint {nvidia.com/gpu: }.",
        )
    ]
    install = install_of(objects, ready={"trainer": 0})
    install.pods = [p for p in install.pods if doctor._role(p) != "trainer"] + [pending]
    check = by_name(doctor.check_pods(install))["pods/trainer"]
    assert check.status == FAIL
    assert "0/1 ready" in check.detail and "Insufficient nvidia.com/gpu" in check.detail
    assert "GPU" in check.fix


def test_no_gpu_node_and_nodes_too_small_for_the_trainer_fail_the_gpu_check(
    render: Render,
) -> None:
    no_gpus = install_of(render(), nodes=[CPU_NODE, node("cpu-2", "7910m", "30Gi")])
    check = by_name(doctor.check_gpus(no_gpus))["gpu"]
    assert check.status == FAIL and "device plugin" in check.fix
    # The defect of old: a trainer that asks for the whole 4 vCPU / 16 GiB node.
    whole_node = {"trainer": {"resources": {"requests": {"cpu": "4", "memory": "16Gi"}}}}
    too_big = install_of(render(whole_node))
    check = by_name(doctor.check_gpus(too_big))["gpu"]
    assert check.status == FAIL
    assert "3.92 CPU / 14.5 GiB" in check.detail and "Node sizes" in check.fix
    # GPU nodes the trainer's nodeSelector does not match.
    elsewhere = install_of(render({"gpu": {"nodeSelector": {"pool": "a100"}}}))
    check = by_name(doctor.check_gpus(elsewhere))["gpu"]
    assert check.status == FAIL and "gpu.nodeSelector" in check.fix
    # An untainted GPU node with no toleration needed still counts; a tainted one without
    # the chart's toleration does not.
    no_toleration = install_of(render({"gpu": {"tolerations": []}}))
    assert doctor.check_gpus(no_toleration)[0].status == FAIL
    cpu_trainer = install_of(render({"gpu": {"enabled": False}}))
    check = doctor.check_gpus(cpu_trainer)[0]  # no GPU taint tolerated, and cpu-1 is small
    assert check.status == FAIL and "no node has 3 CPU and 10.0 GiB" in check.detail
    cpu_trainer.nodes.append(node("cpu-2", "7910m", "30Gi"))
    assert doctor.check_gpus(cpu_trainer)[0].status == OK


def test_an_unbound_or_unshareable_runs_claim_fails_with_the_storage_fix(render: Render) -> None:
    pending = install_of(render(), claim_phase="Pending")
    check = by_name(doctor.check_runs_claim(pending))["runs-claim"]
    assert check.status == FAIL
    assert "Pending" in check.detail and "ReadWriteMany" in check.detail
    assert "persistence.storageClass" in check.fix and "singleNode" in check.fix
    rwo = install_of(render({"persistence": {"accessModes": ["ReadWriteOnce"]}}))
    check = by_name(doctor.check_runs_claim(rwo))["runs-claim"]
    assert check.status == FAIL and "cannot mount it" in check.detail
    single = install_of(render(SINGLE_NODE))
    check = by_name(doctor.check_runs_claim(single))["runs-claim"]
    assert check.status == OK and "singleNode" in check.detail
    missing = install_of(render({"persistence": {"existingClaim": "team-runs"}}))
    check = by_name(doctor.check_runs_claim(missing))["runs-claim"]
    assert check.status == FAIL and "'team-runs' does not exist" in check.detail


def test_runs_in_an_object_store_need_no_claim(render: Render) -> None:
    objects = render({"storage": {"uri": "s3://acme-runs/bert", "region": "us-east-1"}})
    install = install_of(objects)
    assert not install.claims
    checks = doctor.run_checks(install, connect=reachable, namespace_exists=lambda a, n: True)
    assert "runs-claim" not in statuses(checks)
    check = by_name(checks)["runs-store"]
    assert check.status == OK and "s3://acme-runs/bert" in check.detail
    assert all(c.status == OK for c in checks), [c.line() for c in checks]
    # A worker left on the old claim (a stale Deployment) is named.
    stale = install_of(objects)
    stale.deployments[0] = install_of(render()).deployments[0]
    check = by_name(doctor.check_runs_claim(stale))["runs-store"]
    assert check.status == FAIL and "mount a runs claim" in check.detail


def test_an_image_that_cannot_be_pulled_points_at_ghcr_visibility(render: Render) -> None:
    objects = render()
    deployment = next(
        d for d in find(objects, "Deployment") if d["metadata"]["name"].endswith("inferencer")
    )
    pulling = ready_pod(
        deployment,
        0,
        ready=False,
        containerStatuses=[
            {
                "name": "inferencer",
                "image": "ghcr.io/bert-finetune/inferencer:0.1.0",
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {
                    "waiting": {
                        "reason": "ImagePullBackOff",
                        "message": 'Back-off pulling image "ghcr.io/Owner/inferencer:0.1.0"',
                    }
                },
            }
        ],
    )
    install = install_of(objects, ready={"inferencer": 0})
    install.pods = [p for p in install.pods if doctor._role(p) != "inferencer"] + [pulling]
    check = by_name(doctor.check_pods(install))["pods/inferencer"]
    assert check.status == FAIL and "ImagePullBackOff" in check.detail
    assert "public" in check.fix and "lower-case" in check.fix


def test_a_running_pod_that_is_not_ready_points_at_its_readyz(render: Render) -> None:
    install = install_of(render(), ready={"controller": 0})
    check = by_name(doctor.check_pods(install))["pods/controller"]
    assert check.status == FAIL and "/readyz" in check.fix


def test_temporal_checks_follow_where_the_workers_connect(render: Render) -> None:
    # From outside the cluster the Service name does not resolve: its endpoints stand in.
    install = install_of(render())
    checks = by_name(doctor.check_temporal(install, connect=unreachable))
    assert checks["temporal"].status == OK and "1 ready endpoint" in checks["temporal"].detail
    assert checks["temporal-namespace"].status == WARN
    assert "--temporal-address localhost:7233" in checks["temporal-namespace"].fix
    install.endpoint_slices[0].endpoints[0].conditions.ready = False
    checks = by_name(doctor.check_temporal(install, connect=unreachable))
    assert checks["temporal"].status == FAIL and "no ready endpoints" in checks["temporal"].detail
    install.services = []
    checks = by_name(doctor.check_temporal(install, connect=unreachable))
    assert checks["temporal"].status == FAIL and "does not exist" in checks["temporal"].detail
    # An address outside the cluster (Temporal Cloud) must answer on TCP from here.
    cloud = install_of(render({"temporal": {"address": "ns.acct.tmprl.cloud:7233"}}))
    checks = by_name(doctor.check_temporal(cloud, connect=unreachable))
    assert checks["temporal"].status == FAIL and "temporal.address" in checks["temporal"].fix
    # Reachable, but the namespace is missing: the fix creates it.
    asked: list[tuple[str, str]] = []

    def missing(address: str, namespace: str) -> bool:
        asked.append((address, namespace))
        return False

    checks = by_name(
        doctor.check_temporal(
            install_of(render()), "localhost:7233", reachable, namespace_exists=missing
        )
    )
    assert asked == [("localhost:7233", "default")]
    assert checks["temporal-namespace"].status == FAIL
    assert (
        "temporal operator namespace create --namespace default" in checks["temporal-namespace"].fix
    )


def test_a_scaled_object_that_is_not_ready_fails_with_its_message(render: Render) -> None:
    objects = render(load_yaml(CHART_DIR / "ci" / "keda-values.yaml"))
    message = 'error parsing temporal metadata: unknown field "tlsServerName"'
    scaled = [
        {
            **so,
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "Failed", "message": message}
                ]
            },
        }
        for so in find(objects, "ScaledObject")
    ]
    checks = by_name(doctor.check_keda(install_of(objects, scaled_objects=scaled)))
    assert checks["keda/trainer"].status == FAIL and message in checks["keda/trainer"].detail
    assert "2.18+" in checks["keda/trainer"].fix


def test_the_report_has_one_line_per_check_with_its_fix_and_fails_on_a_failure(
    render: Render,
) -> None:
    install = install_of(render(), claim_phase="Pending", ready={"trainer": 0})
    checks = doctor.run_checks(install, connect=unreachable)
    lines: list[str] = []
    assert doctor.report(checks, lines.append) == 1
    assert len(lines) == len(checks) + 1
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 2 and all("  ->  " in line for line in failing)
    assert lines[-1] == f"{len(checks) - 2}/{len(checks)} checks passed"


# --- reading a live install ------------------------------------------------------------------


class FakeApiServer:
    """The few API paths `collect` reads, answered from rendered objects."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.requested: list[str] = []
        routes_ = routes
        requested = self.requested

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                requested.append(self.path)
                body = routes_.get(path)
                status = 200 if body is not None else 404
                payload = json.dumps(body if body is not None else {"kind": "Status"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api_server(render: Render) -> Iterator[FakeApiServer]:
    objects = render()
    pods = []
    for deployment in find(objects, "Deployment"):
        pods.append(API.sanitize_for_serialization(ready_pod(deployment, 0)))

    def items(kind: str) -> dict[str, Any]:
        return {"items": as_sent(find(objects, kind))}

    deployments = copy.deepcopy(find(objects, "Deployment"))
    for deployment in deployments:
        deployment["status"] = {"readyReplicas": deployment["spec"].get("replicas", 1)}
    claims = copy.deepcopy(find(objects, "PersistentVolumeClaim"))
    for claim in claims:
        claim["status"] = {"phase": "Bound", "accessModes": ["ReadWriteMany"]}
    ns = f"/api/v1/namespaces/{NAMESPACE}"
    routes = {
        f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments": {"items": as_sent(deployments)},
        f"{ns}/pods": {"items": pods},
        f"{ns}/configmaps": items("ConfigMap"),
        f"{ns}/persistentvolumeclaims": {"items": claims},
        "/api/v1/nodes": {"items": [API.sanitize_for_serialization(GPU_NODE)]},
        f"{ns}/services/temporal-frontend": {
            "metadata": {"name": "temporal-frontend", "namespace": NAMESPACE}
        },
        f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices": {
            "items": [
                {
                    "metadata": {
                        "name": "temporal-frontend-x",
                        "namespace": NAMESPACE,
                        "labels": {"kubernetes.io/service-name": "temporal-frontend"},
                    },
                    "addressType": "IPv4",
                    "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": True}}],
                }
            ]
        },
        # No KEDA: its ScaledObjects path answers 404.
    }
    server = FakeApiServer(routes)
    try:
        yield server
    finally:
        server.close()


def test_collect_reads_the_release_through_the_kubernetes_client(
    api_server: FakeApiServer,
) -> None:
    configuration = client.Configuration()
    configuration.host = api_server.url
    install = doctor.collect(NAMESPACE, RELEASE, client.ApiClient(configuration))
    assert {doctor._role(d) for d in install.deployments} == {
        "trainer",
        "inferencer",
        "controller",
    }
    assert install.scaled_objects is None  # KEDA's CRD absent
    from urllib.parse import unquote

    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert any(selector in unquote(path) for path in api_server.requested if "/pods" in path)
    checks = doctor.run_checks(install, connect=unreachable)
    assert {c.name: c.status for c in checks if c.status != OK} == {"temporal-namespace": WARN}
