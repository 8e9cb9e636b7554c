# syntax=docker/dockerfile:1
# The helmfile-operator image: the Python package with its locked dependencies, and helm built
# from its Go module exactly as hack/testbin builds it for the test bed.
#
#   docker build -t helmfile-operator:dev .
#
# Base images are pinned by tag here. Release builds pin them by digest as well
# (FROM golang:1.26-bookworm@sha256:…), so that a rebuilt tag upstream cannot change a release.
# The runtime expects a writable /tmp only (an emptyDir in the chart): the root filesystem may be
# read-only.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- helm, from the Go module proxy -----------------------------------------------------------
FROM golang:1.26-bookworm AS helm

# Keep in step with HELM_VERSION in hack/testbin (tests/unit/test_dockerfile.py checks it).
ARG HELM_VERSION=v4.3.1
ENV CGO_ENABLED=0 \
    GOFLAGS=-buildvcs=false \
    GOTOOLCHAIN=local
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src/helm
# A throwaway module (`go install pkg@version` refuses modules with replace directives): tools.go
# imports the main package so that `go mod tidy` resolves exactly what it needs, and helm's own
# replace directives (forks and fixes it was tested with) are copied, minus the relative ones.
RUN printf 'module testbin/helm\n\ngo 1.24\n' >go.mod \
    && printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "%s"\n)\n' \
        helm.sh/helm/v4/cmd/helm >tools.go \
    && echo "require helm.sh/helm/v4 ${HELM_VERSION}" >>go.mod \
    && gomod="$(go mod download -json "helm.sh/helm/v4@${HELM_VERSION}" \
        | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')" \
    && { awk '/^replace \($/{b=1; next} b && /^\)/{b=0; next} b {print "replace " $0} /^replace [^(]/{print}' \
            "${gomod}" | grep -v '=> \.' >>go.mod || true; } \
    && go mod tidy \
    && go build -trimpath \
        -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
        -o /out/helm helm.sh/helm/v4/cmd/helm \
    && /out/helm version

# --- the Python package and its locked dependencies -------------------------------------------
FROM ${PYTHON_IMAGE} AS python

ARG UV_VERSION=0.13.8
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PYTHON=/usr/local/bin/python3 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN pip install --no-cache-dir "uv==${UV_VERSION}"
WORKDIR /src
# Dependencies first (a layer that changes only with the lock file), then the package itself.
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project --no-cache
COPY README.md ./
COPY operator/ operator/
# --no-editable: the package is installed into the venv, which needs no source tree at run time.
RUN uv sync --frozen --no-dev --no-editable --no-cache \
    && /opt/venv/bin/helmfile-operator --version

# --- runtime ------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="helmfile-operator" \
      org.opencontainers.image.description="Kubernetes operator that reconciles helmfile-style states (environments, templated values, needs ordering) as custom resources" \
      org.opencontainers.image.source="https://github.com/helmfile-operator/helmfile-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"

# The same uid/gid as distroless' "nonroot"; the chart's securityContext runs as it too.
RUN groupadd --gid 65532 nonroot \
    && useradd --no-log-init --uid 65532 --gid 65532 --home-dir /tmp --shell /usr/sbin/nologin \
        nonroot

COPY --from=helm /out/helm /usr/local/bin/helm
COPY --from=python /opt/venv /opt/venv

# Everything that writes goes under /tmp (an emptyDir in the chart): helm's cache, config and
# data, temporary values files, and HOME for anything that looks there.
ENV PATH=/opt/venv/bin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    HELM_CACHE_HOME=/tmp/helm/cache \
    HELM_CONFIG_HOME=/tmp/helm/config \
    HELM_DATA_HOME=/tmp/helm/data \
    HELMFILE_OPERATOR_HELM_BINARY=/usr/local/bin/helm

USER 65532:65532
WORKDIR /tmp
# 8080: /metrics and /readyz; 8081: /healthz (kopf's liveness endpoint).
EXPOSE 8080 8081
ENTRYPOINT ["helmfile-operator"]
CMD ["run"]
