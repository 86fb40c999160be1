"""The Helm chart, rendered by the real Helm v4 engine and validated against Kubernetes schemas."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from tests.deploy.chartlib import (
    CHART_DIR,
    CI_VALUES,
    NAMESPACE,
    RELEASE,
    Render,
    documents,
    find,
    load_yaml,
    only,
)
from tests.deploy.crds import custom_kinds, validate_custom_resource

KUBE_VERSION = "1.33"
WORKERS = ("trainer", "inferencer", "controller")
# Paths the core's health server answers (shared/health.py; see test_health_endpoints.py).
WORKER_ENDPOINTS = {"/healthz", "/readyz"}


def scenario_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


@pytest.fixture(scope="module", params=CI_VALUES, ids=scenario_id)
def scenario(request: pytest.FixtureRequest, render: Render) -> tuple[dict, list[dict]]:
    values = load_yaml(request.param) or {}
    return values, render(values)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"] if obj["kind"] in ("Deployment", "Job") else obj["spec"]


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(deployment)["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: dict[str, Any], objects: list[dict]) -> dict[str, Any]:
    """The container's environment as the kubelet builds it: envFrom ConfigMaps, then env."""
    ctr = container(deployment)
    env: dict[str, Any] = {}
    for source in ctr.get("envFrom", []):  # the hook Job has none: it runs before the ConfigMap
        name = source["configMapRef"]["name"]
        config_map = next(o for o in find(objects, "ConfigMap") if o["metadata"]["name"] == name)
        env.update(config_map["data"])
    for var in ctr.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def walk(obj: Any) -> list[Any]:
    """Every dict and list nested in a rendered object."""
    found = [obj]
    if isinstance(obj, dict):
        for value in obj.values():
            found.extend(walk(value))
    elif isinstance(obj, list):
        for value in obj:
            found.extend(walk(value))
    return found


# --- every scenario -----------------------------------------------------------------------


def test_every_object_validates_against_kubernetes_schemas(scenario: tuple) -> None:
    _, objects = scenario
    assert objects
    for obj in objects:
        if obj["kind"] in custom_kinds():
            validate_custom_resource(obj)
        else:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_names_are_dns_labels_within_63_characters(scenario: tuple) -> None:
    _, objects = scenario
    for obj in objects:
        name = obj["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name


def test_workers_run_their_worker_command(scenario: tuple) -> None:
    _, objects = scenario
    for worker in WORKERS:
        assert container(only(objects, "Deployment", worker))["args"] == ["worker", worker]


def test_both_workers_mount_the_same_claim_at_bert_runs_dir(scenario: tuple) -> None:
    """...or, with runs in an object store, each its own emptyDir there and no claim at all."""
    values, objects = scenario
    if values.get("storage", {}).get("uri"):
        assert not find(objects, "PersistentVolumeClaim")
        for worker in WORKERS:
            deployment = only(objects, "Deployment", worker)
            volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
            env = env_of(deployment, objects)
            assert env["BERT_RUNS_URI"] == values["storage"]["uri"]
            mount = next(
                m
                for m in container(deployment)["volumeMounts"]
                if m["mountPath"] == env["BERT_RUNS_DIR"]
            )
            assert "persistentVolumeClaim" not in volumes[mount["name"]]
            assert volumes[mount["name"]]["emptyDir"]["sizeLimit"]
        return
    claims, runs_dirs = set(), set()
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        runs_dir = env_of(deployment, objects)["BERT_RUNS_DIR"]
        mount = next(m for m in container(deployment)["volumeMounts"] if m["mountPath"] == runs_dir)
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        runs_dirs.add(runs_dir)
    assert len(claims) == 1 and len(runs_dirs) == 1
    existing = values.get("persistence", {}).get("existingClaim")
    pvcs = find(objects, "PersistentVolumeClaim")
    if existing:
        assert claims == {existing} and not pvcs
    else:
        assert [p["metadata"]["name"] for p in pvcs] == list(claims)


def test_gpu_fields_only_on_the_trainer_and_only_when_enabled(scenario: tuple) -> None:
    values, objects = scenario
    gpu_enabled = values.get("gpu", {}).get("enabled", True)
    trainer = only(objects, "Deployment", "trainer")
    limits = container(trainer).get("resources", {}).get("limits", {})
    tolerations = pod_spec(trainer).get("tolerations", [])
    if gpu_enabled:
        assert limits["nvidia.com/gpu"] == values.get("gpu", {}).get("count", 1)
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    else:
        assert not any("gpu" in str(k) for k in limits)
        assert "runtimeClassName" not in pod_spec(trainer)
        assert not any("gpu" in json.dumps(t) for t in tolerations)
        assert not any("gpu" in k for k in pod_spec(trainer).get("nodeSelector", {}))
    single_node = values.get("persistence", {}).get("mode") == "singleNode"
    for obj in objects:
        if obj["kind"] == "Deployment" and obj is not trainer or obj["kind"] == "Pod":
            spec = pod_spec(obj)
            if gpu_enabled and single_node and obj["kind"] == "Deployment":
                # singleNode: every runs-volume pod goes to the GPU node, without a GPU.
                assert spec["nodeSelector"] == values["gpu"]["nodeSelector"]
                assert spec["tolerations"] == pod_spec(trainer)["tolerations"]
                spec = {k: v for k, v in spec.items() if k not in ("nodeSelector", "tolerations")}
            assert "gpu" not in json.dumps(spec).lower(), obj["metadata"]["name"]


def test_probes_hit_the_worker_endpoints_on_the_metrics_port(scenario: tuple) -> None:
    """...or, on an inferencer serving HTTP, its Open Inference Protocol health endpoints."""
    values, objects = scenario
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        ctr = container(deployment)
        ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
        env = env_of(deployment, objects)
        assert int(env["METRICS_PORT"]) == ports["metrics"]
        if worker == "inferencer" and values.get("inferencer", {}).get("http", {}).get(
            "enabled", True
        ):
            assert int(env["BERT_HTTP_PORT"]) == ports["http"]
            assert ctr["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
            assert ctr["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
            assert ctr["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
            continue
        assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http = ctr[probe]["httpGet"]
            assert http["path"] in WORKER_ENDPOINTS
            assert http["port"] in ("metrics", ports["metrics"])


def test_termination_grace_exceeds_graceful_shutdown(scenario: tuple) -> None:
    _, objects = scenario
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        graceful = int(env_of(deployment, objects)["WORKER_GRACEFUL_SHUTDOWN_SECONDS"])
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > graceful


def test_every_pod_and_container_is_locked_down(scenario: tuple) -> None:
    values, objects = scenario
    pods = [o for o in objects if o["kind"] in ("Deployment", "Pod", "Job")]
    hook = values.get("temporal", {}).get("createNamespace", {}).get("enabled", False)
    assert len(pods) == len(WORKERS) + 1 + hook  # the workers, the helm test Pod, the hook
    for obj in pods:
        spec = pod_spec(obj)
        assert spec["automountServiceAccountToken"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        mounts = set()
        for ctr in spec["containers"] + spec.get("initContainers", []):
            sc = ctr["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["runAsNonRoot"] is True
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts |= {m["mountPath"] for m in ctr["volumeMounts"]}
        assert {"/tmp", "/cache"} <= mounts  # the only writable paths besides the runs volume
    for sa in find(objects, "ServiceAccount"):
        assert sa["automountServiceAccountToken"] is False


def test_workers_reach_temporal_and_poll_the_fixed_task_queues(scenario: tuple) -> None:
    values, objects = scenario
    temporal = values.get("temporal", {})
    for worker in WORKERS:
        env = env_of(only(objects, "Deployment", worker), objects)
        expected = temporal.get("address") or f"temporal-frontend.{NAMESPACE}.svc:7233"
        assert env["TEMPORAL_ADDRESS"] == expected
        assert env["TEMPORAL_NAMESPACE"] == temporal.get("namespace", "default")
        assert env["BERT_TRAINING_TASK_QUEUE"] == "bert-finetune-task-queue"
        assert env["BERT_INFERENCE_TASK_QUEUE"] == "bert-inference-task-queue"
        assert env["HF_HOME"].startswith("/cache")
        assert ("TEMPORAL_TLS" in env) == temporal.get("tls", {}).get("enabled", False)


def test_config_changes_roll_the_pods(scenario: tuple) -> None:
    _, objects = scenario
    for worker in WORKERS:
        annotations = only(objects, "Deployment", worker)["spec"]["template"]["metadata"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["annotations"]["checksum/config"])


def test_each_worker_has_a_metrics_service_that_selects_only_it(scenario: tuple) -> None:
    values, objects = scenario
    monitor = values.get("metrics", {}).get("serviceMonitor", {}).get("enabled", False)
    for worker in WORKERS:
        service = only(objects, "Service", worker)
        pod_labels = only(objects, "Deployment", worker)["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        http = worker == "inferencer" and values.get("inferencer", {}).get("http", {}).get(
            "enabled", True
        )
        assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"] + ["http"] * http
        annotated = "prometheus.io/scrape" in service["metadata"].get("annotations", {})
        assert annotated != monitor
    service_monitors = find(objects, "ServiceMonitor")
    assert len(service_monitors) == int(monitor)
    for sm in service_monitors:
        selector = sm["spec"]["selector"]["matchLabels"]
        for worker in WORKERS:
            service_labels = only(objects, "Service", worker)["metadata"]["labels"]
            assert selector.items() <= service_labels.items()
        assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
        labels = sm["metadata"]["labels"]
        assert values["metrics"]["serviceMonitor"]["additionalLabels"].items() <= labels.items()


def test_helm_test_pod_checks_pollers_with_the_inferencer_image(scenario: tuple) -> None:
    _, objects = scenario
    pod = only(objects, "Pod", "test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    ctr = pod["spec"]["containers"][0]
    assert ctr["args"] == ["check-pollers"]
    assert ctr["image"] == container(only(objects, "Deployment", "inferencer"))["image"]

    def connection(env: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in env.items() if k.startswith("TEMPORAL_") or "TASK_QUEUE" in k}

    inferencer = only(objects, "Deployment", "inferencer")
    assert connection(env_of(pod, objects)) == connection(env_of(inferencer, objects))
    assert len(connection(env_of(pod, objects))) >= 4


# --- specific scenarios -------------------------------------------------------------------


def test_defaults_request_a_gpu_and_protect_the_inferencer(render: Render) -> None:
    objects = render()
    assert (
        container(only(objects, "Deployment", "trainer"))["resources"]["limits"]["nvidia.com/gpu"]
        == 1
    )
    pvc = only(objects, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pdb = only(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "inferencer"
    assert not find(objects, "HorizontalPodAutoscaler") and not find(objects, "NetworkPolicy")


def test_gpu_switch_adds_every_gpu_field(render: Render) -> None:
    values = {
        "gpu": {"count": 2, "runtimeClassName": "nvidia", "nodeSelector": {"gpu": "a100"}},
        "trainer": {"nodeSelector": {"pool": "train"}},
    }
    trainer = only(render(values), "Deployment", "trainer")
    spec = pod_spec(trainer)
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"gpu": "a100", "pool": "train"}
    assert container(trainer)["resources"]["limits"]["nvidia.com/gpu"] == 2
    values["gpu"]["enabled"] = False
    spec = pod_spec(only(render(values), "Deployment", "trainer"))
    assert "runtimeClassName" not in spec and spec["nodeSelector"] == {"pool": "train"}
    assert "tolerations" not in spec


def test_temporal_tls_and_api_key_come_from_secrets(render: Render) -> None:
    objects = render(load_yaml(CHART_DIR / "ci" / "tls-values.yaml"))
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        env = env_of(deployment, objects)
        assert env["TEMPORAL_TLS"] == "true"
        assert env["TEMPORAL_API_KEY"] == {
            "secretKeyRef": {"name": "temporal-api-key", "key": "api-key"}
        }
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["temporal-tls"]["secret"]["secretName"] == "temporal-client-tls"
        mounts = {m["name"]: m for m in container(deployment)["volumeMounts"]}
        tls_mount = mounts["temporal-tls"]
        for var in ("CLIENT_CERT", "CLIENT_KEY", "SERVER_CA_CERT"):
            assert env[f"TEMPORAL_TLS_{var}_PATH"].startswith(tls_mount["mountPath"] + "/")


def test_autoscaled_inferencer_leaves_replicas_to_the_hpa(render: Render) -> None:
    objects = render({"inferencer": {"autoscaling": {"enabled": True, "maxReplicas": 5}}})
    assert "replicas" not in only(objects, "Deployment", "inferencer")["spec"]
    hpa = only(objects, "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"]
        == only(objects, "Deployment", "inferencer")["metadata"]["name"]
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)


def test_replicas_and_images_land_where_users_and_skaffold_set_them(render: Render) -> None:
    values = {
        "trainer": {"replicaCount": 3, "image": {"repository": "reg/t", "tag": "v1@sha256:ab"}},
        "inferencer": {"replicaCount": 5, "image": {"repository": "reg/i", "tag": "v2"}},
    }
    objects = render(values)
    trainer, inferencer = (only(objects, "Deployment", w) for w in ("trainer", "inferencer"))
    assert trainer["spec"]["replicas"] == 3 and inferencer["spec"]["replicas"] == 5
    assert container(trainer)["image"] == "reg/t:v1@sha256:ab"
    assert container(inferencer)["image"] == "reg/i:v2"
    assert only(objects, "Pod", "test")["spec"]["containers"][0]["image"] == "reg/i:v2"


def test_temporal_address_defaults_to_the_temporal_release_frontend(render: Render) -> None:
    def address(values: dict) -> str:
        return only(render(values), "ConfigMap")["data"]["TEMPORAL_ADDRESS"]

    assert address({}) == f"temporal-frontend.{NAMESPACE}.svc:7233"
    assert address({"temporal": {"releaseName": "prod-temporal"}}).startswith(
        "prod-temporal-frontend."
    )
    assert address({"temporal": {"releaseName": "tp"}}).startswith("tp-temporal-frontend.")
    assert address({"temporal": {"address": "t.example.com:443"}}) == "t.example.com:443"


def test_network_policy_allows_only_metrics_in_and_temporal_and_dns_out(render: Render) -> None:
    policy = only(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")
    # (and the inferencer's HTTP port: tests/deploy/test_chart_http.py)
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ingress_ports == ["metrics", "http"]
    egress_ports = sorted(p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"])
    assert egress_ports == [53, 53, 5353, 5353, 7233]
    assert "to" not in policy["spec"]["egress"][0]  # DNS: wherever the resolver is
    temporal_peer = policy["spec"]["egress"][1]["to"][0]["podSelector"]["matchLabels"]
    assert temporal_peer["app.kubernetes.io/instance"] == "temporal"
    assert temporal_peer["app.kubernetes.io/component"] == "frontend"


def test_long_release_names_are_truncated_to_63_characters(chart: helm_python.Chart) -> None:
    objects = documents(chart.render({}, name="x" * 53, namespace=NAMESPACE))
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 for n in names)
    assert any(n.endswith("-trainer") for n in names)
    assert any(n.endswith("-inferencer") for n in names)


def test_notes_print_workflow_commands_for_this_release(chart: helm_python.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)["bert-finetune/templates/NOTES.txt"]
    assert "--type BertFineTuningWorkflow --task-queue" not in notes  # one flag per line
    assert "--task-queue bert-finetune-task-queue" in notes
    assert "--task-queue bert-inference-task-queue" in notes
    assert "--type BertInferenceWorkflow" in notes
    assert f"kubectl -n {NAMESPACE} port-forward svc/temporal-frontend 7233:7233" in notes
    assert f"helm test {RELEASE} -n {NAMESPACE}" in notes
    # The --input documents are valid JSON the pydantic converter accepts.
    for payload in re.findall(r"--input '([^']+)'", notes):
        json.loads(payload)


# --- values that must be refused ----------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trainer": {"replicaCount": -1}}, "replicaCount"),
        ({"inferencer": {"replicaCount": "two"}}, "replicaCount"),
        ({"temporal": {"address": "", "releaseName": ""}}, "temporal"),
        ({"temporal": {"address": None, "releaseName": None}}, "temporal"),
        ({"temporal": {"address": "no-port"}}, "address"),
        ({"gpu": {"count": 0}}, "count"),
        ({"persistence": {"accessModes": ["ReadWriteSometimes"]}}, "accessModes"),
        ({"persistence": {"mountPath": "relative/path"}}, "mountPath"),
        ({"logging": {"format": "xml"}}, "format"),
        ({"trainer": {"image": {"pullPolicy": "Sometimes"}}}, "pullPolicy"),
        ({"trainer": {"metricsPort": 70000}}, "metricsPort"),
        ({"trainer": {"replicas": 2}}, "replicas"),  # a typo of replicaCount
        ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ],
)
def test_schema_rejects_bad_values(chart: helm_python.Chart, values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"trainer": {"terminationGracePeriodSeconds": 60}}, "terminationGracePeriodSeconds"),
        (
            {"inferencer": {"gracefulShutdownSeconds": 90, "terminationGracePeriodSeconds": 45}},
            "45",
        ),
        ({"temporal": {"tls": {"existingSecret": "s"}}}, "tls.enabled"),
        ({"temporal": {"tls": {"enabled": True, "existingSecret": "s", "keyKey": ""}}}, "keyKey"),
        (
            {"inferencer": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
            "minReplicas",
        ),
    ],
)
def test_templates_reject_inconsistent_values(
    chart: helm_python.Chart, values: dict, message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


# --- values.yaml, schema and lint -----------------------------------------------------------


def _schema_paths(schema: dict, root: dict, prefix: tuple = ()) -> set[tuple[str, ...]]:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    paths = set()
    for key, sub in schema.get("properties", {}).items():
        paths.add((*prefix, key))
        # Chart-defined sections; Kubernetes structures ($refs like resources) are leaves.
        if sub.get("additionalProperties") is False or sub.get("$ref") == "#/$defs/image":
            paths |= _schema_paths(sub, root, (*prefix, key))
    return paths


def _documented_paths() -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
    """Keys of values.yaml reached through the schema, and those with a `# --` comment."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    structural = _schema_paths(schema, schema)
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()
    keys, documented = set(), set()

    def visit(node: yaml.Node, prefix: tuple) -> None:
        if not isinstance(node, yaml.MappingNode):
            return
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            if path not in structural:
                continue  # contents of a free-form map or list (e.g. a default toleration)
            keys.add(path)
            line = key_node.start_mark.line - 1
            while line >= 0 and lines[line].lstrip().startswith("#"):
                if lines[line].lstrip().startswith("# --"):
                    documented.add(path)
                line -= 1
            visit(value_node, path)

    visit(yaml.compose((CHART_DIR / "values.yaml").read_text()), ())
    return keys, documented


def test_every_value_is_documented_helm_docs_style() -> None:
    keys, documented = _documented_paths()
    assert len(keys) > 100
    assert sorted(".".join(k) for k in keys - documented) == []


def test_values_and_schema_are_in_sync(chart: helm_python.Chart) -> None:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    in_schema = _schema_paths(schema, schema) - {("global",)}
    keys, _ = _documented_paths()
    missing_from_values = sorted(".".join(p) for p in in_schema - keys)
    assert missing_from_values == []
    chart.validate_schema(chart.values)  # the defaults satisfy the schema


def test_helm_lint_is_clean_in_every_scenario() -> None:
    for values_file in CI_VALUES:
        report = helm_python.lint(CHART_DIR, load_yaml(values_file) or {}, strict=True)
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert problems == [] and report["errors"] == [], values_file.name


# --- dashboards -----------------------------------------------------------------------------


def dashboard_config_maps(objects: list[dict]) -> list[dict]:
    return [o for o in find(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]]


@pytest.mark.parametrize("count", [0, 2])
def test_one_labelled_configmap_per_dashboard_file(tmp_path: Path, count: int) -> None:
    chart_copy = tmp_path / "bert-finetune"
    shutil.copytree(CHART_DIR, chart_copy)
    for existing in (chart_copy / "dashboards").glob("*.json"):
        existing.unlink()
    dashboards = {f"bert-{i}.json": {"title": f"BERT {i}", "panels": []} for i in range(count)}
    for name, model in dashboards.items():
        (chart_copy / "dashboards" / name).write_text(json.dumps(model))
    with helm_python.Chart.load(chart_copy) as copy:
        values = {"dashboards": {"namespace": "monitoring"}}
        objects = documents(copy.render(values, name=RELEASE, namespace=NAMESPACE))
        disabled = documents(
            copy.render({"dashboards": {"enabled": False}}, name=RELEASE, namespace=NAMESPACE)
        )
    config_maps = dashboard_config_maps(objects)
    assert len(config_maps) == count
    for config_map in config_maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        ((name, body),) = config_map["data"].items()
        model = json.loads(body)
        # The model as shipped, but for its uid and title, which name this release.
        assert {k: v for k, v in model.items() if k not in ("uid", "title")} == {
            k: v for k, v in dashboards[name].items() if k != "title"
        }
        assert model["title"] == f"{dashboards[name]['title']} ({NAMESPACE}/{RELEASE})"
        assert model["uid"].startswith(name.removesuffix(".json") + "-")
        kubernetes_validate.validate(config_map, KUBE_VERSION, strict=True)
    assert dashboard_config_maps(disabled) == []


def test_dashboard_uids_and_titles_are_unique_per_release(chart: helm_python.Chart) -> None:
    """Grafana keys dashboards by uid (and title within a folder): two releases shipping the
    same file must not overwrite each other's dashboards."""

    def models(name: str, namespace: str) -> list[dict]:
        objects = documents(chart.render({}, name=name, namespace=namespace))
        return [
            json.loads(body)
            for cm in dashboard_config_maps(objects)
            for body in cm["data"].values()
        ]

    releases = [models("bert", "ml"), models("bert", "ml-staging"), models("other", "ml")]
    uids = [m["uid"] for found in releases for m in found]
    titles = [m["title"] for found in releases for m in found]
    assert len(uids) == 3 * len(list((CHART_DIR / "dashboards").glob("*.json")))
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)
    assert all(len(uid) <= 40 for uid in uids)  # Grafana's limit
    assert [m["uid"] for m in models("bert", "ml")] == [m["uid"] for m in releases[0]]  # stable


def test_shipped_dashboards_are_valid_json() -> None:
    for dashboard in (CHART_DIR / "dashboards").glob("*.json"):
        assert isinstance(json.loads(dashboard.read_text()), dict), dashboard.name


def test_the_gate_queue_timeout_reaches_the_workers_that_plan_promotions(
    render: Render, chart: helm_python.Chart
) -> None:
    from shared.settings import Settings

    objects = render(
        {"rollouts": {"gateQueueTimeoutSeconds": 120}, "controller": {"enabled": True}}
    )
    for worker in ("trainer", "controller"):
        env = env_of(only(objects, "Deployment", worker), objects)
        assert env["BERT_GATE_QUEUE_TIMEOUT_SECONDS"] == "120"
        assert Settings.from_env(env).gate_queue_timeout_seconds == 120
    default = env_of(only(render(), "Deployment", "trainer"), render())
    assert default["BERT_GATE_QUEUE_TIMEOUT_SECONDS"] == "600"
    with pytest.raises(helm_python.HelmValuesError, match="gateQueueTimeoutSeconds"):
        chart.render(
            {"rollouts": {"gateQueueTimeoutSeconds": 0}}, name=RELEASE, namespace=NAMESPACE
        )
