"""``bert-finetune doctor``: inspect a live install of the chart through the Kubernetes API.

One line per check, each failure with its fix: worker pods ready per role, GPUs allocatable
where trainers schedule (and room for the trainer's requests), the runs claim bound with an
access mode the pods can share (or, with runs in an object store, no claim), Temporal
reachable and its namespace present, KEDA ScaledObjects ready.

The checks are plain functions of API objects (the ``kubernetes`` client's own models,
``V1Pod``, ``V1Node`` ..., and KEDA's ScaledObjects as the dicts ``CustomObjectsApi``
returns), so they are tested against healthy and broken installs without a cluster
(tests/deploy/test_doctor.py); ``collect`` is the only part that calls the API.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

ROLES = ("trainer", "inferencer", "controller")
CHART = "bert-finetune"
RUNS_VOLUME = "runs"  # the pod volume name of the runs claim in the chart's Deployments

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and the fix."""

    name: str
    status: str  # OK, WARN or FAIL
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4}  {self.name:<22} {self.detail}"
        return f"{text}  ->  {self.fix}" if self.fix and self.status != OK else text


@dataclass
class Install:
    """What ``collect`` reads of one release (objects of the ``kubernetes`` client)."""

    namespace: str
    release: str
    deployments: list[Any] = field(default_factory=list)  # V1Deployment
    pods: list[Any] = field(default_factory=list)  # V1Pod
    nodes: list[Any] = field(default_factory=list)  # V1Node
    claims: list[Any] = field(default_factory=list)  # V1PersistentVolumeClaim
    config_maps: list[Any] = field(default_factory=list)  # V1ConfigMap
    scaled_objects: list[dict[str, Any]] | None = None  # None: KEDA not installed
    services: list[Any] = field(default_factory=list)  # V1Service, for Temporal's frontend
    endpoint_slices: list[Any] = field(default_factory=list)  # V1EndpointSlice


# --- quantities -----------------------------------------------------------------------------

_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "m": 1e-3,
}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("3", "3920m", "14Gi") as a number (cores, bytes)."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f} GiB"


# --- helpers on API objects -------------------------------------------------------------------


def _role(obj: Any) -> str | None:
    labels = obj.metadata.labels or {}
    return labels.get("app.kubernetes.io/component")


def _worker_container(spec: Any, role: str) -> Any:
    for container in spec.containers:
        if container.name == role:
            return container
    return spec.containers[0]


def _pod_ready(pod: Any) -> bool:
    for condition in (pod.status and pod.status.conditions) or []:
        if condition.type == "Ready":
            return condition.status == "True"
    return False


def _why_not_ready(pod: Any) -> tuple[str, str]:
    """The most telling reason a pod is not ready, and its fix."""
    status = pod.status
    name = pod.metadata.name
    for condition in (status and status.conditions) or []:
        if condition.type == "PodScheduled" and condition.status == "False":
            message = (condition.message or condition.reason or "").strip()
            fix = "see Node sizes in docs/deploy.md"
            if "nvidia.com/gpu" in message or "gpu" in message.lower():
                fix = "no node with a free GPU: check the GPU pool and its device plugin"
            elif "Insufficient cpu" in message or "Insufficient memory" in message:
                fix = "no node has room for the requests: larger nodes or lower *.resources"
            elif "persistentvolumeclaim" in message.lower():
                fix = "the runs claim is not bound (see runs-claim)"
            elif "affinity" in message.lower():
                fix = "singleNode: every runs-volume pod must fit on one node (docs/deploy.md)"
            return f"{name} Pending: {message[:160]}", fix
    statuses = list((status and status.init_container_statuses) or []) + list(
        (status and status.container_statuses) or []
    )
    for container in statuses:
        waiting = container.state and container.state.waiting
        if waiting and waiting.reason:
            reason = waiting.reason
            message = (waiting.message or "").strip()[:160]
            if reason in ("ImagePullBackOff", "ErrImagePull", "InvalidImageName"):
                return f"{name} {reason}: {message}", (
                    "the image does not exist or is private: check the tag, make new GHCR "
                    "packages public (or set imagePullSecrets), and lower-case the owner"
                )
            if reason == "CrashLoopBackOff":
                return f"{name} CrashLoopBackOff ({container.name})", (
                    f"kubectl -n {pod.metadata.namespace} logs {name} -c {container.name} "
                    "--previous"
                )
            return (
                f"{name} {reason}: {message}",
                f"kubectl -n {pod.metadata.namespace} describe pod {name}",
            )
    return f"{name} running, not ready", (
        f"its /readyz says why: kubectl -n {pod.metadata.namespace} port-forward pod/{name} "
        "9464-9466 and curl it (Temporal unreachable, namespace missing, no GPU)"
    )


def _keda_managed(install: Install, role: str) -> bool:
    return any(
        (so.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/component") == role
        for so in install.scaled_objects or []
    )


# --- checks -------------------------------------------------------------------------------------


def check_pods(install: Install) -> list[Check]:
    """Each worker Deployment has its replicas ready (zero is fine when KEDA scales it)."""
    checks = []
    by_role = {_role(d): d for d in install.deployments}
    for role in ROLES:
        name = f"pods/{role}"
        deployment = by_role.get(role)
        if deployment is None:
            if role == "controller":
                checks.append(
                    Check(
                        name,
                        WARN,
                        "no controller Deployment (controller.enabled=false)",
                        "trainers must run for experiments, sweeps and promotions to move",
                    )
                )
            else:
                checks.append(
                    Check(
                        name,
                        FAIL,
                        f"no {role} Deployment in release {install.release!r}",
                        f"helm -n {install.namespace} status {install.release}",
                    )
                )
            continue
        wanted = deployment.spec.replicas if deployment.spec.replicas is not None else 1
        ready = (deployment.status and deployment.status.ready_replicas) or 0
        if wanted == 0:
            keda = " (KEDA: wakes on backlog)" if _keda_managed(install, role) else ""
            checks.append(Check(name, OK, f"scaled to 0{keda}"))
            continue
        if ready >= wanted:
            checks.append(Check(name, OK, f"{ready}/{wanted} ready"))
            continue
        pods = [p for p in install.pods if _role(p) == role and not _pod_ready(p)]
        detail, fix = (
            _why_not_ready(pods[0]) if pods else ("no pod yet", "kubectl describe deployment")
        )
        checks.append(Check(name, FAIL, f"{ready}/{wanted} ready; {detail}", fix))
    return checks


def _tolerates(tolerations: Iterable[Any], taint: Any) -> bool:
    if taint.effect not in ("NoSchedule", "NoExecute"):
        return True
    for toleration in tolerations:
        if toleration.effect and toleration.effect != taint.effect:
            continue
        if toleration.operator == "Exists" and (not toleration.key or toleration.key == taint.key):
            return True
        if toleration.key == taint.key and (toleration.value or "") == (taint.value or ""):
            return True
    return False


def _eligible(node: Any, pod_spec: Any) -> bool:
    labels = node.metadata.labels or {}
    if any(labels.get(k) != v for k, v in (pod_spec.node_selector or {}).items()):
        return False
    if node.spec and node.spec.unschedulable:
        return False
    taints = (node.spec and node.spec.taints) or []
    return all(_tolerates(pod_spec.tolerations or [], taint) for taint in taints)


def check_gpus(install: Install) -> list[Check]:
    """Nodes where trainers may schedule have the GPUs one trainer asks for, and room for its
    CPU and memory requests."""
    trainer = next((d for d in install.deployments if _role(d) == "trainer"), None)
    if trainer is None:
        return []
    spec = trainer.spec.template.spec
    container = _worker_container(spec, "trainer")
    resources = container.resources
    limits = (resources and resources.limits) or {}
    requests = (resources and resources.requests) or {}
    gpu_name = next((k for k in limits if "gpu" in k), None)
    cpu = quantity(requests.get("cpu", 0))
    memory = quantity(requests.get("memory", 0))
    eligible = [n for n in install.nodes if _eligible(n, spec)]
    if gpu_name is None:
        detail = "CPU trainer (gpu.enabled=false)"
        fits = [
            n
            for n in eligible
            if quantity(n.status.allocatable.get("cpu", 0)) >= cpu
            and quantity(n.status.allocatable.get("memory", 0)) >= memory
        ]
        if fits:
            return [Check("gpu", OK, detail)]
        return [
            Check(
                "gpu",
                FAIL,
                f"{detail}: no node has {cpu:g} CPU and {_gib(memory)} allocatable",
                "larger nodes, or lower trainer.resources.requests",
            )
        ]
    wanted = quantity(limits[gpu_name])
    selector = spec.node_selector or {}
    where = f" matching nodeSelector {selector}" if selector else ""
    with_gpus = [
        n for n in eligible if quantity((n.status.allocatable or {}).get(gpu_name, 0)) >= wanted
    ]
    if not with_gpus:
        any_gpu = [
            n for n in install.nodes if quantity((n.status.allocatable or {}).get(gpu_name, 0)) > 0
        ]
        if any_gpu and not eligible:
            fix = "no node matches the trainer's nodeSelector/tolerations: fix gpu.nodeSelector"
        elif any_gpu:
            fix = (
                f"the GPU nodes{where} do not match or have fewer than {wanted:g}: check "
                "gpu.nodeSelector, gpu.tolerations, gpu.count"
            )
        else:
            fix = (
                f"no node advertises {gpu_name}: install the NVIDIA device plugin (GPU operator; "
                "GKE and EKS GPU node pools ship it), or wait for the autoscaler to add a GPU node"
            )
        return [
            Check(
                "gpu",
                FAIL,
                f"no schedulable node{where} has {wanted:g} x {gpu_name} allocatable",
                fix,
            )
        ]
    roomy = [
        n
        for n in with_gpus
        if quantity(n.status.allocatable.get("cpu", 0)) >= cpu
        and quantity(n.status.allocatable.get("memory", 0)) >= memory
    ]
    if not roomy:
        biggest = max(with_gpus, key=lambda n: quantity(n.status.allocatable.get("memory", 0)))
        alloc = biggest.status.allocatable
        return [
            Check(
                "gpu",
                FAIL,
                f"GPU nodes have {gpu_name} but the largest allocatable is "
                f"{quantity(alloc.get('cpu', 0)):g} CPU / "
                f"{_gib(quantity(alloc.get('memory', 0)))}, below the trainer's requests "
                f"({cpu:g} CPU, {_gib(memory)})",
                "lower trainer.resources.requests (docs/deploy.md, Node sizes) or use larger "
                "GPU nodes",
            )
        ]
    names = ", ".join(sorted(n.metadata.name for n in roomy)[:3])
    return [
        Check(
            "gpu",
            OK,
            f"{len(roomy)} node(s) with {wanted:g} x {gpu_name} and room for a trainer ({names})",
        )
    ]


def _claim_name(install: Install) -> str | None:
    for deployment in install.deployments:
        for volume in deployment.spec.template.spec.volumes or []:
            if volume.name == RUNS_VOLUME and volume.persistent_volume_claim:
                return volume.persistent_volume_claim.claim_name
    return None


def _single_node(install: Install) -> bool:
    """The chart's singleNode mode: runs-volume pods carry a required pod affinity per host."""
    for deployment in install.deployments:
        affinity = deployment.spec.template.spec.affinity
        terms = (
            affinity
            and affinity.pod_affinity
            and affinity.pod_affinity.required_during_scheduling_ignored_during_execution
        ) or []
        if any(t.topology_key == "kubernetes.io/hostname" for t in terms):
            return True
    return False


def check_runs_claim(install: Install) -> list[Check]:
    """The runs claim exists, is bound, and its access mode lets every worker pod mount it;
    with runs in an object store (the chart's ``storage.uri``) there is no claim to check."""
    uri = _env(install).get("BERT_RUNS_URI")
    if uri:
        return [check_runs_store(install, uri)]
    name = _claim_name(install)
    if name is None:
        return [
            Check(
                "runs-claim",
                FAIL,
                "no worker mounts a runs claim",
                "is this a bert-finetune release?",
            )
        ]
    claim = next((c for c in install.claims if c.metadata.name == name), None)
    if claim is None:
        return [
            Check(
                "runs-claim",
                FAIL,
                f"claim {name!r} does not exist",
                "create it (persistence.existingClaim) or unset existingClaim",
            )
        ]
    phase = claim.status and claim.status.phase
    modes = list((claim.status and claim.status.access_modes) or claim.spec.access_modes or [])
    storage_class = claim.spec.storage_class_name or "(cluster default)"
    if phase != "Bound":
        return [
            Check(
                "runs-claim",
                FAIL,
                f"{name} is {phase or 'unknown'} (class {storage_class}, asks {', '.join(modes)})",
                "the class cannot provide this access mode: set persistence.storageClass to an "
                "RWX class (efs-sc, standard-rwx, azurefile-csi, NFS) or use "
                "persistence.mode=singleNode; "
                f"kubectl -n {install.namespace} describe pvc {name}",
            )
        ]
    if "ReadWriteMany" in modes:
        return [Check("runs-claim", OK, f"{name} Bound, ReadWriteMany ({storage_class})")]
    if _single_node(install):
        return [
            Check("runs-claim", OK, f"{name} Bound, {', '.join(modes)} with singleNode affinity")
        ]
    return [
        Check(
            "runs-claim",
            FAIL,
            f"{name} Bound but {', '.join(modes)}: pods on other nodes cannot mount it",
            "use an RWX class, or persistence.mode=singleNode",
        )
    ]


def check_runs_store(install: Install, uri: str) -> Check:
    """Object storage: every worker mounts its own cache, never a claim (the bucket's access
    is each worker's own start-up check, seen here as pods not ready)."""
    shared = [
        deployment.metadata.name
        for deployment in install.deployments
        for volume in deployment.spec.template.spec.volumes or []
        if volume.name == RUNS_VOLUME and volume.persistent_volume_claim
    ]
    if shared:
        return Check(
            "runs-store",
            FAIL,
            f"runs in {uri}, but {', '.join(sorted(shared))} mount a runs claim",
            "upgrade the release with the chart that set storage.uri",
        )
    endpoint = _env(install).get("AWS_ENDPOINT_URL_S3")
    where = f" at {endpoint}" if endpoint else ""
    return Check("runs-store", OK, f"runs in {uri}{where}; each worker caches in its own emptyDir")


def _env(install: Install) -> dict[str, str]:
    """The workers' shared environment (the chart's env ConfigMap)."""
    for config_map in install.config_maps:
        data = config_map.data or {}
        if "TEMPORAL_ADDRESS" in data:
            return dict(data)
    return {}


def tcp_connect(host: str, port: int, timeout: float = 3.0) -> None:
    socket.create_connection((host, port), timeout=timeout).close()


def _service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """(service, namespace) when ``host`` is a cluster Service name."""
    labels = host.split(".")
    if len(labels) == 1:
        return labels[0], namespace
    if len(labels) >= 3 and labels[2] == "svc":
        return labels[0], labels[1]
    return None


def check_temporal(
    install: Install,
    address: str | None = None,
    connect: Callable[[str, int], None] = tcp_connect,
    namespace_exists: Callable[[str, str], bool | None] | None = None,
) -> list[Check]:
    """The frontend the workers use answers on TCP (from here, or through its Service's ready
    endpoints when its cluster name does not resolve here), and the Temporal namespace
    exists (``namespace_exists(address, namespace)``; None: could not tell)."""
    env = _env(install)
    configured = env.get("TEMPORAL_ADDRESS", "")
    target = address or configured
    namespace = env.get("TEMPORAL_NAMESPACE", "default")
    if not target:
        return [
            Check(
                "temporal",
                FAIL,
                "no TEMPORAL_ADDRESS in the release's ConfigMap",
                "set temporal.address",
            )
        ]
    host, _, port_text = target.rpartition(":")
    port = int(port_text)
    checks = []
    try:
        connect(host, port)
        reached = True
        checks.append(Check("temporal", OK, f"{target} accepts TCP connections"))
    except OSError as err:
        reached = False
        service = _service_of(host, install.namespace) if not address else None
        if service is None:
            return [
                Check(
                    "temporal",
                    FAIL,
                    f"{target}: {err}",
                    "check temporal.address and the network path (NetworkPolicy, firewall, "
                    "TLS port)",
                )
            ]
        name, svc_namespace = service
        found = next(
            (
                s
                for s in install.services
                if s.metadata.name == name and s.metadata.namespace == svc_namespace
            ),
            None,
        )
        if found is None:
            return [
                Check(
                    "temporal",
                    FAIL,
                    f"Service {svc_namespace}/{name} does not exist",
                    "install Temporal (docs/deploy.md section 3) or fix temporal.address / "
                    "temporal.releaseName",
                )
            ]
        ready = [
            e
            for s in install.endpoint_slices
            if (s.metadata.labels or {}).get("kubernetes.io/service-name") == name
            and s.metadata.namespace == svc_namespace
            for e in s.endpoints or []
            if e.conditions is None or e.conditions.ready is not False
        ]
        if not ready:
            return [
                Check(
                    "temporal",
                    FAIL,
                    f"Service {svc_namespace}/{name} has no ready endpoints",
                    f"kubectl -n {svc_namespace} get pods: the Temporal frontend is not running",
                )
            ]
        checks.append(
            Check(
                "temporal",
                OK,
                f"{target} not reachable from here; its Service has {len(ready)} ready endpoint(s)",
            )
        )
    if namespace_exists is None or not reached:
        checks.append(
            Check(
                "temporal-namespace",
                WARN,
                f"{namespace!r} not checked from here",
                f"kubectl -n {install.namespace} port-forward svc/<frontend> 7233 and rerun with "
                "--temporal-address localhost:7233 (or read the workers' /readyz)",
            )
        )
        return checks
    exists = namespace_exists(target, namespace)
    if exists:
        checks.append(Check("temporal-namespace", OK, f"{namespace!r} exists"))
    elif exists is None:
        checks.append(
            Check(
                "temporal-namespace",
                WARN,
                f"{namespace!r}: Temporal did not answer",
                "TLS or API key settings (TEMPORAL_TLS*, TEMPORAL_API_KEY) of this shell",
            )
        )
    else:
        checks.append(
            Check(
                "temporal-namespace",
                FAIL,
                f"{namespace!r} does not exist (workers wait, not ready)",
                f"temporal operator namespace create --namespace {namespace}, or "
                "temporal.createNamespace.enabled=true",
            )
        )
    return checks


def check_keda(install: Install) -> list[Check]:
    """Each ScaledObject of the release is Ready (its triggers parse and its scalers answer)."""
    if install.scaled_objects is None:
        return [Check("keda", OK, "KEDA not installed; no ScaledObjects expected")]
    if not install.scaled_objects:
        return [Check("keda", OK, "no ScaledObjects in this release")]
    checks = []
    for scaled in install.scaled_objects:
        name = scaled["metadata"]["name"]
        role = (scaled["metadata"].get("labels") or {}).get("app.kubernetes.io/component", name)
        conditions = {c.get("type"): c for c in scaled.get("status", {}).get("conditions") or []}
        ready = conditions.get("Ready", {})
        if ready.get("status") == "True":
            active = conditions.get("Active", {}).get("status") == "True"
            checks.append(Check(f"keda/{role}", OK, "Ready" + (", active" if active else ", idle")))
            continue
        message = ready.get("message") or ready.get("reason") or "no Ready condition yet"
        checks.append(
            Check(
                f"keda/{role}",
                FAIL,
                f"{name} not Ready: {message[:200]}",
                f"kubectl -n {install.namespace} describe scaledobject {name}; KEDA 2.17+ for the "
                "Temporal scaler, 2.18+ with tlsServerName, 2.19+ with an API key and a CA, "
                "Prometheus reachable at trainer.keda.prometheusServerAddress",
            )
        )
    return checks


def run_checks(
    install: Install,
    address: str | None = None,
    connect: Callable[[str, int], None] = tcp_connect,
    namespace_exists: Callable[[str, str], bool | None] | None = None,
) -> list[Check]:
    return [
        *check_pods(install),
        *check_gpus(install),
        *check_runs_claim(install),
        *check_temporal(install, address, connect, namespace_exists),
        *check_keda(install),
    ]


# --- reading a live install -------------------------------------------------------------------


def collect(namespace: str, release: str, api_client: Any) -> Install:
    """Read the release's objects (and the nodes, and Temporal's Services) from the API."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name={CHART}"
    install = Install(namespace=namespace, release=release)
    install.deployments = apps.list_namespaced_deployment(namespace, label_selector=selector).items
    install.pods = core.list_namespaced_pod(namespace, label_selector=selector).items
    install.config_maps = core.list_namespaced_config_map(namespace, label_selector=selector).items
    install.claims = core.list_namespaced_persistent_volume_claim(namespace).items
    try:
        install.nodes = core.list_node().items
    except ApiException as err:
        if err.status != 403:
            raise
    try:
        found: Any = client.CustomObjectsApi(api_client).list_namespaced_custom_object(
            "keda.sh", "v1alpha1", namespace, "scaledobjects", label_selector=selector
        )
        install.scaled_objects = found["items"]
    except ApiException as err:
        if err.status != 404:
            raise
        install.scaled_objects = None
    service = _service_of(_env(install).get("TEMPORAL_ADDRESS", ":").rpartition(":")[0], namespace)
    if service is not None:
        name, svc_namespace = service
        try:
            install.services = [core.read_namespaced_service(name, svc_namespace)]
            install.endpoint_slices = (
                client.DiscoveryV1Api(api_client)
                .list_namespaced_endpoint_slice(
                    svc_namespace, label_selector=f"kubernetes.io/service-name={name}"
                )
                .items
            )
        except ApiException as err:
            if err.status not in (403, 404):
                raise
    return install


def temporal_namespace_exists(address: str, namespace: str) -> bool | None:
    """Ask Temporal at ``address`` (with this shell's TEMPORAL_TLS* / API key settings)."""
    import asyncio
    import os
    from datetime import timedelta

    from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest
    from temporalio.service import RPCError, RPCStatusCode

    from shared.settings import Settings
    from shared.temporal import connect

    settings = Settings.from_env(
        {**os.environ, "TEMPORAL_ADDRESS": address, "TEMPORAL_NAMESPACE": namespace}
    )

    async def ask() -> bool | None:
        try:
            client = await asyncio.wait_for(connect(settings.temporal), 10)
            await client.workflow_service.describe_namespace(
                DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=10)
            )
        except RPCError as err:
            return False if err.status == RPCStatusCode.NOT_FOUND else None
        except Exception:
            return None
        return True

    return asyncio.run(ask())


def report(checks: list[Check], write: Callable[[str], Any]) -> int:
    for check in checks:
        write(check.line())
    failed = [c for c in checks if c.status == FAIL]
    write(
        f"{len(checks) - len(failed)}/{len(checks)} checks passed"
        if failed
        else f"all {len(checks)} checks passed"
    )
    return 1 if failed else 0


def load_api_client(context: str | None) -> tuple[Any, str]:
    """The API client of the kubeconfig (or the in-cluster service account), and the
    namespace of its context."""
    from kubernetes import client, config

    try:
        config.load_kube_config(context=context)
        _, active = config.list_kube_config_contexts()
        if context:
            active = next(c for c in config.list_kube_config_contexts()[0] if c["name"] == context)
        namespace = active.get("context", {}).get("namespace", "default")
    except config.ConfigException as no_kubeconfig:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            raise no_kubeconfig from None
        namespace = "default"
    return client.ApiClient(), namespace
