"""Runs on object storage (`storage.uri`): no claim, a private cache per worker, the store's
address and credentials in the workers' environment, egress to the store, and the runs-volume
logic (singleNode pinning, the permissions init container) out of the way. Rendered by the
real Helm engine and validated against the Kubernetes schemas; the filesystem mode's own
tests are in test_chart.py and test_chart_production.py."""

from __future__ import annotations

import json
import re
from typing import Any

import helm_python
import kubernetes_validate
import pytest

from tests.deploy.chartlib import CHART_DIR, NAMESPACE, RELEASE, Render, find, load_yaml, only
from tests.deploy.test_chart import KUBE_VERSION, WORKERS, container, env_of, pod_spec

OBJECT_STORAGE = load_yaml(CHART_DIR / "ci" / "object-storage-values.yaml")
IRSA_ROLE = "arn:aws:iam::111122223333:role/bert-finetune-runs"
# AWS S3 with IRSA: no endpoint, no keys; the role comes through the ServiceAccount.
IRSA = {
    "storage": {"uri": "s3://acme-ml-runs/bert", "region": "us-east-1"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": IRSA_ROLE}},
}


def refused(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    with pytest.raises((helm_python.HelmRenderError, helm_python.HelmValuesError)) as err:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    return str(err.value)


def validated(objects: list[dict]) -> list[dict]:
    for obj in objects:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    return objects


def runs_volume(deployment: dict, objects: list[dict]) -> dict:
    """The volume the worker mounts at BERT_RUNS_DIR."""
    runs_dir = env_of(deployment, objects)["BERT_RUNS_DIR"]
    (mount,) = [m for m in container(deployment)["volumeMounts"] if m["mountPath"] == runs_dir]
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if v["name"] == mount["name"]]
    return volume


def store_policy(objects: list[dict]) -> dict:
    (policy,) = [
        p for p in find(objects, "NetworkPolicy") if p["metadata"]["name"].endswith("store-egress")
    ]
    return policy


def test_no_claim_and_each_worker_caches_in_its_own_bounded_empty_dir(render: Render) -> None:
    objects = validated(render(OBJECT_STORAGE))
    assert not find(objects, "PersistentVolumeClaim")
    limits = OBJECT_STORAGE["storage"]["cacheSizeLimit"]
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        volume = runs_volume(deployment, objects)
        assert volume == {"name": "runs", "emptyDir": {"sizeLimit": limits[worker]}}, worker
        env = env_of(deployment, objects)
        assert env["BERT_RUNS_DIR"] == "/data/bert_runs"  # the cache, not a shared root
    # The download cache takes half the emptyDir, so it can never get the pod evicted.
    assert {
        worker: env_of(only(objects, "Deployment", worker), objects)["BERT_STORE_CACHE_GB"]
        for worker in WORKERS
    } == {"trainer": "40", "inferencer": "15", "controller": "1"}
    # The defaults when only the URI is given.
    defaults = render({"storage": {"uri": "s3://bucket"}})
    assert {
        worker: runs_volume(only(defaults, "Deployment", worker), defaults)["emptyDir"]["sizeLimit"]
        for worker in WORKERS
    } == {"trainer": "50Gi", "inferencer": "20Gi", "controller": "2Gi"}
    assert not find(defaults, "PersistentVolumeClaim")


@pytest.mark.parametrize(
    ("limit", "cache_gb"),
    [("200Gi", "100"), ("1Ti", "512"), ("100G", "46"), ("3000Mi", "1"), (53687091200, "25")],
)
def test_the_download_cache_is_half_of_any_size_limit(
    render: Render, limit: str | int, cache_gb: str
) -> None:
    values = {"storage": {"uri": "s3://bucket", "cacheSizeLimit": {"trainer": limit}}}
    objects = validated(render(values))
    trainer = only(objects, "Deployment", "trainer")
    assert env_of(trainer, objects)["BERT_STORE_CACHE_GB"] == cache_gb
    assert runs_volume(trainer, objects)["emptyDir"]["sizeLimit"] == limit


def test_the_workers_settings_read_the_rendered_environment(render: Render) -> None:
    """What the workers make of it (shared.settings): the store, its cache bound, and no
    private cache among the folders a config may name."""
    from shared.settings import Settings

    objects = render(OBJECT_STORAGE)
    for worker in WORKERS:
        env = env_of(only(objects, "Deployment", worker), objects)
        plain = {name: value for name, value in env.items() if isinstance(value, str)}
        settings = Settings.from_env(plain)
        assert settings.runs_uri == "s3://bert-runs-example/prod"
        assert settings.store_cache_bytes == int(env["BERT_STORE_CACHE_GB"]) * 1024**3
        assert settings.runs_dir not in settings.local_path_roots


def test_workers_get_the_store_address_and_the_secrets_access_keys(render: Render) -> None:
    objects = render(OBJECT_STORAGE)
    for worker in WORKERS:
        env = env_of(only(objects, "Deployment", worker), objects)
        assert env["BERT_RUNS_URI"] == "s3://bert-runs-example/prod"
        assert env["AWS_ENDPOINT_URL_S3"] == "https://storage.googleapis.com"
        assert env["AWS_REGION"] == "auto"
        assert env["AWS_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": "gcs-hmac", "key": "AWS_ACCESS_KEY_ID"}
        }
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": "gcs-hmac", "key": "AWS_SECRET_ACCESS_KEY"}
        }
    # The helm test Pod only asks Temporal for pollers: it never gets the store's keys.
    test_env = env_of(only(objects, "Pod", "test"), objects)
    assert "AWS_ACCESS_KEY_ID" not in test_env and "AWS_SECRET_ACCESS_KEY" not in test_env
    keys = render(
        {
            "storage": {
                "uri": "s3://runs",
                "endpoint": "http://minio.minio.svc:9000",
                "existingSecret": "minio-bert",
                "accessKeyIdKey": "accesskey",
                "secretAccessKeyKey": "secretkey",
            }
        }
    )
    env = env_of(only(keys, "Deployment", "trainer"), keys)
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "minio-bert", "key": "accesskey"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {
        "name": "minio-bert",
        "key": "secretkey",
    }
    assert "AWS_REGION" not in env


def test_irsa_credentials_come_from_the_annotated_service_account(render: Render) -> None:
    """No keys in the pods: EKS's webhook gives pods of the annotated ServiceAccount a web
    identity token (its own projected volume, so the API token stays unmounted)."""
    objects = validated(render(IRSA))
    account = only(objects, "ServiceAccount")
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == IRSA_ROLE
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        assert pod_spec(deployment)["serviceAccountName"] == account["metadata"]["name"]
        assert pod_spec(deployment)["automountServiceAccountToken"] is False
        env = env_of(deployment, objects)
        assert env["BERT_RUNS_URI"] == "s3://acme-ml-runs/bert"
        assert env["AWS_REGION"] == "us-east-1"
        assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"} & set(env)


def test_each_role_can_have_its_own_identity_and_keys(
    render: Render, chart: helm_python.Chart
) -> None:
    """Least privilege on the bucket: a ServiceAccount (an IRSA role) or a Secret per worker
    role, so the inferencer, the pods that answer HTTP, can hold read-only credentials."""
    roles = {role: f"arn:aws:iam::111122223333:role/bert-{role}" for role in WORKERS}
    values = {
        **IRSA,
        "serviceAccount": {
            "perRole": True,
            "annotations": {"team": "ml"},
            "roleAnnotations": {
                role: {"eks.amazonaws.com/role-arn": arn} for role, arn in roles.items()
            },
        },
    }
    objects = validated(render(values))
    accounts = {sa["metadata"]["name"]: sa for sa in find(objects, "ServiceAccount")}
    assert set(accounts) == {f"{RELEASE}-bert-finetune"} | {
        f"{RELEASE}-bert-finetune-{role}" for role in WORKERS
    }
    for role, arn in roles.items():
        name = pod_spec(only(objects, "Deployment", role))["serviceAccountName"]
        assert name == f"{RELEASE}-bert-finetune-{role}"
        annotations = accounts[name]["metadata"]["annotations"]
        assert annotations == {"eks.amazonaws.com/role-arn": arn, "team": "ml"}
        assert accounts[name]["automountServiceAccountToken"] is False
    # The helm test Pod keeps the release's account, which carries no role.
    test_account = only(objects, "Pod", "test")["spec"]["serviceAccountName"]
    assert accounts[test_account]["metadata"]["annotations"] == {"team": "ml"}

    keys = render(
        {
            "storage": {
                "uri": "s3://runs",
                "existingSecret": "bert-rw",
                "roleSecrets": {"inferencer": "bert-ro"},
            }
        }
    )
    secrets = {
        role: env_of(only(keys, "Deployment", role), keys)["AWS_ACCESS_KEY_ID"]["secretKeyRef"][
            "name"
        ]
        for role in WORKERS
    }
    assert secrets == {"trainer": "bert-rw", "inferencer": "bert-ro", "controller": "bert-rw"}
    # A Secret for one role only: the others use the chain (IRSA).
    alone = render({"storage": {"uri": "s3://runs", "roleSecrets": {"inferencer": "bert-ro"}}})
    assert "AWS_ACCESS_KEY_ID" not in env_of(only(alone, "Deployment", "trainer"), alone)
    assert "AWS_ACCESS_KEY_ID" in env_of(only(alone, "Deployment", "inferencer"), alone)
    # Off by default: one ServiceAccount for the release.
    assert len(find(render(IRSA), "ServiceAccount")) == 1
    refusal = refused(chart, {"serviceAccount": {"perRole": True, "create": False}})
    assert "serviceAccount.create" in refusal


def test_filesystem_mode_is_unchanged_without_a_uri(render: Render) -> None:
    objects = render()
    assert len(find(objects, "PersistentVolumeClaim")) == 1
    for worker in WORKERS:
        deployment = only(objects, "Deployment", worker)
        env = env_of(deployment, objects)
        assert not [name for name in env if name.startswith("AWS_") or name == "BERT_RUNS_URI"]
        assert "persistentVolumeClaim" in runs_volume(deployment, objects)
        assert env["BERT_LOCAL_PATH_ROOTS"] == "/data/bert_runs"


def test_local_path_roots_never_default_to_the_private_cache(render: Render) -> None:
    """The cache is each pod's own: a file there is not where the other pods look."""
    objects = render(IRSA)
    assert "BERT_LOCAL_PATH_ROOTS" not in env_of(only(objects, "Deployment", "trainer"), objects)
    listed = render({**IRSA, "localPathRoots": ["/datasets"]})
    env = env_of(only(listed, "Deployment", "trainer"), listed)
    assert env["BERT_LOCAL_PATH_ROOTS"] == "/datasets"


def test_runs_volume_logic_is_skipped_with_object_storage(
    render: Render, chart: helm_python.Chart
) -> None:
    """singleNode pinning and the NFS permissions init container concern the shared volume:
    with the store neither applies, and singleNode's GPU-label requirement is not enforced."""
    values = {
        **OBJECT_STORAGE,
        "persistence": {"mode": "singleNode", "volumePermissions": {"enabled": True}},
    }
    objects = validated(render(values))
    gpu_selector = OBJECT_STORAGE["gpu"]["nodeSelector"]
    for worker in WORKERS:
        spec = pod_spec(only(objects, "Deployment", worker))
        assert "affinity" not in spec, worker
        assert "initContainers" not in spec, worker
        if worker == "trainer":
            assert spec["nodeSelector"] == gpu_selector
        else:  # not pulled onto the GPU node as singleNode would
            assert "nodeSelector" not in spec and "tolerations" not in spec, worker
    assert not find(objects, "PersistentVolumeClaim")
    # The same values on the runs volume are refused (no label for the GPU node) ...
    assert "gpu.nodeSelector" in refused(chart, {"persistence": {"mode": "singleNode"}})
    # ... but not with the store, where nothing is pinned.
    render({"storage": {"uri": "s3://bucket"}, "persistence": {"mode": "singleNode"}})


def test_network_policy_lets_only_the_workers_reach_the_store(render: Render) -> None:
    objects = validated(render(OBJECT_STORAGE))
    policy = store_policy(objects)
    assert policy["spec"]["policyTypes"] == ["Egress"]
    assert policy["spec"]["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    selector = policy["spec"]["podSelector"]
    (expression,) = selector["matchExpressions"]
    pods = [d["spec"]["template"] for d in find(objects, "Deployment")] + find(objects, "Pod")
    assert len(pods) == len(WORKERS) + 1
    for pod in pods:
        labels = pod["metadata"]["labels"]
        selected = selector["matchLabels"].items() <= labels.items() and (
            labels.get(expression["key"]) in expression["values"]
        )
        # The workers, not the helm test Pod (nor the namespace hook): they never touch it.
        assert selected == (labels[expression["key"]] in WORKERS), labels
    # The release's main policy still allows only DNS and Temporal out.
    main = only(
        [p for p in find(objects, "NetworkPolicy") if not p["metadata"]["name"].endswith("egress")],
        "NetworkPolicy",
    )
    ports = sorted(p["port"] for rule in main["spec"]["egress"] for p in rule["ports"])
    assert ports == [53, 53, 5353, 5353, 7233]


@pytest.mark.parametrize(
    ("endpoint", "port"),
    [
        ("", 443),  # AWS S3
        ("https://storage.googleapis.com", 443),
        ("http://minio.minio.svc:9000", 9000),
        ("https://s3.rgw.example.com:8443/", 8443),
        ("http://ceph-rgw.storage.svc", 80),
    ],
)
def test_store_egress_follows_the_endpoints_port(render: Render, endpoint: str, port: int) -> None:
    values = {
        "storage": {"uri": "s3://bkt/p", "endpoint": endpoint},
        "networkPolicy": {"enabled": True},
    }
    policy = store_policy(validated(render(values)))
    assert policy["spec"]["egress"][0]["ports"] == [{"port": port, "protocol": "TCP"}]


def test_store_egress_can_be_narrowed_and_is_absent_without_a_policy_or_store(
    render: Render,
) -> None:
    minio = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}},
            "podSelector": {"matchLabels": {"app": "minio"}},
        }
    ]
    values = {
        "storage": {"uri": "s3://runs", "endpoint": "http://minio.minio.svc:9000"},
        "networkPolicy": {"enabled": True, "storageTo": minio},
    }
    policy = store_policy(validated(render(values)))
    assert policy["spec"]["egress"] == [{"ports": [{"port": 9000, "protocol": "TCP"}], "to": minio}]
    assert not find(render({"storage": {"uri": "s3://runs"}}), "NetworkPolicy")
    plain = render({"networkPolicy": {"enabled": True}})
    assert [p["metadata"]["name"] for p in find(plain, "NetworkPolicy")] == [
        f"{RELEASE}-bert-finetune"
    ]


def test_notes_name_the_store_instead_of_the_claim(chart: helm_python.Chart) -> None:
    notes = chart.render(OBJECT_STORAGE, name=RELEASE, namespace=NAMESPACE)[
        "bert-finetune/templates/NOTES.txt"
    ]
    assert "runs store  s3://bert-runs-example/prod at https://storage.googleapis.com" in notes
    assert "no PersistentVolumeClaim" in notes and "Secret(s) gcs-hmac" in notes
    assert "abort" in notes and "multipart" in notes
    assert "runs volume" not in notes and "ReadWriteMany" not in notes
    irsa = chart.render(IRSA, name=RELEASE, namespace=NAMESPACE)[
        "bert-finetune/templates/NOTES.txt"
    ]
    assert "IRSA" in irsa


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"storage": {"uri": "gs://bucket/prefix"}}, "uri"),  # GCS goes through its S3 API
        ({"storage": {"uri": "/data/bert_runs"}}, "uri"),
        ({"storage": {"uri": "s3://"}}, "uri"),
        ({"storage": {"uri": "s3://Bucket/runs"}}, "uri"),  # bucket names are lower-case
        ({"storage": {"uri": "s3://bucket/runs/"}}, "uri"),
        ({"storage": {"uri": "s3://bucket//runs"}}, "uri"),
        ({"storage": {"uri": "s3://bucket", "endpoint": "storage.googleapis.com"}}, "endpoint"),
        ({"storage": {"uri": "s3://bucket", "endpoint": "https://h/path"}}, "endpoint"),
        ({"storage": {"uri": "s3://bucket", "cacheSizeLimit": {"trainer": "lots"}}}, "trainer"),
        ({"storage": {"uri": "s3://bucket", "bucket": "b"}}, "bucket"),
        ({"storage": {"uri": "s3://bucket", "accessKeyIdKey": ""}}, "accessKeyIdKey"),
    ],
)
def test_schema_rejects_bad_storage_values(
    chart: helm_python.Chart, values: dict, message: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=message):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_templates_refuse_a_cache_too_small_for_the_download_cache(
    chart: helm_python.Chart,
) -> None:
    values = {"storage": {"uri": "s3://bucket", "cacheSizeLimit": {"inferencer": "1500Mi"}}}
    assert "storage.cacheSizeLimit.inferencer must be at least 2Gi" in refused(chart, values)


def test_templates_refuse_storage_values_that_would_be_ignored(chart: helm_python.Chart) -> None:
    both = {"storage": {"uri": "s3://bucket"}, "persistence": {"existingClaim": "old-runs"}}
    assert "persistence.existingClaim" in refused(chart, both)
    assert "storage.uri" in refused(chart, {"storage": {"existingSecret": "keys"}})
    assert "storage.uri" in refused(chart, {"storage": {"endpoint": "http://minio:9000"}})
    assert "storage.uri" in refused(chart, {"storage": {"roleSecrets": {"trainer": "keys"}}})


def test_helm_lint_is_clean_with_irsa() -> None:
    """(ci/object-storage-values.yaml is linted with every scenario in test_chart.py.)"""
    report = helm_python.lint(CHART_DIR, IRSA, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [] and report["errors"] == []


# --- docs/deploy.md, "Runs on object storage" -------------------------------------------------


def object_storage_docs() -> str:
    deploy = (CHART_DIR.parents[1] / "docs" / "deploy.md").read_text()
    start = deploy.index("### Runs on object storage")
    return deploy[start : deploy.index("\n## ", start)]


def json_blocks(text: str) -> list[Any]:
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_docs_name_only_values_the_chart_has() -> None:
    values = load_yaml(CHART_DIR / "values.yaml")
    named = set(
        re.findall(
            r"`((?:storage|serviceAccount|networkPolicy|persistence)(?:\.\w+)+)",
            object_storage_docs(),
        )
    )
    assert {"storage.uri", "storage.roleSecrets", "serviceAccount.perRole"} <= named
    for dotted in named:
        node = values
        for key in dotted.split("."):
            assert isinstance(node, dict) and key in node, dotted
            node = node[key]


def test_docs_policies_give_the_inferencer_read_only_access_and_abort_stale_uploads() -> None:
    blocks = json_blocks(object_storage_docs())
    policies = [b for b in blocks if "Statement" in b]
    assert len(policies) == 2

    def actions(statement: dict) -> set[str]:
        action = statement["Action"]
        return {action} if isinstance(action, str) else set(action)

    read_write, read_only = policies
    granted = set().union(*(actions(s) for s in read_write["Statement"]))
    assert {
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    } <= granted
    # The inferencer reads; it writes only the start-up check's scratch keys.
    reads = {"s3:ListBucket", "s3:GetObject"}
    for statement in read_only["Statement"]:
        if not actions(statement) <= reads:
            assert statement["Resource"].endswith("/bert/.probes/*"), statement
    (s3_rule,) = [r for b in blocks if "Rules" in b for r in b["Rules"]]
    assert s3_rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] >= 1
    (gcs_rule,) = [r for b in blocks if "lifecycle" in b for r in b["lifecycle"]["rule"]]
    assert gcs_rule["action"] == {"type": "AbortIncompleteMultipartUpload"}
    # The rules cover the prefix of the documented storage.uri.
    uri = re.search(r"uri: (s3://\S+)", object_storage_docs())
    assert uri is not None
    prefix = uri.group(1).split("/", 3)[3] + "/"
    assert s3_rule["Filter"]["Prefix"] == prefix
    assert gcs_rule["condition"]["matchesPrefix"] == [prefix]
