#!/usr/bin/env bash
# README "Run it on kind", end to end: a kind cluster, the operator built from this checkout and
# installed with its chart, the ml-serving example's charts served on the kind network, the
# tenant's RBAC, the example state, and a wait until it is Ready. Every step converges, so a
# re-run picks up a rebuilt image or changed charts. hack/kind/down.sh removes it all.
#
# Needs docker, kind, kubectl and helm. Every kubectl and helm command names the cluster's
# context: the script never acts on whatever cluster happens to be current.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER=helmfile-operator # `name` in kind-config.yaml
CONTEXT=kind-$CLUSTER
NODE=$CLUSTER-control-plane # the cluster's only node
NETWORK=${KIND_EXPERIMENTAL_DOCKER_NETWORK:-kind} # the docker network of kind's nodes
IMAGE=helmfile-operator:dev
CHART_VALUES=(--set image.repository=helmfile-operator --set image.tag=dev)

# A plain-HTTP chart repository in a container on the kind network: pods resolve container names
# there through the node's DNS. (An OCI registry without TLS would not do: helm needs
# --plain-http for it, which the operator never passes.)
CHARTS_CONTAINER=kind-charts
CHARTS_URL=http://$CHARTS_CONTAINER:8080
SERVER_IMAGE=python:3.11-slim-bookworm # the Dockerfile's base image

EXAMPLE=$ROOT/examples/ml-serving-stack
EXAMPLE_URL=http://127.0.0.1:8879 # the repository URL written in $EXAMPLE/state.yaml
NAMESPACE=ml-serving
STATE=ml-serving-stack
# The example's own images (ghcr.io/example/...) are placeholders that no registry serves; the
# test bed never pulls them. Here containers run, so those charts run this image instead.
PLACEHOLDER_IMAGES=ghcr.io/example/
STAND_IN_IMAGE=registry.k8s.io/pause:3.10

step() { printf '\n==> %s\n' "$*"; }
die() {
	printf 'hack/kind/up.sh: %s\n' "$*" >&2
	exit 1
}

# Copies the charts of $1 into $2; a chart whose image is a placeholder gets the stand-in image.
# Its image line is replaced, not its values: the state sets `image.tag` of model-server.
stage_charts() {
	local chart target template
	mkdir -p "$2"
	for chart in "$1"/*/; do
		chart=${chart%/}
		target=$2/$(basename "$chart")
		cp -R "$chart" "$target"
		grep -qF "repository: $PLACEHOLDER_IMAGES" "$target/values.yaml" || continue
		for template in "$target"/templates/*.yaml; do
			# sed into a copy: `sed -i` differs between GNU and BSD (macOS) sed.
			sed -E "s#^([[:space:]]*image:[[:space:]]*).*\.Values\.image\.repository.*#\1\"$STAND_IN_IMAGE\"#" \
				"$template" >"$template.new"
			mv "$template.new" "$template"
		done
		grep -qF "\"$STAND_IN_IMAGE\"" "$target"/templates/*.yaml ||
			die "no image line to replace in $target/templates"
	done
}

# The images the charts staged in $1 run, one per line (values written as
# `image: {repository: R, tag: T}`, as the example's charts do).
chart_images() {
	local chart
	for chart in "$1"/*/; do
		if grep -qF "\"$STAND_IN_IMAGE\"" "$chart"templates/*.yaml; then
			echo "$STAND_IN_IMAGE"
		else
			sed -nE 's/^image: \{repository: ([^,]+), tag: "?([^"}]+)"?\}[[:space:]]*$/\1:\2/p' \
				"${chart}values.yaml"
		fi
	done | sort -u
}

# The example state, its repository URL pointed at the chart server.
rewrite_state() {
	grep -qF "url: $EXAMPLE_URL" "$EXAMPLE/state.yaml" ||
		die "$EXAMPLE/state.yaml does not name $EXAMPLE_URL (EXAMPLE_URL is out of date)"
	sed "s#url: $EXAMPLE_URL\$#url: $CHARTS_URL#" "$EXAMPLE/state.yaml"
}

main() {
	local tool image image_id work
	for tool in docker kind kubectl helm; do
		command -v "$tool" >/dev/null || die "$tool is not on PATH (needed: docker, kind, kubectl, helm)"
	done
	cd "$ROOT"
	work=$(mktemp -d)
	# shellcheck disable=SC2064 # expand $work now: it is local to main
	trap "rm -rf '$work'" EXIT

	step "Create the kind cluster"
	# grep without -q reads all of kind's output: no SIGPIPE for pipefail to report.
	if kind get clusters 2>/dev/null | grep -x "$CLUSTER" >/dev/null; then
		echo "kind cluster $CLUSTER exists"
	else
		kind create cluster --config kind-config.yaml
	fi

	step "Build the operator image and load it into the node"
	docker build -t "$IMAGE" .
	kind load docker-image "$IMAGE" --name "$CLUSTER"
	image_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")

	step "Serve the example's charts on the kind network"
	stage_charts "$EXAMPLE/charts" "$work/charts"
	mkdir "$work/repo"
	helm package "$work"/charts/* --destination "$work/repo"
	helm repo index "$work/repo" --url "$CHARTS_URL"
	docker rm -f "$CHARTS_CONTAINER" >/dev/null 2>&1 || true
	docker create --name "$CHARTS_CONTAINER" --network "$NETWORK" "$SERVER_IMAGE" \
		python -m http.server 8080 --directory /srv/charts
	docker cp "$work/repo/." "$CHARTS_CONTAINER:/srv/charts"
	docker start "$CHARTS_CONTAINER"

	# Pulled before any helm timeout runs (the example's is 120s): a slow first pull fails nothing.
	step "Pull the example's images into the node"
	chart_images "$work/charts" >"$work/images"
	while read -r image; do
		docker exec "$NODE" crictl pull "$image" </dev/null ||
			echo "warning: could not pull $image now; the kubelet will retry"
	done <"$work/images"

	step "Install the operator chart"
	kubectl --context "$CONTEXT" apply --server-side --force-conflicts -f crds/
	# The image ID as a pod annotation: a rebuilt image (same tag) restarts the operator.
	helm upgrade --install helmfile-operator charts/helmfile-operator --kube-context "$CONTEXT" \
		--namespace helmfile-system --create-namespace "${CHART_VALUES[@]}" \
		--set-string "podAnnotations.image-id=$image_id" --wait --timeout 5m

	step "Grant the tenant its RBAC"
	kubectl --context "$CONTEXT" apply -f hack/kind/tenant-rbac.yaml

	step "Apply the example state, its repository pointed at the chart server"
	rewrite_state | kubectl --context "$CONTEXT" apply -f -

	step "Wait until the state is Ready"
	if ! kubectl --context "$CONTEXT" wait --for=condition=Ready "hfs/$STATE" -n "$NAMESPACE" \
		--timeout=10m; then
		kubectl --context "$CONTEXT" get hfs,hfr -n "$NAMESPACE" -o wide || true
		die "hfs/$STATE is not Ready (conditions above); operator log:" \
			"kubectl --context $CONTEXT logs -n helmfile-system deploy/helmfile-operator"
	fi
	kubectl --context "$CONTEXT" get hfs,hfr -n "$NAMESPACE"
	cat <<EOF

Ready. Look around with --context $CONTEXT, e.g.:
    kubectl --context $CONTEXT get hfs,hfr,pods -n $NAMESPACE
    kubectl --context $CONTEXT edit hfs $STATE -n $NAMESPACE   # e.g. environment: prod
hack/kind/down.sh deletes the cluster and the chart server.
EOF
}

# Sourcing defines the settings and functions only (the tests do that).
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
	main "$@"
fi
