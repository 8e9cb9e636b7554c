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


class ValuesReference(Model):
    """Values read from a ConfigMap or Secret key at helm time; Secret data never reaches a CR."""

    kind: Literal["ConfigMap", "Secret"]
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(default="values.yaml", min_length=1)
    optional: bool = Field(
        default=False, description="A missing object or key is skipped instead of an error."
    )


class SetValue(Model):
    """One value at a dotted path, applied after every other source (like `helm --set`)."""

    name: str = Field(min_length=1, description="Dotted path, e.g. `model.threshold`.")
    value: Any = Field(description="Any JSON value; strings stay strings.")


class DriftMode(StrEnum):
    DISABLED = "disabled"
    WARN = "warn"
    CORRECT = "correct"


class DriftIgnoreTarget(Model):
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    labels: dict[str, str] | None = None


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

    mode: DriftMode = DriftMode.DISABLED
    ignore: list[DriftIgnoreRule] = Field(default_factory=list)


class HelmOptions(Model):
    """Options of `helm upgrade --install`; per-release fields override the state's helmDefaults."""

    wait: bool | None = Field(default=None, description="Wait until resources are ready.")
    wait_for_jobs: bool | None = None
    atomic: bool | None = Field(
        default=None,
        description="The operator rolls back a failed upgrade (a failed install is uninstalled).",
    )
    timeout: Duration | None = Field(
        default=None,
        description=f"helm's --timeout, at most {MAX_HELM_TIMEOUT} (the operator may cap it).",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"duration(self) <= duration('{MAX_HELM_TIMEOUT}')",
                    "message": MAX_HELM_TIMEOUT_MESSAGE,
                    "reason": "FieldValueInvalid",
                }
            ]
        },
    )
    create_namespace: bool | None = None
    history_max: int | None = Field(default=None, ge=0)
    retries: int | None = Field(
        default=None, ge=0, description="Failed attempts of one spec before the release is Stalled."
    )

    @field_validator("timeout")
    @classmethod
    def _bounded_timeout(cls, timeout: str | None) -> str | None:
        # The CRD's rule, for objects that did not pass through the API server (tests, renders).
        if timeout is not None and duration_seconds(timeout) > duration_seconds(MAX_HELM_TIMEOUT):
            raise ValueError(MAX_HELM_TIMEOUT_MESSAGE)
        return timeout


DEFAULT_HELM_OPTIONS = HelmOptions(
    wait=True,
    wait_for_jobs=False,
    atomic=True,
    timeout="300s",
    create_namespace=True,
    history_max=10,
    retries=3,
)


def merge_helm_options(*layers: HelmOptions | None) -> HelmOptions:
    """Later layers win field by field; unset (None) fields fall through."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if layer is not None:
            merged.update(layer.model_dump(exclude_none=True))
    return HelmOptions(**merged)


# --- HelmfileState ------------------------------------------------------------------------------


class Repository(Model):
    name: str = Field(pattern=DNS_LABEL, max_length=63)
    url: str = Field(
        pattern=r"^(https?|oci)://.+",
        description="`http(s)://` chart repository or `oci://` prefix.",
    )
    secret_ref: str | None = Field(
        default=None, description="Secret with `username` and `password` (same namespace)."
    )
    ca_secret_ref: str | None = Field(default=None, description="Secret with `ca.crt`.")
    insecure_skip_tls_verify: bool = False


class EnvironmentValuesReference(ValuesReference):
    """Environment values feed templates whose output is stored in HelmfileRelease specs, so they
    may only come from ConfigMaps: Secret data belongs in a release's `valuesFrom`."""

    kind: Literal["ConfigMap"]


class Environment(Model):
    values: list[Values] = Field(default_factory=list)
    values_from: list[EnvironmentValuesReference] = Field(default_factory=list)


class ReleaseTemplate(Model):
    """One release of a state, before rendering."""

    name: str = Field(pattern=DNS_LABEL, max_length=HELM_RELEASE_NAME_MAX)
    namespace: str | None = Field(
        default=None, pattern=DNS_LABEL, max_length=63, description="Default: the state's."
    )
    chart: str = Field(
        min_length=1, description="`<repository>/<chart>` or a full `oci://` reference."
    )
    version: str | None = Field(default=None, description="Exact version or semver range.")
    condition: str | None = Field(
        default=None, description="Path into environment values, e.g. `redis.enabled`."
    )
    labels: dict[str, str] = Field(default_factory=dict)
    values: list[Values] = Field(default_factory=list)
    values_template: list[str] = Field(
        default_factory=list, description="Jinja2 templates rendering to YAML maps."
    )
    values_from: list[ValuesReference] = Field(default_factory=list)
    set: list[SetValue] = Field(default_factory=list)
    needs: list[str] = Field(
        default_factory=list, description="Releases installed first: `name` or `namespace/name`."
    )
    installed: bool = Field(default=True, description="`false` uninstalls the release.")
    helm: HelmOptions | None = Field(default=None, description="Overrides of helmDefaults.")
    drift_detection: DriftDetection | None = None


class DeletionPolicy(StrEnum):
    UNINSTALL = "Uninstall"
    KEEP = "Keep"


class HelmfileStateSpec(Model):
    """HelmfileState: many Helm releases with environments, templated values and `needs` order."""

    environment: str = Field(
        default="default", description="Which entry of `environments` applies."
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
        default="10m", description="Resync period of every release (and of its drift check)."
    )
    suspend: bool = Field(
        default=False,
        description="Pause every release: spec changes reach the HelmfileReleases, helm runs not.",
    )
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=DNS_SUBDOMAIN_MAX,
        description="helm runs impersonating this ServiceAccount of the state's namespace.",
    )
    drift_detection: DriftDetection | None = None
    deletion_policy: DeletionPolicy = Field(
        default=DeletionPolicy.UNINSTALL,
        description="`Keep` leaves the Helm releases installed when the state is deleted.",
    )
    releases: list[ReleaseTemplate] = Field(default_factory=list, max_length=MAX_RELEASES)

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


class ChartRepository(Model):
    url: str = Field(pattern=r"^(https?|oci)://.+")
    secret_ref: str | None = None
    ca_secret_ref: str | None = None
    insecure_skip_tls_verify: bool = False


class ChartReference(Model):
    repository: ChartRepository
    name: str = Field(
        min_length=1,
        max_length=CHART_NAME_MAX,
        pattern=CHART_NAME,
        description="The chart's name in the repository (no path, no URL).",
    )
    version: str | None = None

    @property
    def is_oci(self) -> bool:
        return self.repository.url.startswith("oci://")


class HelmfileReleaseSpec(Model):
    """HelmfileRelease: one Helm release, rendered from a HelmfileState or written by hand."""

    release_name: str = Field(pattern=DNS_LABEL, max_length=HELM_RELEASE_NAME_MAX)
    target_namespace: str = Field(pattern=DNS_LABEL, max_length=63)
    chart: ChartReference
    values: Values = Field(
        default_factory=dict, description="Rendered values. Never holds data read from Secrets."
    )
    values_from: list[ValuesReference] = Field(default_factory=list)
    set: list[SetValue] = Field(default_factory=list)
    helm: HelmOptions | None = None
    needs: list[str] = Field(
        default_factory=list,
        description="HelmfileRelease names (same namespace) to be Ready first.",
    )
    installed: bool = Field(default=True, description="`false` uninstalls and keeps it so.")
    suspend: bool = Field(default=False, description="No helm action while `true`.")
    interval: Duration = Field(default="10m", description="Resync period.")
    service_account_name: str | None = Field(
        default=None,
        pattern=DNS_SUBDOMAIN,
        max_length=DNS_SUBDOMAIN_MAX,
        description="helm runs impersonating this ServiceAccount (same namespace).",
    )
    drift_detection: DriftDetection | None = None

    def helm_options(self) -> HelmOptions:
        return merge_helm_options(DEFAULT_HELM_OPTIONS, self.helm)


# --- status -------------------------------------------------------------------------------------


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class LastAttempt(Model):
    action: str
    digest: str
    result: Literal["succeeded", "failed"]
    duration_seconds: float
    time: str
    message: str = ""


class InProgress(Model):
    """A helm action the operator started and has not finished, recorded before helm starts: a
    `pending-*` release found with this set after a restart is the operator's own, and stale."""

    action: str
    started_at: str
    digest: str = Field(description="Digest of the values being applied.")
    revision_before: int | None = None
    chart_version: str | None = Field(default=None, description="The version being applied.")


class HistoryEntry(Model):
    revision: int
    chart_version: str
    digest: str
    status: str
    time: str


class InventoryEntry(Model):
    api_version: str
    kind: str
    name: str
    namespace: str | None = None


class DriftedObject(Model):
    """One object of the release that differs from its manifest: paths only, never values."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None
    missing: bool = False
    paths: list[str] = Field(default_factory=list, description="JSON pointers that differ.")


class DriftStatus(Model):
    detected_at: str
    revision: int | None = None
    objects: list[DriftedObject] = Field(default_factory=list)


class HelmfileReleaseStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    revision: int | None = None
    chart_name: str | None = None
    chart_version: str | None = None
    app_version: str | None = None
    values_digest: str | None = None
    last_applied_digest: str | None = None
    last_applied_time: str | None = None
    last_attempted: LastAttempt | None = None
    in_progress: InProgress | None = Field(
        default=None, description="Set while a helm action of the operator runs on the release."
    )
    failures: int = 0
    last_handled_reconcile_at: str | None = None
    history: list[HistoryEntry] = Field(default_factory=list)
    inventory: list[InventoryEntry] = Field(default_factory=list)
    drift: DriftStatus | None = Field(
        default=None, description="Set while the live objects differ from the release manifest."
    )
    last_drift_check: str | None = None


class ReleaseSummary(Model):
    name: str
    namespace: str
    ready: bool
    revision: int | None = None
    chart_version: str | None = None
    drifted: bool = False
    message: str = ""


class ReleaseCounts(Model):
    total: int = 0
    ready: int = 0
    failed: int = 0
    pending: int = 0
    disabled: int = 0


class HelmfileStateStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    environment: str | None = None
    plan: list[list[str]] = Field(
        default_factory=list, description="Release ids in topological groups (`needs` order)."
    )
    releases: list[ReleaseSummary] = Field(default_factory=list)
    counts: ReleaseCounts = Field(default_factory=ReleaseCounts)
    last_handled_reconcile_at: str | None = None
