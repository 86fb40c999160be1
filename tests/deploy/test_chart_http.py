"""The chart's HTTP inference path: port, probes, Service, Ingress, NetworkPolicy, scaling.

``inferencer.http`` (on by default) serves the Open Inference Protocol v2 on the inferencer
pods (services/inferencer/http_server.py); these renders check each object that carries it.
"""

from __future__ import annotations

import helm_python
import pytest

from shared.settings import HttpSettings
from tests.deploy.chartlib import NAMESPACE, RELEASE, Render, find, only
from tests.deploy.test_chart import container, env_of


def inferencer(objects: list[dict]) -> dict:
    return container(only(objects, "Deployment", "inferencer"))


def test_the_endpoint_is_on_by_default_with_its_limits_in_the_environment(
    render: Render,
) -> None:
    objects = render({"inferencer": {"http": {"port": 8181, "maxInFlight": 12}}})
    deployment = only(objects, "Deployment", "inferencer")
    env = env_of(deployment, objects)
    assert env["BERT_HTTP_PORT"] == "8181" and env["BERT_HTTP_MAX_IN_FLIGHT"] == "12"
    # What the worker reads from it (shared.settings): integers, not Helm's floats.
    settings = HttpSettings.from_env({k: str(v) for k, v in env.items()})
    assert settings == HttpSettings(
        port=8181,
        batch_window_ms=0,
        max_batch_texts=256,
        max_texts=256,
        max_request_bytes=1048576,
        max_in_flight=12,
    )
    assert {"name": "http", "containerPort": 8181, "protocol": "TCP"} in inferencer(objects)[
        "ports"
    ]
    service = only(objects, "Service", "inferencer")
    http = [p for p in service["spec"]["ports"] if p["name"] == "http"]
    assert http == [{"name": "http", "port": 8181, "targetPort": "http", "protocol": "TCP"}]
    # Only the inferencer serves HTTP.
    for worker in ("trainer", "controller"):
        assert "BERT_HTTP_PORT" not in env_of(only(objects, "Deployment", worker), objects)


def test_probe_timings_stay_the_users_when_they_move_to_the_http_port(render: Render) -> None:
    ctr = inferencer(render({"inferencer": {"readinessProbe": {"periodSeconds": 3}}}))
    assert ctr["readinessProbe"]["periodSeconds"] == 3
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}


def test_switched_off_it_leaves_no_trace(render: Render) -> None:
    objects = render(
        {"inferencer": {"http": {"enabled": False}}, "networkPolicy": {"enabled": True}}
    )
    ctr = inferencer(objects)
    assert [p["name"] for p in ctr["ports"]] == ["metrics"]
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert "BERT_HTTP_PORT" not in env_of(only(objects, "Deployment", "inferencer"), objects)
    assert [p["name"] for p in only(objects, "Service", "inferencer")["spec"]["ports"]] == [
        "metrics"
    ]
    policy = only(objects, "NetworkPolicy")
    assert [p["port"] for r in policy["spec"]["ingress"] for p in r["ports"]] == ["metrics"]
    assert not find(objects, "Ingress")


def test_ingress_with_tls_routes_v2_to_the_http_port(render: Render) -> None:
    tls = [{"secretName": "bert-tls", "hosts": ["bert.example.org"]}]
    objects = render(
        {
            "inferencer": {
                "http": {
                    "ingress": {
                        "enabled": True,
                        "className": "nginx",
                        "hosts": ["bert.example.org"],
                        "tls": tls,
                        "annotations": {"nginx.ingress.kubernetes.io/proxy-body-size": "2m"},
                    }
                }
            }
        }
    )
    ingress = only(objects, "Ingress", "inferencer")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx" and spec["tls"] == tls
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    (rule,) = spec["rules"]
    assert rule["host"] == "bert.example.org"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/v2", "Prefix")
    service = only(objects, "Service", "inferencer")
    assert path["backend"]["service"] == {
        "name": service["metadata"]["name"],
        "port": {"name": "http"},
    }
    assert not find(render({}), "Ingress")  # off by default


def test_network_policy_admits_the_http_port_from_the_configured_peers(render: Render) -> None:
    peers = [{"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}]
    policy = only(
        render({"networkPolicy": {"enabled": True}, "inferencer": {"http": {"from": peers}}}),
        "NetworkPolicy",
    )
    (rule,) = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == "http"]
    assert rule["from"] == peers
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_keda_scales_the_inferencer_on_http_requests_in_flight(render: Render) -> None:
    address = "http://prometheus-operated.monitoring.svc:9090"
    objects = render(
        {
            "inferencer": {
                "keda": {"enabled": True, "prometheusServerAddress": address},
                "http": {"targetInFlightPerPod": 6},
            }
        }
    )
    scaled = only(objects, "ScaledObject", "inferencer")
    triggers = {t["name"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"backlog", "http_in_flight"}
    metadata = triggers["http_in_flight"]["metadata"]
    assert metadata["serverAddress"] == address and metadata["threshold"] == "6"
    assert metadata["query"] == (
        f'sum(bert_inference_http_in_flight_requests{{namespace="{NAMESPACE}"}})'
    )
    # Without a Prometheus, the backlog alone.
    plain = only(render({"inferencer": {"keda": {"enabled": True}}}), "ScaledObject", "inferencer")
    assert [t["name"] for t in plain["spec"]["triggers"]] == ["backlog"]


def test_hpa_can_scale_on_http_requests_in_flight(render: Render) -> None:
    objects = render(
        {
            "inferencer": {
                "autoscaling": {
                    "enabled": True,
                    "httpInFlight": True,
                    "targetCPUUtilizationPercentage": None,
                },
                "http": {"targetInFlightPerPod": 5},
            }
        }
    )
    (metric,) = only(objects, "HorizontalPodAutoscaler", "inferencer")["spec"]["metrics"]
    assert metric == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "bert_inference_http_in_flight_requests"},
            "target": {"type": "AverageValue", "averageValue": "5"},
        },
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"inferencer": {"http": {"enabled": False, "ingress": {"enabled": True}}}},
            "ingress.enabled needs inferencer.http.enabled",
        ),
        (
            {"inferencer": {"keda": {"enabled": True, "minReplicas": 0}}},
            "no pod to answer",
        ),
        (
            {
                "inferencer": {
                    "autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": None},
                }
            },
            "httpInFlight",
        ),
    ],
)
def test_inconsistent_http_values_fail_the_render(
    chart: helm_python.Chart, values: dict, message: str
) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"inferencer": {"http": {"port": 0}}}, "port"),
        ({"inferencer": {"http": {"batchWindowMs": -1}}}, "batchWindowMs"),
        ({"inferencer": {"http": {"maxInFlight": 0}}}, "maxInFlight"),
        ({"inferencer": {"http": {"maxBatchTexts": 4097}}}, "maxBatchTexts"),
        ({"inferencer": {"http": {"maxRequests": 5}}}, "maxRequests"),  # a typo
        ({"inferencer": {"http": {"ingress": {"hosts": [""]}}}}, "hosts"),
        ({"inferencer": {"keda": {"prometheusServerAddress": "prometheus:9090"}}}, "prometheus"),
    ],
)
def test_schema_rejects_bad_http_values(
    chart: helm_python.Chart, values: dict, message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
