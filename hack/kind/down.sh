#!/usr/bin/env bash
# Removes what hack/kind/up.sh created: the kind cluster and the chart server container.
set -euo pipefail
# shellcheck source=hack/kind/up.sh
source "$(dirname "${BASH_SOURCE[0]}")/up.sh"

kind delete cluster --name "$CLUSTER"
docker rm -f "$CHARTS_CONTAINER" >/dev/null 2>&1 || true
