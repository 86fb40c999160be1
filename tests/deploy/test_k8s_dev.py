"""The local-cluster recipe: its values files fit the charts they configure."""

from __future__ import annotations

import subprocess

import yaml

from tests.deploy.chartlib import CHART_DIR, REPO_ROOT, Render, load_yaml, only

K8S_DEV = REPO_ROOT / "k8s-dev"


def test_dev_values_render_a_cpu_only_stack_with_monitoring(render: Render) -> None:
    objects = render(load_yaml(K8S_DEV / "bert-finetune-values.yaml"))
    trainer = only(objects, "Deployment", "trainer")
    assert "gpu" not in str(trainer["spec"]["template"]["spec"]).lower()
    assert only(objects, "ServiceMonitor")["metadata"]["labels"]["release"] == (
        "kube-prometheus-stack"
    )


def test_temporal_values_use_the_1x_datastores_layout_with_postgres() -> None:
    values = load_yaml(K8S_DEV / "temporal-values.yaml")
    persistence = values["server"]["config"]["persistence"]
    assert "default" not in persistence and "visibility" not in persistence  # pre-1.0 layout
    stores = persistence["datastores"]
    assert {persistence["defaultStore"], persistence["visibilityStore"]} <= set(stores)
    manifests = yaml.safe_load_all((K8S_DEV / "postgres.yaml").read_text())
    postgres = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    for store in stores.values():
        sql = store["sql"]
        assert sql["pluginName"].startswith("postgres")
        host, port = sql["connectAddr"].split(":")
        assert ("Service", host) in postgres and int(port) == 5432
        assert ("Secret", sql["existingSecret"]) in postgres
    for removed in ("cassandra", "elasticsearch", "mysql", "postgresql", "prometheus", "grafana"):
        assert removed not in values  # the 1.x chart fails on these keys


def test_chart_default_address_matches_the_dev_temporal_release(render: Render) -> None:
    up = (K8S_DEV / "up.sh").read_text()
    assert "upgrade --install temporal temporal/temporal" in up
    env = only(render(load_yaml(K8S_DEV / "bert-finetune-values.yaml")), "ConfigMap")["data"]
    assert env["TEMPORAL_ADDRESS"].startswith("temporal-frontend.")


def test_grafana_sidecar_loads_the_charts_dashboard_configmaps() -> None:
    sidecar = load_yaml(K8S_DEV / "kube-prometheus-stack-values.yaml")["grafana"]["sidecar"]
    chart_values = load_yaml(CHART_DIR / "values.yaml")["dashboards"]
    assert sidecar["dashboards"]["label"] == chart_values["label"]
    assert sidecar["dashboards"]["labelValue"] == chart_values["labelValue"]
    assert sidecar["dashboards"]["searchNamespace"] == "ALL"
    prometheus = load_yaml(K8S_DEV / "kube-prometheus-stack-values.yaml")["prometheus"]
    assert prometheus["prometheusSpec"]["serviceMonitorSelectorNilUsesHelmValues"] is False


def test_kind_cluster_uses_the_local_registry() -> None:
    kind = load_yaml(K8S_DEV / "kind-config.yaml")
    assert kind["kind"] == "Cluster" and kind["name"] == "bert-finetune"
    assert "config_path" in kind["containerdConfigPatches"][0]
    assert "localhost:${REGISTRY_PORT}" in (K8S_DEV / "up.sh").read_text()


def test_scripts_parse() -> None:
    for script in ("up.sh", "down.sh"):
        subprocess.run(["bash", "-n", str(K8S_DEV / script)], check=True, timeout=30)
