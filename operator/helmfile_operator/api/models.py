"""The API: pydantic models of HelmfileState and HelmfileRelease (group helmfile.dev, v1alpha1).

These models are the single source of truth: the CRDs in `crds/` and `docs/api.md` are generated
from them (see `crd.py`), and the controllers parse every object through them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

GROUP = "helmfile.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Helm stores releases in Secrets named sh.helm.release.v1.<name>.v<rev>: hence 53 characters.
HELM_RELEASE_NAME_MAX = 53
# A label value has at most 63 characters, an object name up to 253: names used as label values
# (a HelmfileState's, on its HelmfileReleases) need the tighter bound.
LABEL_VALUE_MAX = 63
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A ServiceAccount name: a DNS subdomain.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_MAX = 253
# A chart's name in its repository: no `/`, no leading `.` and no scheme, so that it can never
# name a path (`../x`, `/etc`) or another location (`file://`) to helm.
CHART_NAME = r"^[a-zA-Z0-9][a-zA-Z0-9._-]*$"
CHART_NAME_MAX = 250
# Go duration as Kubernetes and helm accept it: "300s", "10m", "1h30m".
DURATION = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

MAX_RELEASES = 2000
# The longest helm timeout a spec may ask for (a run holds one of the operator's helm slots).
MAX_HELM_TIMEOUT = "24h"
MAX_HELM_TIMEOUT_MESSAGE = (
    f"the helm timeout (helm.timeout, helmDefaults.timeout) must be at most {MAX_HELM_TIMEOUT}: "
    "a helm action may not wait longer; choose a shorter duration"
)

Duration = Annotated[str, Field(pattern=DURATION, examples=["300s", "10m"])]
Values = dict[str, Any]


# The CRD's rule on every helm timeout field.
_BOUNDED_TIMEOUT: dict[str, Any] = {
    "x-kubernetes-validations": [
        {
            "rule": f"duration(self) <= duration('{MAX_HELM_TIMEOUT}')",
            "message": MAX_HELM_TIMEOUT_MESSAGE,
            "reason": "FieldValueInvalid",
        }
    ]
}


def _check_timeout(timeout: str | None) -> str | None:
    """The CRD's rule, for objects that did not pass through the API server (tests, renders)."""
    if timeout is not None and duration_seconds(timeout) > duration_seconds(MAX_HELM_TIMEOUT):
        raise ValueError(MAX_HELM_TIMEOUT_MESSAGE)
    return timeout


def describe_validation_error(error: ValidationError, prefix: str = "spec") -> str:
    """`spec.releases.0.name: String should have at most 53 characters; …` (never the input)."""
    return "; ".join(
        f"{prefix}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()[:5]
    )


def duration_seconds(duration: str) -> float:
    """Seconds in a Go-style duration string (validated by the DURATION pattern)."""
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(duration))


class Model(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields are errors, not silently lost."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON shape Kubernetes stores: aliases, no unset optionals."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --- shared pieces -----------------------------------------------------------------------------

# The RFC 3339 UTC timestamps the operator writes into status fields.
_TIMESTAMP = "RFC 3339 UTC timestamp, e.g. `2024-05-01T12:00:00Z`"
_DIGEST = "`sha256:<hex>` of the chart (repository URL, name, version) and the final values"


class ValuesReference(Model):
    """Values read from a ConfigMap or Secret key at helm time; Secret data never reaches a CR."""

    kind: Literal["ConfigMap", "Secret"] = Field(
        description="Kind of the object holding the values: `ConfigMap` or `Secret`."
    )
    name: str = Field(
        min_length=1,
        max_length=253,
        description="Name of the ConfigMap or Secret, in the namespace of the object.",
    )
    key: str = Field(
        default="values.yaml",
        min_length=1,
        description="Data key holding a YAML map of values.",
    )
    optional: bool = Field(
        default=False,
        description="A missing object or key is skipped instead of an error.",
    )


class SetValue(Model):
    """One value at a dotted path, applied after every other source (like `helm --set`)."""

    name: str = Field(
        min_length=1,
        description="Dotted path, e.g. `model.threshold`; `\\.` escapes a dot inside a key and "
        "`[N]` indexes a list (`hosts[0].name`).",
    )
    value: Any = Field(description="Any JSON value; strings stay strings (no type guessing).")


class DriftMode(StrEnum):
    DISABLED = "disabled"
    WARN = "warn"
    CORRECT = "correct"


class DriftIgnoreTarget(Model):
    """Which released objects an ignore rule applies to: all given fields must match."""

    kind: str | None = Field(default=None, description="Object kind, e.g. `Deployment`.")
    name: str | None = Field(
        default=None, description="Object name; a glob (`web-*`) matches several."
    )
    namespace: str | None = Field(default=None, description="Namespace of the object.")
    labels: dict[str, str] | None = Field(
        default=None, description="Labels the object must carry, each with this value."
    )


class DriftIgnoreRule(Model):
    """Differences under these JSON pointers (prefixes) are not drift, on the matching objects."""

    paths: list[str] = Field(
        min_length=1, description="JSON pointers, e.g. `/spec/replicas` (a prefix matches below)."
    )
    target: DriftIgnoreTarget | None = Field(
        default=None, description="Only objects matching all given fields; none: every object."
    )


class DriftDetection(Model):
    """`warn` records drift; `correct` also restores the objects from the release manifest."""

    mode: DriftMode = Field(
        default=DriftMode.DISABLED,
        description="`disabled`: no check; `warn`: compare the live objects with the release "
        "manifest on every interval and report differences; `correct`: also re-apply the "
        "manifest.",
    )
    ignore: list[DriftIgnoreRule] = Field(
        default_factory=list, description="Differences that are not drift (e.g. autoscaled fields)."
    )


class ApprovalMode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Approval(Model):
    """Whether a computed plan is applied at once or waits for someone to approve it."""

    mode: ApprovalMode = Field(
        default=ApprovalMode.AUTO,
        description="`auto`: apply each plan as soon as it is computed (it is still recorded "
        "first); `manual`: stop after the plan (`Ready=False`, reason `AwaitingApproval`) until "
        "the annotation `helmfile.dev/approve: <plan id>` approves exactly that plan.",
    )


class Rollout(Model):
    """How the releases changed by one generation of a state roll out together."""

    atomic: bool = Field(
        default=False,
        description="`true`: when one release of the rollout fails (after its own "
        "remediation), the releases already upgraded by it are rolled back to their revisions "
        "from before it, in reverse `needs` order, and those not yet started are held.",
    )


class CrdPolicy(StrEnum):
    SKIP = "Skip"
    CREATE = "Create"
    CREATE_REPLACE = "CreateReplace"


class CrdOptions(Model):
    """What happens to the CustomResourceDefinitions in the chart's `crds/` directory (CRDs in
    `templates/` are ordinary objects of the release). CRDs are never deleted with a release."""

    install: CrdPolicy | None = Field(
        default=None,
        description="On install: `Create` (helm creates those that do not exist), `Skip`, or "
        "`CreateReplace` (the operator applies them server-side, as the ServiceAccount helm runs "
        "as, replacing what exists). Default: `Create`.",
    )
    upgrade: CrdPolicy | None = Field(
        default=None,
        description="On upgrade: `Skip` (helm's behaviour: never touched), `Create` (create "
        "those that do not exist), or `CreateReplace` (apply them server-side, so a new field "
        "of the chart's CRD reaches the cluster). Default: `Skip`.",
    )


class TestOptions(Model):
    """`helm test` after every successful install or upgrade."""

    __test__ = False  # not a pytest test class

    enable: bool | None = Field(
        default=None, description="Run the chart's tests (`helm.sh/hook: test`). Default: `false`."
    )
    timeout: Duration | None = Field(
        default=None,
        description="helm test's --timeout, a Go duration, at most "
        f"{MAX_HELM_TIMEOUT}. Default: the release's `timeout`.",
        json_schema_extra=_BOUNDED_TIMEOUT,
    )
    ignore_failures: bool | None = Field(
        default=None,
        description="A failed test is reported (`TestSuccess=False`) but the release stays "
        "Ready and is not remediated. Default: `false`: a failed test fails the release.",
    )

    _bounded_timeout = field_validator("timeout")(_check_timeout)


class HelmOptions(Model):
    """Options of `helm upgrade --install`; per-release fields override the state's helmDefaults."""

    wait: bool | None = Field(
        default=None,
        description="Wait until the release's resources are ready before it counts as deployed. "
        "Default: `true`.",
    )
    wait_for_jobs: bool | None = Field(
        default=None,
        description="With `wait`, also wait until the release's Jobs have completed. "
        "Default: `false`.",
    )
    atomic: bool | None = Field(
        default=None,
        description="The operator rolls back a failed upgrade (a failed install is uninstalled). "
        "Default: `true`.",
    )
    timeout: Duration | None = Field(
        default=None,
        description=f"helm's --timeout for one action, a Go duration (`300s`, `10m`), at most "
        f"{MAX_HELM_TIMEOUT}; the operator may cap it lower. Default: `300s`.",
        json_schema_extra=_BOUNDED_TIMEOUT,
    )
    create_namespace: bool | None = Field(
        default=None,
        description="Create the target namespace if it does not exist (the ServiceAccount helm "
        "runs as needs the right to). Default: `true`.",
    )
    history_max: int | None = Field(
        default=None,
        ge=0,
        description="Revisions helm keeps per release (`0`: no limit). Default: `10`.",
    )
    retries: int | None = Field(
        default=None,
        ge=0,
        description="Retries of a failed install/upgrade of the same spec before the release is "
        "Stalled (transient errors are retried without limit). Default: `3`.",
    )
    crds: CrdOptions | None = Field(
        default=None,
        description="CRDs of the chart's `crds/` directory on install and upgrade. Default: "
        "`{install: Create, upgrade: Skip}`.",
    )
    test: TestOptions | None = Field(
        default=None,
        description="`helm test` after each install/upgrade. Default: "
        "`{enable: false, ignoreFailures: false}`.",
    )

    _bounded_timeout = field_validator("timeout")(_check_timeout)


DEFAULT_HELM_OPTIONS = HelmOptions(
    wait=True,
    wait_for_jobs=False,
    atomic=True,
    timeout="300s",
    create_namespace=True,
    history_max=10,
    retries=3,
    crds=CrdOptions(install=CrdPolicy.CREATE, upgrade=CrdPolicy.SKIP),
    test=TestOptions(enable=False, ignore_failures=False),
)


def merge_helm_options(*layers: HelmOptions | None) -> HelmOptions:
    """Later layers win field by field (`crds` and `test` too, one level down); unset (None)
    fields fall through."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is None:
            continue
        for name, value in layer.model_dump(exclude_none=True).items():
            if isinstance(value, dict) and isinstance(merged.get(name), dict):
                merged[name] = {**merged[name], **value}
            else:
                merged[name] = value
    return HelmOptions(**merged)


# --- HelmfileState ------------------------------------------------------------------------------


class ChartRepository(Model):
    """Where the chart comes from (copied from the state's `repositories`)."""

    url: str = Field(
        pattern=r"^(https?|oci)://.+",
        description="`http(s)://` chart repository or `oci://` prefix.",
    )
    secret_ref: str | None = Field(
        default=None,
        description="Secret with `username` and `password` (same namespace). Default: none "
        "(anonymous).",
    )
    ca_secret_ref: str | None = Field(
        default=None,
        description="Secret with `ca.crt`, a PEM bundle trusted for the repository's TLS "
        "certificate (same namespace). Default: the system's CAs.",
    )
    insecure_skip_tls_verify: bool = Field(
        default=False,
        description="Do not verify the repository's TLS certificate.",
    )


class Repository(ChartRepository):
    """A chart repository that releases name as `<name>/<chart>`."""

    name: str = Field(
        pattern=DNS_LABEL,
        max_length=63,
        description="Name that `chart: <name>/<chart>` refers to (a DNS label).",
    )


class EnvironmentValuesReference(ValuesReference):
    """Environment values feed templates whose output is stored in HelmfileRelease specs, so they
    may only come from ConfigMaps: Secret data belongs in a release's `valuesFrom`."""

    kind: Literal["ConfigMap"] = Field(
        description="Always `ConfigMap`: environment values end up in HelmfileRelease specs."
    )


class SecretKeyReference(Model):
    """A key of a Secret in the object's own namespace."""

    name: str = Field(
        pattern=DNS_SUBDOMAIN,
        max_length=DNS_SUBDOMAIN_MAX,
        description="Name of the Secret, in the namespace of the object.",
    )
    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Data key. Default: `value`, else `value.yaml` (as Flux reads it).",
    )


class KubeConfigReference(Model):
    """A kubeconfig that points helm, Helm's storage reads and drift checks at another cluster."""

    secret_ref: SecretKeyReference = Field(
        description="Secret key holding the kubeconfig (its current context is used). Only "
        "inline credentials (`token`, `client-certificate-data`, …): file paths are refused, and "
        "`exec`/`auth-provider` plugins unless the operator allows them (docs/clusters.md)."
    )


class Environment(Model):
    """One named set of values that templates (`environment.values`) and `condition` read."""

    values: list[Values] = Field(
        default_factory=list,
        description="Maps of values, merged in order (later ones win, maps merge key by key).",
    )
    values_from: list[EnvironmentValuesReference] = Field(
        default_factory=list,
        description="ConfigMap keys holding more values, merged after `values`, in order.",
    )
    kube_config: KubeConfigReference | None = Field(
        default=None,
        description="The cluster this environment's releases deploy to (a release's own "
        "`kubeConfig` wins). Default: the state's `kubeConfig`.",
    )


class ReleaseTemplate(Model):
    """One release of a state, before rendering."""

    name: str = Field(
        pattern=DNS_LABEL,
        max_length=HELM_RELEASE_NAME_MAX,
        description="Helm release name, unique within the state (a DNS label, at most 53 "
        "characters); the HelmfileRelease is named `<state>-<name>`.",
    )
    namespace: str | None = Field(
        default=None,
        pattern=DNS_LABEL,
        max_length=63,
        description="Namespace the release is installed into. Default: the state's.",
    )
    chart: str = Field(
        min_length=1, description="`<repository>/<chart>` or a full `oci://` reference."
    )
    version: str | None = Field(
        default=None,
        description="Exact version or semver range. Default: the latest version.",
    )
    condition: str | None = Field(
        default=None,
        description="Path into environment values, e.g. `redis.enabled`, that must be `true` or "
        "`false`; `false` uninstalls the release. Default: always installed.",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="Free-form labels that templates read as `release.labels`.",
    )
    values: list[Values] = Field(
        default_factory=list,
        description="Maps of chart values, merged in order (later ones win).",
    )
    values_template: list[str] = Field(
        default_factory=list,
        description="Jinja2 templates rendering to YAML maps, merged after `values`, in order.",
    )
    values_from: list[ValuesReference] = Field(
        default_factory=list,
        description="ConfigMap or Secret keys read at helm time, merged after the rendered values.",
    )
    set: list[SetValue] = Field(
        default_factory=list, description="Single values set last, like `helm --set`."
    )
    needs: list[str] = Field(
        default_factory=list, description="Releases installed first: `name` or `namespace/name`."
    )
    installed: bool = Field(default=True, description="`false` uninstalls the release.")
    helm: HelmOptions | None = Field(
        default=None, description="Overrides of helmDefaults for this release."
    )
    drift_detection: DriftDetection | None = Field(
        default=None,
        description="Drift detection of this release. Default: the state's `driftDetection`.",
    )
    approval: Approval | None = Field(
        default=None, description="Approval of this release's plans. Default: the state's."
    )
    kube_config: KubeConfigReference | None = Field(
        default=None,
        description="The cluster this release deploys to. Default: the selected environment's "
        "`kubeConfig`, else the state's.",
    )


class DeletionPolicy(StrEnum):
    UNINSTALL = "Uninstall"
    KEEP = "Keep"


class HelmfileStateSpec(Model):
    """HelmfileState: many Helm releases with environments, templated values and `needs` order."""

    environment: str = Field(
        default="default",
        description="Which entry of `environments` applies; `default` needs no entry.",
    )
    environments: dict[str, Environment] = Field(
        default_factory=dict, description="Named value sets that templates and `condition` read."
    )
    repositories: list[Repository] = Field(
        default_factory=list, description="Chart repositories that `chart: <name>/<chart>` uses."
    )
    helm_defaults: HelmOptions | None = Field(
        default=None, description="helm options for every release (each release may override)."
    )
    interval: Duration = Field(
        default="10m",
        description="Resync period of every release (and of its drift check), a Go duration "
        "(`30s`, `10m`, `1h`).",
    )
    suspend: bool = Field(
        default=False,
        description="Pause every release: spec changes reach the HelmfileReleases, helm runs not.",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=DNS_SUBDOMAIN_MAX,
        description="helm runs impersonating this ServiceAccount of the state's namespace. "
        "Default: the operator's default ServiceAccount (normally the namespace's `default`).",
    )
    drift_detection: DriftDetection | None = Field(
        default=None,
        description="Drift detection of every release (a release's own setting wins). "
        "Default: disabled.",
    )
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.UNINSTALL,
        description="`Keep` leaves the Helm releases installed when the state is deleted.",
    )
    approval: Approval | None = Field(
        default=None,
        description="Approval of every release's plans (a release's own setting wins). "
        "Default: `auto`.",
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How one generation's changes roll out. Default: release by release "
        "(`atomic: false`).",
    )
    kube_config: KubeConfigReference | None = Field(
        default=None,
        description="The cluster every release deploys to (an environment's or a release's own "
        "`kubeConfig` wins). Default: the operator's own cluster.",
    )
    releases: list[ReleaseTemplate] = Field(
        default_factory=list,
        max_length=MAX_RELEASES,
        description=f"The releases, one HelmfileRelease each (at most {MAX_RELEASES}).",
    )

    @field_validator("releases")
    @classmethod
    def _unique_release_ids(cls, releases: list[ReleaseTemplate]) -> list[ReleaseTemplate]:
        # Unique by name alone (not namespace/name): `needs: [redis]` must never be ambiguous, and
        # the CRD enforces the same with a list-map keyed by name.
        seen: set[str] = set()
        for release in releases:
            if release.name in seen:
                raise ValueError(
                    f"release {release.name!r} is listed twice: release names must be unique "
                    "within a state"
                )
            seen.add(release.name)
        return releases


# --- HelmfileRelease ----------------------------------------------------------------------------


class ChartReference(Model):
    """A chart: its repository, name and version."""

    repository: ChartRepository = Field(description="The repository holding the chart.")
    name: str = Field(
        min_length=1,
        max_length=CHART_NAME_MAX,
        pattern=CHART_NAME,
        description="The chart's name in the repository (no path, no URL).",
    )
    version: str | None = Field(
        default=None,
        description="Exact version or semver range. Default: the latest version.",
    )

    @property
    def is_oci(self) -> bool:
        return self.repository.url.startswith("oci://")


class HelmfileReleaseSpec(Model):
    """HelmfileRelease: one Helm release, rendered from a HelmfileState or written by hand."""

    release_name: str = Field(
        pattern=DNS_LABEL,
        max_length=HELM_RELEASE_NAME_MAX,
        description="Helm release name (a DNS label, at most 53 characters).",
    )
    target_namespace: str = Field(
        pattern=DNS_LABEL, max_length=63, description="Namespace the release is installed into."
    )
    chart: ChartReference = Field(description="The chart to install.")
    values: Values = Field(
        default_factory=dict, description="Rendered values. Never holds data read from Secrets."
    )
    values_from: list[ValuesReference] = Field(
        default_factory=list,
        description="ConfigMap or Secret keys read at helm time, merged over `values`, in order.",
    )
    set: list[SetValue] = Field(
        default_factory=list, description="Single values set last, like `helm --set`."
    )
    helm: HelmOptions | None = Field(
        default=None, description="helm options; unset fields take the defaults shown there."
    )
    needs: list[str] = Field(
        default_factory=list,
        description="HelmfileRelease names (same namespace) to be Ready first.",
    )
    installed: bool = Field(default=True, description="`false` uninstalls and keeps it so.")
    suspend: bool = Field(default=False, description="No helm action while `true`.")
    interval: Duration = Field(
        default="10m",
        description="Resync period (and drift check period), a Go duration (`30s`, `10m`, `1h`).",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=DNS_SUBDOMAIN_MAX,
        description="helm runs impersonating this ServiceAccount (same namespace). Default: the "
        "operator's default ServiceAccount (normally the namespace's `default`).",
    )
    drift_detection: DriftDetection | None = Field(
        default=None, description="Drift detection of this release. Default: disabled."
    )
    approval: Approval | None = Field(
        default=None, description="Approval of this release's plans. Default: `auto`."
    )
    kube_config: KubeConfigReference | None = Field(
        default=None,
        description="The cluster the release deploys to; the HelmfileRelease and its status "
        "stay here. Default: the operator's own cluster.",
    )

    def helm_options(self) -> HelmOptions:
        return merge_helm_options(DEFAULT_HELM_OPTIONS, self.helm)


# --- status -------------------------------------------------------------------------------------


class Condition(Model):
    """A kstatus condition (`kubectl wait --for=condition=Ready` reads them)."""

    type: str = Field(description="Condition type, e.g. `Ready`.")
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(description="CamelCase reason, e.g. `Upgraded` or `NeedsNotReady`.")
    message: str = Field(default="", description="Human-readable details.")
    last_transition_time: str = Field(description=f"When `status` last changed: {_TIMESTAMP}.")
    observed_generation: int | None = Field(
        default=None, description="`metadata.generation` the condition was set for."
    )


class LastAttempt(Model):
    """The last install or upgrade the operator ran."""

    action: str = Field(description="`install` or `upgrade`.")
    digest: str = Field(description=f"Digest of what was applied: {_DIGEST}.")
    result: Literal["succeeded", "failed"] = Field(description="`succeeded` or `failed`.")
    duration_seconds: float = Field(description="How long helm ran, in seconds.")
    time: str = Field(description=f"When helm returned: {_TIMESTAMP}.")
    message: str = Field(default="", description="helm's error, when it failed (redacted).")


class InProgress(Model):
    """A helm action the operator started and has not finished, recorded before helm starts: a
    `pending-*` release found with this set after a restart is the operator's own, and stale."""

    action: str = Field(description="`install` or `upgrade`.")
    started_at: str = Field(description=f"When helm started: {_TIMESTAMP}.")
    digest: str = Field(description="Digest of the values being applied.")
    revision_before: int | None = Field(
        default=None, description="Helm revision before the action; none for a first install."
    )
    chart_version: str | None = Field(default=None, description="The version being applied.")


class HistoryEntry(Model):
    """One revision the operator deployed."""

    revision: int = Field(description="Helm revision number.")
    chart_version: str = Field(description="Chart version of the revision.")
    digest: str = Field(description=f"Digest of the revision: {_DIGEST}.")
    status: str = Field(description="Outcome, e.g. `deployed`.")
    time: str = Field(description=f"When it was deployed: {_TIMESTAMP}.")


class InventoryEntry(Model):
    """One object of the deployed revision's manifest."""

    api_version: str = Field(description="apiVersion of the object, e.g. `apps/v1`.")
    kind: str = Field(description="Kind of the object, e.g. `Deployment`.")
    name: str = Field(description="Name of the object.")
    namespace: str | None = Field(
        default=None, description="Namespace of the object; none for cluster-scoped objects."
    )


class DriftedObject(Model):
    """One object of the release that differs from its manifest: paths only, never values."""

    api_version: str = Field(description="apiVersion of the object, e.g. `apps/v1`.")
    kind: str = Field(description="Kind of the object, e.g. `Deployment`.")
    name: str = Field(description="Name of the object.")
    namespace: str | None = Field(
        default=None, description="Namespace of the object; none for cluster-scoped objects."
    )
    missing: bool = Field(default=False, description="`true`: the object was deleted.")
    paths: list[str] = Field(default_factory=list, description="JSON pointers that differ.")


class DriftStatus(Model):
    """What the last drift check found."""

    detected_at: str = Field(description=f"When drift was first seen: {_TIMESTAMP}.")
    revision: int | None = Field(default=None, description="Helm revision that was compared.")
    objects: list[DriftedObject] = Field(
        default_factory=list, description="The objects that differ."
    )


class PlannedObject(Model):
    """One object a plan changes: what happens to it and which fields change, never values."""

    api_version: str = Field(description="apiVersion of the object, e.g. `apps/v1`.")
    kind: str = Field(description="Kind of the object, e.g. `Deployment`.")
    name: str = Field(description="Name of the object.")
    namespace: str | None = Field(
        default=None, description="Namespace of the object; none for cluster-scoped objects."
    )
    action: Literal["create", "update", "delete"] = Field(
        description="`create`, `update` or `delete`."
    )
    paths: list[str] = Field(
        default_factory=list, description="JSON pointers that change (`update` only)."
    )


class PlanCounts(Model):
    """Objects of a plan by what happens to them."""

    create: int = Field(default=0, description="Objects created.")
    update: int = Field(default=0, description="Objects changed.")
    delete: int = Field(default=0, description="Objects deleted.")
    unchanged: int = Field(default=0, description="Objects of the manifest left as they are.")


class ReleasePlan(Model):
    """What the last change of the release does (or will do, once approved)."""

    id: str = Field(
        description="Identifies the desired state planned for (spec generation, chart version, "
        "values): approve with `helmfile.dev/approve: <id>`."
    )
    action: Literal["install", "upgrade", "uninstall"] = Field(
        description="`install`, `upgrade` or `uninstall`."
    )
    phase: Literal["AwaitingApproval", "Approved", "Applied", "Failed"] = Field(
        description="`AwaitingApproval` (manual approval), `Approved` (being applied), "
        "`Applied` or `Failed` (the action failed; see the Ready condition)."
    )
    computed_at: str = Field(description=f"When the plan was computed: {_TIMESTAMP}.")
    digest: str | None = Field(
        default=None, description=f"Digest planned for: {_DIGEST} (none for an uninstall)."
    )
    chart_version_from: str | None = Field(
        default=None, description="Chart version deployed before; none for an install."
    )
    chart_version_to: str | None = Field(
        default=None, description="Chart version the plan deploys; none for an uninstall."
    )
    counts: PlanCounts = Field(
        default_factory=PlanCounts, description="Objects by what happens to them."
    )
    objects: list[PlannedObject] = Field(
        default_factory=list,
        description="The objects that change, in manifest order (at most 100; `counts` has all).",
    )
    values: list[str] = Field(
        default_factory=list,
        description="JSON pointers of the values that change (at most 100; never the values).",
    )
    diff_secret: str | None = Field(
        default=None,
        description="Secret (same namespace, owned by this object) holding the full text diff, "
        "Secret data masked: readable only by who may read the namespace's Secrets.",
    )
    message: str = Field(
        default="",
        description="What the plan could not know or store (e.g. the dry run failed, or the "
        "diff Secret could not be written), or why an approval was refused.",
    )
    refused_approval: str | None = Field(
        default=None,
        description="An approval that was refused because it names another plan (stale).",
    )


class RolloutHold(Model):
    """Set while an atomic rollout of the owning state holds this release (no helm runs)."""

    rollout: str = Field(description="The rollout (state name and generation).")
    rolled_back_to: int | None = Field(
        default=None, description="Revision this release was rolled back to, when it was."
    )
    revision: int | None = Field(
        default=None, description="Revision the rollback created (it holds `rolledBackTo`)."
    )


class ClusterStatus(Model):
    """The cluster a release targets, as its kubeconfig names it (never its credentials)."""

    name: str = Field(description="The cluster's name in the kubeconfig's current context.")
    server: str = Field(description="The cluster's API server URL.")


class HelmfileReleaseStatus(Model):
    """What the operator observed and did, written by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="`metadata.generation` of the last spec the operator handled."
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        description="`Ready`, `Reconciling`, `Stalled`, `Released`, `Remediated`, `Drifted`.",
    )
    revision: int | None = Field(default=None, description="Deployed Helm revision.")
    chart_name: str | None = Field(default=None, description="Name of the deployed chart.")
    chart_version: str | None = Field(default=None, description="Version of the deployed chart.")
    chart_version_range: str | None = Field(
        default=None,
        description="`spec.chart.version` when it is a range (or empty: the latest version), "
        "which is resolved again on every interval.",
    )
    resolved_chart_version: str | None = Field(
        default=None,
        description="The version the range resolved to at the last check; an upgrade follows "
        "when it differs from `chartVersion`.",
    )
    app_version: str | None = Field(default=None, description="appVersion of the deployed chart.")
    values_digest: str | None = Field(
        default=None, description=f"Digest of the deployed revision: {_DIGEST} (never the values)."
    )
    last_applied_digest: str | None = Field(
        default=None,
        description="Digest the operator last installed or upgraded; cleared on uninstall.",
    )
    last_applied_time: str | None = Field(
        default=None, description=f"When the last install or upgrade succeeded: {_TIMESTAMP}."
    )
    last_attempted: LastAttempt | None = Field(
        default=None, description="The last install or upgrade, successful or not."
    )
    in_progress: InProgress | None = Field(
        default=None, description="Set while a helm action of the operator runs on the release."
    )
    failures: int = Field(
        default=0, description="Failed attempts since the last success (backoff and `retries`)."
    )
    last_handled_reconcile_at: str | None = Field(
        default=None,
        description="Value of the `helmfile.dev/reconcile-requested-at` annotation last handled.",
    )
    history: list[HistoryEntry] = Field(
        default_factory=list,
        description="Revisions the operator deployed, oldest first, at most `helm.historyMax` "
        "(10 when that is 0).",
    )
    inventory: list[InventoryEntry] = Field(
        default_factory=list, description="Objects of the deployed revision's manifest."
    )
    drift: DriftStatus | None = Field(
        default=None, description="Set while the live objects differ from the release manifest."
    )
    last_drift_check: str | None = Field(
        default=None,
        description="When drift was last checked — rewritten when a check's outcome changes, "
        "otherwise at most once an hour (every check counts in the "
        f"helmfile_operator_drift_checks_total metric): {_TIMESTAMP}.",
    )
    plan: ReleasePlan | None = Field(
        default=None, description="The plan of the last change (see docs/plans.md)."
    )
    last_handled_approval: str | None = Field(
        default=None, description="Value of the `helmfile.dev/approve` annotation last applied."
    )
    rollout_hold: RolloutHold | None = Field(
        default=None, description="Set while an atomic rollout holds (or rolled back) this release."
    )
    cluster: ClusterStatus | None = Field(
        default=None,
        description="The remote cluster of `spec.kubeConfig` (none: the operator's own cluster).",
    )


class ReleaseSummary(Model):
    """One HelmfileRelease of the state, at a glance."""

    name: str = Field(description="Helm release name.")
    namespace: str = Field(description="Namespace the release is installed into.")
    ready: bool = Field(description="Whether the HelmfileRelease is Ready for its current spec.")
    revision: int | None = Field(default=None, description="Deployed Helm revision.")
    chart_version: str | None = Field(default=None, description="Version of the deployed chart.")
    drifted: bool = Field(default=False, description="Whether drift was detected.")
    message: str = Field(default="", description="Message of the release's Ready condition.")
    cluster: str | None = Field(
        default=None, description="The remote cluster it targets (none: the operator's own)."
    )


class ReleaseCounts(Model):
    """How many of the state's HelmfileReleases are in each state."""

    total: int = Field(default=0, description="HelmfileReleases of the state.")
    ready: int = Field(default=0, description="Those that are Ready.")
    failed: int = Field(default=0, description="Those that are Stalled.")
    pending: int = Field(default=0, description="Those still progressing (neither of the above).")
    disabled: int = Field(
        default=0, description="Those with `installed: false` (also counted above)."
    )


class StatePlanRelease(Model):
    """One release of a state's plan."""

    name: str = Field(description="The HelmfileRelease.")
    action: Literal["install", "upgrade", "uninstall", "delete"] = Field(
        description="`install`, `upgrade`, `uninstall` (`installed: false`) or `delete` (the "
        "release left the state)."
    )
    id: str = Field(description="The release's plan id.")
    objects: int = Field(default=0, description="Objects the release's plan changes.")


class StatePlan(Model):
    """The releases' plans awaiting approval, in `needs` order, approved as one."""

    id: str = Field(description="Approve them all with `helmfile.dev/approve: <id>` on the state.")
    install: int = Field(default=0, description="Releases to install.")
    upgrade: int = Field(default=0, description="Releases to upgrade.")
    delete: int = Field(default=0, description="Releases to uninstall or delete.")
    releases: list[StatePlanRelease] = Field(
        default_factory=list, description="The releases' plans, in `needs` order."
    )


class RolloutRelease(Model):
    """A release of an atomic rollout."""

    name: str = Field(description="The HelmfileRelease.")
    revision_before: int | None = Field(
        default=None, description="Its revision before the rollout; none when it installs."
    )


class RolloutStatus(Model):
    """The releases changed by one generation of the state, rolled out (or back) as one."""

    id: str = Field(description="`<state>-<generation>`.")
    generation: int = Field(description="The state's generation that started it.")
    phase: Literal["Progressing", "Succeeded", "RollingBack", "RolledBack"] = Field(
        description="`Progressing`, `Succeeded`, `RollingBack` or `RolledBack`."
    )
    releases: list[RolloutRelease] = Field(
        default_factory=list, description="The releases the generation changed."
    )
    failed: str | None = Field(default=None, description="The release that failed.")
    rolled_back: list[str] = Field(
        default_factory=list, description="Releases rolled back, in the order they were."
    )
    message: str = Field(default="", description="What failed, and what was rolled back.")


class HelmfileStateStatus(Model):
    """What the operator observed and did, written by the operator."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = Field(
        default=None, description="`metadata.generation` of the last spec the operator handled."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="`Ready`, `Reconciling`, `Stalled`."
    )
    environment: str | None = Field(default=None, description="The environment last rendered.")
    order: list[list[str]] = Field(
        default_factory=list,
        description="Release ids in topological groups (`needs` order): each group needs only "
        "releases of earlier groups.",
    )
    plan: StatePlan | None = Field(
        default=None,
        description="The plans of the state's releases that await approval, as one plan.",
    )
    last_handled_approval: str | None = Field(
        default=None, description="Value of the `helmfile.dev/approve` annotation last handled."
    )
    refused_approval: str | None = Field(
        default=None,
        description="The last approval refused because the plan changed since (stale id).",
    )
    rollout: RolloutStatus | None = Field(
        default=None, description="The last atomic rollout (`spec.rollout.atomic`)."
    )

    @field_validator("plan", mode="before")
    @classmethod
    def _drop_install_order(cls, value: Any) -> Any:
        # Written by earlier versions: the install order, now in `order`.
        return None if isinstance(value, list) else value

    releases: list[ReleaseSummary] = Field(
        default_factory=list, description="One summary per HelmfileRelease of the state."
    )
    counts: ReleaseCounts = Field(
        default_factory=ReleaseCounts, description="HelmfileReleases by readiness."
    )
    last_handled_reconcile_at: str | None = Field(
        default=None,
        description="Value of the `helmfile.dev/reconcile-requested-at` annotation last handled.",
    )
