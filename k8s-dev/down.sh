#!/usr/bin/env bash
# Tear down what up.sh created: the kind cluster (with every release and volume in it) and
# the local registry container. Set KEEP_REGISTRY=1 to keep pushed images for the next run.
set -euo pipefail

CLUSTER="${CLUSTER:-bert-finetune}"
REGISTRY_NAME="${REGISTRY_NAME:-kind-registry}"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  kind delete cluster --name "$CLUSTER"
else
  echo "no kind cluster named ${CLUSTER}"
fi
if [ "${KEEP_REGISTRY:-0}" != "1" ] && docker inspect "$REGISTRY_NAME" >/dev/null 2>&1; then
  docker rm -f "$REGISTRY_NAME"
fi
