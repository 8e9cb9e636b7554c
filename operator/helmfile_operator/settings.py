"""Operator-wide settings, read from HELMFILE_OPERATOR_* environment variables and CLI flags."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HELMFILE_OPERATOR_", extra="ignore")

    helm_binary: str = Field(default="helm", description="helm executable (Helm 4 or 3).")
    max_concurrent_helm: int = Field(
        default=8, ge=1, description="Helm processes running at once, operator-wide."
    )
    default_service_account: str = Field(
        default="default",
        description="ServiceAccount (of the object's own namespace) that helm, drift checks and "
        "reads of tenant data impersonate when a state or release names none. Empty: the "
        "operator's own identity — single-tenant clusters only.",
    )
    max_concurrent_helm_per_namespace: int | None = Field(
        default=None,
        ge=1,
        description="helm processes of one namespace at once (default: half of "
        "max_concurrent_helm), so one tenant's slow releases leave helm slots to the others.",
    )
    work_dir: Path = Field(
        default_factory=lambda: Path(tempfile.gettempdir()) / f"helmfile-operator-{os.geteuid()}",
        description="Private files of helm runs (values, credentials: removed after each run, "
        "and what a killed operator left is removed at start) and each namespace's helm home.",
    )
    max_helm_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Upper bound of every helm --timeout, whatever a spec asks (the CRDs allow "
        "at most 24h): a release cannot hold a helm slot longer than this.",
    )
    max_concurrent_reconciles: int = Field(
        default=32, ge=1, description="Objects reconciled at once (most of them wait on helm)."
    )
    max_reconciles_per_namespace: int | None = Field(
        default=None,
        ge=1,
        description="Objects of one namespace reconciled at once (default: a quarter of "
        "max_concurrent_reconciles), so one tenant's slow releases leave workers to the others.",
    )
    namespaces: list[str] = Field(
        default_factory=list, description="Namespaces to watch; empty means all namespaces."
    )
    health_port: int = Field(default=8081, description="Port of /healthz (liveness).")
    metrics_port: int = Field(default=8080, description="Port of /metrics.")
    log_format: Literal["text", "json"] = "text"
    verbose: bool = False
    retry_base_seconds: float = Field(
        default=5.0, gt=0, description="First retry delay after a failure; doubles each time."
    )
    retry_max_seconds: float = Field(default=300.0, gt=0, description="Cap of the retry delay.")
    uninstall_timeout_seconds: float = Field(default=300.0, gt=0)
    allow_kubeconfig_exec: bool = Field(
        default=False,
        description="Allow `exec` and `auth-provider` plugins in the kubeconfig Secrets of "
        "`spec.kubeConfig`: they run a command of the tenant's choosing in the operator's pod. "
        "Off: such a kubeconfig is refused with a condition.",
    )
    drift_check_record_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="A clean drift check that changes nothing else rewrites "
        "status.lastDriftCheck at most this often (a status write per release per interval "
        "would be most of a quiet operator's API traffic); every check counts in "
        "helmfile_operator_drift_checks_total.",
    )
    index_audit_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often the release index is checked against the API (0: never); "
        "prunes objects whose deletion a watch gap hid.",
    )
    shard: str = Field(
        default="",
        max_length=63,
        # A DNS label: it is a label value and part of the Lease's name.
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="Reconcile only states and releases labelled helmfile.dev/shard=SHARD "
        "(lowercase letters, digits, `-`). Empty: only those without the label.",
    )
    leader_election: bool = Field(
        default=False,
        description="Act only while holding a coordination.k8s.io Lease, so that several "
        "replicas can run: one acts, the others stand by with warm watches.",
    )
    leader_election_namespace: str = Field(
        default="",
        description="Namespace of the Lease. Empty: the pod's own namespace (its ServiceAccount "
        "token's), else `default`.",
    )
    leader_election_id: str = Field(
        default="helmfile-operator",
        max_length=200,
        description="Name of the Lease; a shard's Lease adds `-shard-SHARD`.",
    )
    lease_duration_seconds: float = Field(
        default=15.0,
        gt=0,
        description="How long a standby waits, after it last saw the Lease renewed, before it "
        "takes it over.",
    )
    renew_deadline_seconds: float = Field(
        default=10.0,
        gt=0,
        description="A leader that could not renew for this long stops: no helm process starts, "
        "those running are killed and the process exits. Below lease_duration_seconds.",
    )
    retry_period_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the leader renews, and a standby checks, the Lease.",
    )

    @model_validator(mode="after")
    def _lease_timings(self) -> Self:
        # The gap between the two is the margin in which a leader that lost the API stops
        # acting before a standby can take over.
        if self.renew_deadline_seconds >= self.lease_duration_seconds:
            raise ValueError("renew_deadline_seconds must be below lease_duration_seconds")
        if self.retry_period_seconds >= self.renew_deadline_seconds:
            raise ValueError("retry_period_seconds must be below renew_deadline_seconds")
        return self

    @property
    def lease_name(self) -> str:
        """The Lease of this operator's shard: each shard elects its own leader."""
        if not self.shard:
            return self.leader_election_id
        return f"{self.leader_election_id}-shard-{self.shard}"
