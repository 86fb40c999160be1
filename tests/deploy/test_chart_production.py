"""What a real cluster needs from the chart: autoscaling on work, the controller, storage modes,
network policy, the namespace hook, alerts, images. Rendered by the real Helm engine;
custom resources validated against the upstream CRDs (tests/deploy/crds)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chartlib import CHART_DIR, NAMESPACE, RELEASE, Render, find, load_yaml, only
from tests.deploy.crds import validate_custom_resource
from tests.deploy.test_chart import KUBE_VERSION, WORKERS, container, env_of, pod_spec

KEDA = load_yaml(CHART_DIR / "ci" / "keda-values.yaml")
SINGLE_NODE = load_yaml(CHART_DIR / "ci" / "single-node-values.yaml")
SCALE_TO_ZERO = {
    "trainer": {"keda": {"enabled": True, "prometheusServerAddress": "http://prom:9090"}}
}


def refused(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmValuesError)) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(err.value)


def scaled_object(objects: list[dict], component: str) -> dict:
    return only(objects, "ScaledObject", component)


# --- KEDA and the controller ----------------------------------------------------------------


def test_keda_scales_each_worker_on_its_own_task_queue_backlog(render: Render) -> None:
    objects = render(KEDA)
    env = only(objects, "ConfigMap")["data"]
    expected = {
        "trainer": ("bert-finetune-task-queue", "activity"),
        "inferencer": ("bert-inference-task-queue", "workflow,activity"),
    }
    for component, (queue, queue_types) in expected.items():
        scaled = scaled_object(objects, component)
        validate_custom_resource(scaled)
        deployment = only(objects, "Deployment", component)
        assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
        temporal = next(t for t in scaled["spec"]["triggers"] if t["type"] == "temporal")
        assert temporal["metadata"]["endpoint"] == env["TEMPORAL_ADDRESS"]
        assert temporal["metadata"]["namespace"] == env["TEMPORAL_NAMESPACE"]
        assert temporal["metadata"]["taskQueue"] == queue
        assert temporal["metadata"]["queueTypes"] == queue_types
        assert "authenticationRef" not in temporal  # plain Temporal needs none
    trainer = scaled_object(objects, "trainer")
    assert trainer["spec"]["minReplicaCount"] == 0
    in_flight = next(t for t in trainer["spec"]["triggers"] if t["type"] == "prometheus")
    assert in_flight["name"] == "in_flight"
    assert in_flight["metadata"]["query"] == (
        f'sum(bert_training_runs_in_flight{{namespace="{NAMESPACE}"}}) + '
        f'(sum(bert_training_exports_in_flight{{namespace="{NAMESPACE}"}}) or vector(0))'
    )
    assert in_flight["metadata"]["threshold"] == "1"  # trainer.maxConcurrentActivities
    assert not find(objects, "HorizontalPodAutoscaler")


def desired_trainers(scaled: dict, metrics: dict[str, float]) -> int:
    """What the HPA asks for from the ScaledObject's metrics, KEDA's way: with
    scalingModifiers, one composite metric (the formula over the named triggers' values)
    against its AverageValue target; without, the largest of the triggers' own ratios."""
    import math

    modifiers = scaled["spec"].get("advanced", {}).get("scalingModifiers")
    if modifiers:
        assert modifiers["metricType"] == "AverageValue"
        # expr-lang's + and / on numbers are Python's (/ is float division in both).
        value = eval(modifiers["formula"], {"__builtins__": {}}, dict(metrics))  # noqa: S307
        return math.ceil(value / float(modifiers["target"]))
    targets = {
        t.get("name", t["type"]): float(
            t["metadata"].get("targetQueueSize") or t["metadata"]["threshold"]
        )
        for t in scaled["spec"]["triggers"]
    }
    return max(math.ceil(metrics[name] / target) for name, target in targets.items())


@pytest.mark.parametrize(
    ("waiting", "in_flight", "trainers"),
    [(0, 0, 0), (1, 0, 1), (0, 1, 1), (1, 1, 2), (3, 2, 5), (0, 3, 3)],
)
def test_keda_runs_a_trainer_per_waiting_run_plus_one_per_run_in_flight(
    render: Render, waiting: int, in_flight: int, trainers: int
) -> None:
    """The HPA takes the max of separate metrics (one training + one waiting = 1 trainer):
    the chart's formula adds them."""
    scaled = scaled_object(render(KEDA), "trainer")
    validate_custom_resource(scaled)
    names = {t["name"] for t in scaled["spec"]["triggers"]}
    assert names == {"backlog", "in_flight"}
    assert desired_trainers(scaled, {"backlog": waiting, "in_flight": in_flight}) == trainers
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["activationTarget"] == "0"  # woken by a waiting run or one in flight
    # The default HPA behavior still applies next to the formula.
    assert scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    # Two runs per pod, two waiting per pod: the formula divides each by its own capacity.
    wide = scaled_object(
        render(
            {
                "trainer": {
                    "maxConcurrentActivities": 2,
                    "keda": {**KEDA["trainer"]["keda"], "targetQueueSize": 2},
                }
            }
        ),
        "trainer",
    )
    assert desired_trainers(wide, {"backlog": 2, "in_flight": 4}) == 3
    # Without the in-flight trigger (minReplicas >= 1) there is nothing to add.
    alone = scaled_object(
        render({"trainer": {"keda": {"enabled": True, "minReplicas": 1}}}), "trainer"
    )
    validate_custom_resource(alone)
    assert "scalingModifiers" not in alone["spec"].get("advanced", {})


def test_scale_to_zero_needs_the_controller_and_the_in_flight_signal(
    chart: helm_python.Chart,
) -> None:
    assert "controller.enabled" in refused(
        chart, {**SCALE_TO_ZERO, "controller": {"enabled": False}}
    )
    assert "prometheusServerAddress" in refused(chart, {"trainer": {"keda": {"enabled": True}}})
    # With trainers that never go to zero, neither is needed.
    chart.render(
        {
            "trainer": {"keda": {"enabled": True, "minReplicas": 1}},
            "controller": {"enabled": False},
        },
        name=RELEASE,
        namespace=NAMESPACE,
    )


def test_keda_replaces_the_cpu_autoscaler(chart: helm_python.Chart) -> None:
    message = refused(
        chart, {"inferencer": {"keda": {"enabled": True}, "autoscaling": {"enabled": True}}}
    )
    assert "not both" in message
    assert "maxReplicas" in refused(
        chart, {"inferencer": {"keda": {"enabled": True, "minReplicas": 9, "maxReplicas": 2}}}
    )


def test_keda_authenticates_with_the_workers_temporal_secrets(render: Render) -> None:
    values = load_yaml(CHART_DIR / "ci" / "tls-values.yaml")
    values |= {"inferencer": {"keda": {"enabled": True}}}
    objects = render(values)
    auth = only(objects, "TriggerAuthentication")
    validate_custom_resource(auth)
    refs = {r["parameter"]: (r["name"], r["key"]) for r in auth["spec"]["secretTargetRef"]}
    assert refs == {
        "cert": ("temporal-client-tls", "tls.crt"),
        "key": ("temporal-client-tls", "tls.key"),
        "ca": ("temporal-client-tls", "ca.crt"),
        "apiKey": ("temporal-api-key", "api-key"),
    }
    trigger = scaled_object(objects, "inferencer")["spec"]["triggers"][0]
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    assert trigger["metadata"]["tlsServerName"] == values["temporal"]["tls"]["serverName"]


def test_keda_refuses_server_only_tls_it_cannot_speak(chart: helm_python.Chart) -> None:
    values = {"temporal": {"tls": {"enabled": True}}, "inferencer": {"keda": {"enabled": True}}}
    assert "client certificate" in refused(chart, values)
    values["keda"] = {"authenticationRef": "my-temporal-auth"}
    chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_controller_runs_the_cpu_trainer_image_with_the_runs_volume(render: Render) -> None:
    values = {"trainer": {"image": {"repository": "reg/t", "tag": "v7"}}}
    objects = render(values)
    controller = only(objects, "Deployment", "controller")
    trainer = only(objects, "Deployment", "trainer")
    assert container(controller)["args"] == ["worker", "controller"]
    # Not the multi-GB CUDA image: the CPU build, whatever the trainer runs.
    assert container(controller)["image"] == "ghcr.io/bert-finetune/trainer:0.1.0-cpu"
    assert container(trainer)["image"] == "reg/t:v7"
    assert "nvidia.com/gpu" not in container(controller)["resources"].get("limits", {})
    assert "tolerations" not in pod_spec(controller)
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for d in (controller, trainer)
        for v in pod_spec(d)["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert len(claims) == 1
    env = env_of(controller, objects)
    assert env["BERT_TRAINING_TASK_QUEUE"] == "bert-finetune-task-queue"
    assert env["METRICS_PORT"] == "9466"
    assert only(objects, "Service", "controller")["spec"]["ports"][0]["port"] == 9466
    disabled = render({"controller": {"enabled": False}})
    assert not find(disabled, "Deployment", "controller")
    assert not find(disabled, "Service", "controller")
    own = render({"controller": {"image": {"repository": "reg/c", "tag": "v1"}}})
    assert container(only(own, "Deployment", "controller"))["image"] == "reg/c:v1"


def test_service_monitor_scrapes_every_worker(render: Render) -> None:
    monitor = only(render(KEDA), "ServiceMonitor")
    validate_custom_resource(monitor)
    (expression,) = monitor["spec"]["selector"]["matchExpressions"]
    assert expression["values"] == ["trainer", "inferencer", "controller"]


# --- trainer settings as values ---------------------------------------------------------------


def test_trainer_knobs_are_first_class_values(render: Render) -> None:
    objects = render(SINGLE_NODE)
    env = env_of(only(objects, "Deployment", "trainer"), objects)
    assert env["BERT_PROGRESS_SIGNAL_INTERVAL_SECONDS"] == "30"
    assert env["BERT_STEP_STALL_TIMEOUT_SECONDS"] == "3600"
    assert env["BERT_LOCAL_PATH_ROOTS"] == "/data/bert_runs:/datasets"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow.svc:5000"
    defaults = render()
    env = env_of(only(defaults, "Deployment", "trainer"), defaults)
    assert env["BERT_LOCAL_PATH_ROOTS"] == env["BERT_RUNS_DIR"] == "/data/bert_runs"
    assert env["BERT_PROGRESS_SIGNAL_INTERVAL_SECONDS"] == "10"
    assert env["BERT_STEP_STALL_TIMEOUT_SECONDS"] == "1800"
    assert env["BERT_TRAINER_PROCESSES"] == "auto"  # one DDP process per GPU of the pod
    assert "MLFLOW_TRACKING_URI" not in env
    two = render({"trainer": {"processesPerRun": 2}})
    assert env_of(only(two, "Deployment", "trainer"), two)["BERT_TRAINER_PROCESSES"] == "2"


# --- storage ----------------------------------------------------------------------------------


def test_single_node_mode_puts_every_runs_volume_pod_on_one_node(render: Render) -> None:
    objects = render(SINGLE_NODE)
    assert only(objects, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteOnce"]
    workers = [d for d in find(objects, "Deployment")]
    assert len(workers) == 3
    for deployment in workers:
        (term,) = pod_spec(deployment)["affinity"]["podAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert term["topologyKey"] == "kubernetes.io/hostname"
        selector = term["labelSelector"]
        for other in workers:  # every worker, itself included (the first pod matches itself)
            labels = other["spec"]["template"]["metadata"]["labels"]
            assert selector["matchLabels"].items() <= labels.items()
            (expression,) = selector["matchExpressions"]
            assert labels[expression["key"]] in expression["values"]
    shared = render({"trainer": {"affinity": {"nodeAffinity": {}}}})
    assert "podAffinity" not in pod_spec(only(shared, "Deployment", "trainer"))["affinity"]


def test_single_node_with_a_gpu_puts_every_runs_volume_pod_on_the_gpu_node(
    render: Render, chart: helm_python.Chart
) -> None:
    """Pod affinity alone follows whichever pod lands first: a CPU node (the trainer then
    stays Pending, certainly so with trainers at zero) or a tainted GPU node (the others do).
    With a GPU every runs-volume pod must require the GPU node and tolerate its taint."""
    objects = render(SINGLE_NODE)
    trainer = pod_spec(only(objects, "Deployment", "trainer"))
    for worker in WORKERS:
        spec = pod_spec(only(objects, "Deployment", worker))
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, worker
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ], worker
        if worker != "trainer":
            assert "nvidia.com/gpu" not in str(container(only(objects, "Deployment", worker)))
    assert trainer["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # Without a label for the GPU node the chart cannot keep them off CPU nodes: refused.
    values = {"persistence": {"mode": "singleNode"}}
    assert "gpu.nodeSelector" in refused(chart, values)
    # CPU-only single node: nothing to pin to.
    cpu = render({**values, "gpu": {"enabled": False}})
    for worker in WORKERS:
        assert "nodeSelector" not in pod_spec(only(cpu, "Deployment", worker))
    # Shared storage: only the trainer goes to GPU nodes.
    shared = render({"gpu": {"nodeSelector": {"pool": "gpu"}}})
    assert "nodeSelector" not in pod_spec(only(shared, "Deployment", "inferencer"))


def test_volume_permissions_hand_an_nfs_share_root_to_the_workers(render: Render) -> None:
    """GKE Filestore (and NFS without all_squash) creates the share's root owned by root and
    ignores fsGroup: an opt-in init container chowns the root, not recursively."""
    objects = render({"persistence": {"volumePermissions": {"enabled": True}}})
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)
        (init,) = pod_spec(deployment)["initContainers"]
        assert init["name"] == "volume-permissions"
        assert init["image"] == container(deployment)["image"]
        script = init["command"][-1]
        assert "chown 10001:10001 /data/bert_runs" in script and "-R" not in script
        assert "stat -c %u:%g /data/bert_runs" in script  # only when not already theirs
        sc = init["securityContext"]
        assert sc["runAsUser"] == 0 and sc["capabilities"] == {
            "drop": ["ALL"],
            "add": ["CHOWN", "FOWNER"],
        }
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert [m["mountPath"] for m in init["volumeMounts"]] == ["/data/bert_runs"]
    # User init containers still come after it; off by default.
    ordered = render(
        {
            **SINGLE_NODE,
            "persistence": {**SINGLE_NODE["persistence"], "volumePermissions": {"enabled": True}},
        }
    )
    names = [c["name"] for c in pod_spec(only(ordered, "Deployment", "trainer"))["initContainers"]]
    assert names == ["volume-permissions", "wait-for-datasets"]
    for worker in WORKERS:
        assert "initContainers" not in pod_spec(only(render(), "Deployment", worker))


# Allocatable of the smallest common GPU nodes (4 vCPU, 15-16 GiB, one GPU), from each
# provider's reservation formula, less what their default DaemonSets request (kube-proxy,
# CNI, CSI node drivers, log agent, the NVIDIA device plugin): about 0.4 CPU and 0.7 GiB.
SMALL_GPU_NODES = {
    # EKS: 3920m; memory 16 GiB - (255 MiB + 11 MiB x 29 pods) - 100 MiB eviction.
    "g4dn.xlarge (EKS)": (3.92 - 0.4, 16 - 0.56 - 0.1 - 0.7),
    # GKE: 3920m; memory - (25% of 4 GiB + 20% of 4 + 10% of 8) - 100 MiB eviction.
    "g2-standard-4 (GKE)": (3.92 - 0.4, 16 - 2.6 - 0.1 - 0.7),
    "n1-standard-4 + T4 (GKE)": (3.92 - 0.4, 15 - 2.5 - 0.1 - 0.7),
}


def quantity(value: str | int) -> float:
    """CPU in cores or memory in GiB from a Kubernetes quantity."""
    text = str(value)
    units = {"m": 1e-3, "Mi": 1 / 1024, "Gi": 1.0, "Ki": 1 / 1024**2}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text.removesuffix(suffix)) * factor
    return float(text)


@pytest.mark.parametrize("node", SMALL_GPU_NODES)
def test_the_default_trainer_fits_the_smallest_common_gpu_nodes(render: Render, node: str) -> None:
    cpu, memory = SMALL_GPU_NODES[node]
    resources = container(only(render(), "Deployment", "trainer"))["resources"]
    assert quantity(resources["requests"]["cpu"]) <= cpu
    assert quantity(resources["requests"]["memory"]) <= memory
    # The memory-backed /dev/shm counts against the limit, which stays within the node.
    assert quantity(resources["limits"]["memory"]) <= memory + 1
    assert resources["limits"]["nvidia.com/gpu"] == 1


def test_notes_and_docs_state_a_minimum_node_size_per_role(chart: helm_python.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["bert-finetune/templates/NOTES.txt"]
    for role in (
        "trainer     requests 3 CPU, 10Gi, 1 GPU",
        "inferencer  requests",
        "controller  requests",
    ):
        assert role in notes
    assert "g4dn/g5/g6.xlarge" in notes and "bert-finetune doctor" in notes
    single = chart.render(SINGLE_NODE, name=RELEASE, namespace=NAMESPACE)
    assert "ALL of them on one GPU node" in single["bert-finetune/templates/NOTES.txt"]
    deploy = (CHART_DIR.parents[1] / "docs" / "deploy.md").read_text()
    assert "### Node sizes" in deploy
    for role in ("trainer", "inferencer", "controller"):
        assert f"| {role} |" in deploy


def test_notes_warn_about_rwx_storage_and_the_namespace(chart: helm_python.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["bert-finetune/templates/NOTES.txt"]
    assert "ReadWriteMany" in notes and "persistence.mode=singleNode" in notes
    assert "temporal operator namespace create --namespace default" in notes
    hooked = chart.render(
        {"temporal": {"createNamespace": {"enabled": True}}}, name=RELEASE, namespace=NAMESPACE
    )["bert-finetune/templates/NOTES.txt"]
    assert "temporal operator namespace create" not in hooked


# --- network policy ---------------------------------------------------------------------------


def policy(render: Render, values: dict[str, Any]) -> dict:
    objects = render({"networkPolicy": {"enabled": True}, **values})
    found = [
        p
        for p in find(objects, "NetworkPolicy")
        if not p["metadata"]["name"].endswith("hub-egress")
    ]
    assert len(found) == 1
    kubernetes_validate.validate(found[0], KUBE_VERSION, strict=True)
    return found[0]


def test_temporal_in_another_namespace_is_derived_from_its_service_address(render: Render) -> None:
    address = "temporal-frontend.temporal-system.svc.cluster.local:7234"
    rule = policy(render, {"temporal": {"address": address}})["spec"]["egress"][1]
    (peer,) = rule["to"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "temporal-system"
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "frontend"
    assert rule["ports"] == [{"port": 7234, "protocol": "TCP"}]


def test_an_address_the_chart_cannot_map_to_pods_fails_the_render(chart: helm_python.Chart) -> None:
    values = {
        "networkPolicy": {"enabled": True},
        "temporal": {"address": "temporal.example.com:7233"},
    }
    assert "networkPolicy.temporalTo" in refused(chart, values)


def test_hugging_face_egress_is_opt_in_and_only_for_pods_that_download(render: Render) -> None:
    objects = render(SINGLE_NODE)
    hub = next(
        p for p in find(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("hub-egress")
    )
    kubernetes_validate.validate(hub, KUBE_VERSION, strict=True)
    (expression,) = hub["spec"]["podSelector"]["matchExpressions"]
    assert expression["values"] == ["trainer", "controller"]
    assert hub["spec"]["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    plain = render({"networkPolicy": {"enabled": True}})
    assert len(find(plain, "NetworkPolicy")) == 1


# --- namespace hook ---------------------------------------------------------------------------


def test_namespace_hook_runs_before_the_workers_with_their_connection(render: Render) -> None:
    objects = render(SINGLE_NODE)
    job = only(objects, "Job", "namespace-hook")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    ctr = pod_spec(job)["containers"][0]
    assert ctr["command"][-3:] == ["python", "-m", "shared.namespace"]
    assert "--retention-days=7" in ctr["args"]
    assert "envFrom" not in ctr, "a pre-install hook runs before the release's ConfigMap exists"
    worker_env = env_of(only(objects, "Deployment", "inferencer"), objects)
    hook_env = {v["name"]: v.get("value", v.get("valueFrom")) for v in ctr["env"]}
    for name, value in worker_env.items():
        if name.startswith("TEMPORAL_"):
            assert hook_env[name] == value, name
    assert ctr["image"] == container(only(objects, "Deployment", "inferencer"))["image"]
    assert not find(render(), "Job")


def test_namespace_hook_is_bounded_and_never_blocks_an_upgrade(
    render: Render, chart: helm_python.Chart
) -> None:
    """Helm waits for a hook at most --timeout (5 minutes by default); and an upgrade must
    not fail because Temporal is down (the workers wait for the namespace themselves)."""
    helm_timeout = 300
    values = {"temporal": {"createNamespace": {"enabled": True}}}
    install = only(render(values), "Job", "namespace-hook")
    assert install["spec"]["backoffLimit"] == 0  # the command retries; pods would multiply it
    assert install["spec"]["activeDeadlineSeconds"] < helm_timeout
    args = pod_spec(install)["containers"][0]["args"]
    assert "--best-effort" not in args  # a first install does need the namespace
    longest = {"temporal": {"createNamespace": {"enabled": True, "timeoutSeconds": 230}}}
    assert only(render(longest), "Job", "namespace-hook")["spec"]["activeDeadlineSeconds"] < 300
    assert "timeoutSeconds" in refused(
        chart, {"temporal": {"createNamespace": {"enabled": True, "timeoutSeconds": 600}}}
    )
    upgrade = only(render(values, is_upgrade=True), "Job", "namespace-hook")
    args = pod_spec(upgrade)["containers"][0]["args"]
    assert "--best-effort" in args and "--timeout-seconds=30" in args
    assert upgrade["spec"]["activeDeadlineSeconds"] <= 90


# --- alerts -----------------------------------------------------------------------------------


def rendered_rules(render: Render, values: dict[str, Any] | None = None) -> dict:
    rule = only(render(values or KEDA), "PrometheusRule")
    validate_custom_resource(rule)
    return rule


def test_prometheus_rule_ships_the_rules_file_for_this_releases_jobs(render: Render) -> None:
    rule = rendered_rules(render)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules_file = yaml.safe_load((CHART_DIR / "alerts" / "bert-finetune.rules.yaml").read_text())
    assert "{{ $labels" in str(rule["spec"]), "Prometheus templates must survive Helm"
    shipped = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    original = [r for g in rules_file["groups"] for r in g["rules"]]
    assert [r["alert"] for r in shipped] == [r["alert"] for r in original]
    jobs = {f"{RELEASE}-bert-finetune-{w}" for w in ("trainer", "inferencer", "controller")}
    for shipped_rule, original_rule in zip(shipped, original, strict=True):
        # Only the job matchers change: each names this release's Services, in its namespace.
        expr = shipped_rule["expr"]
        for matcher in re.findall(r'job(=~|=)"([^"]*)"', expr):
            assert set(matcher[1].split("|")) <= jobs, (shipped_rule["alert"], matcher)
        assert expr.count("job=") == original_rule["expr"].count("job=")
        assert expr.count(f'namespace="{NAMESPACE}", job') == expr.count("job=")
        assert {k: v for k, v in shipped_rule.items() if k != "expr"} == {
            k: v for k, v in original_rule.items() if k != "expr"
        }
    # The ServiceMonitor's jobs are exactly those names: no jobLabel, so the Service name.
    monitor = only(render(KEDA), "ServiceMonitor")
    assert "jobLabel" not in monitor["spec"]
    assert {s["metadata"]["name"] for s in find(render(KEDA), "Service")} == jobs
    assert not find(render(), "PrometheusRule")


def test_alerts_fire_for_this_release_and_never_for_other_workloads(
    render: Render, tmp_path: Path
) -> None:
    """promtool on the rendered rules: a worker of this release that is down fires; a
    workload called "trainer", and the same release name in another namespace, do not."""
    from tests.helpers.binaries import promtool

    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rendered_rules(render)["spec"]))
    ours = f"{RELEASE}-bert-finetune-trainer"
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {
                        "series": f'up{{namespace="{NAMESPACE}", job="{ours}", instance="a:9464"}}',
                        "values": "0x10",
                    },
                    {
                        "series": f'up{{namespace="{NAMESPACE}", job="trainer", instance="b:80"}}',
                        "values": "0x10",
                    },
                    {
                        "series": f'up{{namespace="other", job="{ours}", instance="c:9464"}}',
                        "values": "0x10",
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "8m",
                        "alertname": "BertWorkerDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "critical",
                                    "namespace": NAMESPACE,
                                    "job": ours,
                                    "instance": "a:9464",
                                },
                                "exp_annotations": {"summary": f"{ours} a:9464 cannot be scraped"},
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_need_the_service_monitor_whose_jobs_they_select(chart: helm_python.Chart) -> None:
    values = {"metrics": {"prometheusRule": {"enabled": True}}}
    assert "metrics.serviceMonitor.enabled" in refused(chart, values)


# --- images and extra objects -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "repository", "expected"),
    [
        ("", "ghcr.io/bert-finetune/trainer", "ghcr.io/bert-finetune/trainer"),
        (
            "mirror.io/cache",
            "ghcr.io/bert-finetune/trainer",
            "mirror.io/cache/bert-finetune/trainer",
        ),
        ("mirror.io", "localhost:5001/trainer", "mirror.io/trainer"),
        ("mirror.io", "library/trainer", "mirror.io/library/trainer"),
    ],
)
def test_global_image_registry_replaces_the_registry(
    render: Render, registry: str, repository: str, expected: str
) -> None:
    values = {
        "global": {"imageRegistry": registry},
        "trainer": {"image": {"repository": repository}},
    }
    image = container(only(render(values), "Deployment", "trainer"))["image"]
    assert image == f"{expected}:0.1.0"


def test_a_digest_pins_the_image(render: Render) -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(
        {
            "trainer": {"image": {"tag": "v1", "digest": digest}},
            "controller": {"image": {"digest": digest.replace("ab", "cd")}},
        }
    )
    image = container(only(objects, "Deployment", "trainer"))["image"]
    assert image == f"ghcr.io/bert-finetune/trainer@{digest}"
    image = container(only(objects, "Deployment", "controller"))["image"]
    assert image == f"ghcr.io/bert-finetune/trainer@{digest.replace('ab', 'cd')}"


def test_cpu_pods_default_to_the_cpu_image_and_gpu_trainers_to_cuda(render: Render) -> None:
    def images(values: dict) -> dict[str, str]:
        objects = render(values)
        return {w: container(only(objects, "Deployment", w))["image"] for w in WORKERS}

    assert images({}) == {
        "trainer": "ghcr.io/bert-finetune/trainer:0.1.0",  # the CUDA 12.8 build
        "controller": "ghcr.io/bert-finetune/trainer:0.1.0-cpu",
        "inferencer": "ghcr.io/bert-finetune/inferencer:0.1.0",  # ONNX Runtime, no torch
    }
    cpu = images({"gpu": {"enabled": False}})
    assert cpu["trainer"] == cpu["controller"] == "ghcr.io/bert-finetune/trainer:0.1.0-cpu"
    pinned = images({"gpu": {"enabled": False}, "trainer": {"image": {"tag": "0.1.0-cu130"}}})
    assert pinned["trainer"] == "ghcr.io/bert-finetune/trainer:0.1.0-cu130"  # a set tag wins
    mirrored = images({"global": {"imageRegistry": "mirror.io"}})
    assert mirrored["controller"] == "mirror.io/bert-finetune/trainer:0.1.0-cpu"


def test_extra_volumes_mounts_init_containers_and_objects_land(render: Render) -> None:
    objects = render(SINGLE_NODE)
    trainer = only(objects, "Deployment", "trainer")
    assert {"name": "datasets", "mountPath": "/datasets", "readOnly": True} in container(trainer)[
        "volumeMounts"
    ]
    assert any(v["name"] == "datasets" for v in pod_spec(trainer)["volumes"])
    assert pod_spec(trainer)["initContainers"][0]["name"] == "wait-for-datasets"
    extra = next(
        o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == f"{RELEASE}-team-notes"
    )
    assert extra["data"] == {"owner": "ml-team"}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trainer": {"image": {"digest": "latest"}}}, "digest"),
        ({"persistence": {"mode": "sharedish"}}, "mode"),
        ({"localPathRoots": ["relative/data"]}, "localPathRoots"),
        ({"trainer": {"keda": {"minReplicas": -1}}}, "minReplicas"),
        ({"trainer": {"stepStallTimeoutSeconds": 1}}, "stepStallTimeoutSeconds"),
        ({"controller": {"replicas": 1}}, "replicas"),
    ],
)
def test_schema_rejects_bad_production_values(
    chart: helm_python.Chart, values: dict, message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_crd_validation_catches_a_misspelt_field() -> None:
    """The vendored schemas are strict: a typo KEDA would silently drop fails here."""
    import jsonschema

    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "d"}, "minReplicas": 0, "triggers": []},
    }
    with pytest.raises(jsonschema.ValidationError, match="minReplicas"):
        validate_custom_resource(scaled)
