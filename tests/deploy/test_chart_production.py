"""What a real cluster needs from the chart: autoscaling on work, the controller, storage modes,
network policy, the namespace hook, alerts, images. Rendered by the real Helm engine;
custom resources validated against the upstream CRDs (tests/deploy/crds)."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chartlib import CHART_DIR, NAMESPACE, RELEASE, Render, find, load_yaml, only
from tests.deploy.crds import validate_custom_resource
from tests.deploy.test_chart import KUBE_VERSION, container, env_of, pod_spec

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
    assert in_flight["metadata"]["query"] == (
        f'sum(bert_training_runs_in_flight{{namespace="{NAMESPACE}"}}) + '
        f'(sum(bert_training_exports_in_flight{{namespace="{NAMESPACE}"}}) or vector(0))'
    )
    assert in_flight["metadata"]["threshold"] == "1"  # trainer.maxConcurrentActivities
    assert not find(objects, "HorizontalPodAutoscaler")


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


def test_controller_runs_the_trainer_image_on_cpu_with_the_runs_volume(render: Render) -> None:
    values = {"trainer": {"image": {"repository": "reg/t", "tag": "v7"}}}
    objects = render(values)
    controller = only(objects, "Deployment", "controller")
    trainer = only(objects, "Deployment", "trainer")
    assert container(controller)["args"] == ["worker", "controller"]
    assert container(controller)["image"] == "reg/t:v7"
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


# --- alerts -----------------------------------------------------------------------------------


def test_prometheus_rule_ships_the_tested_rules_file_verbatim(render: Render) -> None:
    rule = only(render(KEDA), "PrometheusRule")
    validate_custom_resource(rule)
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rules_file = yaml.safe_load((CHART_DIR / "alerts" / "bert-finetune.rules.yaml").read_text())
    assert rule["spec"] == rules_file
    assert "{{ $labels" in str(rule["spec"]), "Prometheus templates must survive Helm"
    assert not find(render(), "PrometheusRule")


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
    objects = render({"trainer": {"image": {"tag": "v1", "digest": digest}}})
    for component in ("trainer", "controller"):
        image = container(only(objects, "Deployment", component))["image"]
        assert image == f"ghcr.io/bert-finetune/trainer@{digest}"


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
