#!/usr/bin/env bash
# Bring up the whole local stack on kind: a local registry, the cluster, a small Postgres,
# Temporal (temporalio/helm-charts), kube-prometheus-stack, and this project's chart built and
# deployed by skaffold. Needs docker, kind, kubectl, helm and skaffold on PATH.
#   bash k8s-dev/up.sh            (or: make k8s-up)
# Re-running is safe: every step is idempotent.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"
CLUSTER="${CLUSTER:-bert-finetune}"
NAMESPACE="${NAMESPACE:-bert}"
REGISTRY_NAME="${REGISTRY_NAME:-kind-registry}"
REGISTRY_PORT="${REGISTRY_PORT:-5001}"
TEMPORAL_CHART_VERSION="${TEMPORAL_CHART_VERSION:-1.6.0}"
KPS_CHART_VERSION="${KPS_CHART_VERSION:-77.0.0}"
CONTEXT="kind-${CLUSTER}"

log() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "missing: $1 (see docs/deploy.md)" >&2; exit 1; }; }
for tool in docker kind kubectl helm skaffold; do need "$tool"; done

log "Local registry ${REGISTRY_NAME} on localhost:${REGISTRY_PORT}"
if [ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" != "true" ]; then
  docker run -d --restart=always -p "127.0.0.1:${REGISTRY_PORT}:5000" --network bridge \
    --name "$REGISTRY_NAME" registry:2
fi

log "kind cluster ${CLUSTER}"
if ! kind get clusters | grep -qx "$CLUSTER"; then
  kind create cluster --name "$CLUSTER" --config "$HERE/kind-config.yaml" --wait 120s
fi
# Point the node's containerd at the registry (localhost:PORT inside the node -> the registry).
for node in $(kind get nodes --name "$CLUSTER"); do
  docker exec "$node" mkdir -p "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}"
  printf '[host."http://%s:5000"]\n' "$REGISTRY_NAME" |
    docker exec -i "$node" cp /dev/stdin "/etc/containerd/certs.d/localhost:${REGISTRY_PORT}/hosts.toml"
done
if [ "$(docker inspect -f '{{json .NetworkSettings.Networks.kind}}' "$REGISTRY_NAME")" = "null" ]; then
  docker network connect kind "$REGISTRY_NAME"
fi
kubectl --context "$CONTEXT" apply -f - <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: local-registry-hosting
  namespace: kube-public
data:
  localRegistryHosting.v1: |
    host: "localhost:${REGISTRY_PORT}"
    help: "https://kind.sigs.k8s.io/docs/user/local-registry/"
YAML

log "Helm repositories"
helm repo add temporal https://go.temporal.io/helm-charts >/dev/null 2>&1 || true
helm repo add prometheus-community https://prometheus-community.github.io/helm-charts >/dev/null 2>&1 || true
helm repo update temporal prometheus-community >/dev/null

log "kube-prometheus-stack ${KPS_CHART_VERSION} (namespace monitoring)"
helm --kube-context "$CONTEXT" upgrade --install kube-prometheus-stack \
  prometheus-community/kube-prometheus-stack --version "$KPS_CHART_VERSION" \
  --namespace monitoring --create-namespace \
  -f "$HERE/kube-prometheus-stack-values.yaml" --wait --timeout 10m

log "Postgres for Temporal (namespace ${NAMESPACE})"
kubectl --context "$CONTEXT" create namespace "$NAMESPACE" --dry-run=client -o yaml |
  kubectl --context "$CONTEXT" apply -f -
kubectl --context "$CONTEXT" -n "$NAMESPACE" apply -f "$HERE/postgres.yaml"
kubectl --context "$CONTEXT" -n "$NAMESPACE" rollout status statefulset/temporal-postgres --timeout 5m

log "Temporal chart ${TEMPORAL_CHART_VERSION} (release temporal)"
helm --kube-context "$CONTEXT" upgrade --install temporal temporal/temporal \
  --version "$TEMPORAL_CHART_VERSION" --namespace "$NAMESPACE" \
  -f "$HERE/temporal-values.yaml" --wait --timeout 15m

log "bert-finetune images and chart (skaffold profile dev)"
cd "$REPO_ROOT"
skaffold run -p dev --kube-context "$CONTEXT" --default-repo "localhost:${REGISTRY_PORT}" \
  --status-check=true

log "Checking that both task queues have pollers (helm test)"
helm --kube-context "$CONTEXT" test bert-finetune --namespace "$NAMESPACE" --logs

cat <<EOF

Stack is up (context ${CONTEXT}, namespace ${NAMESPACE}).
  Check it:    .venv/bin/bert-finetune doctor --context ${CONTEXT} --namespace ${NAMESPACE} --release bert-finetune
  Temporal UI: kubectl --context ${CONTEXT} -n ${NAMESPACE} port-forward svc/temporal-web 8080:8080
  Grafana:     kubectl --context ${CONTEXT} -n monitoring port-forward svc/kube-prometheus-stack-grafana 3000:80
               (user admin, password admin)
  Iterate:     skaffold dev -p dev --kube-context ${CONTEXT} --default-repo localhost:${REGISTRY_PORT}
  Tear down:   make k8s-down
EOF
