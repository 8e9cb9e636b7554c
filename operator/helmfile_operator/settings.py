"""Operator-wide settings, read from HELMFILE_OPERATOR_* environment variables and CLI flags."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field
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
    index_audit_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often the release index is checked against the API (0: never); "
        "prunes objects whose deletion a watch gap hid.",
    )
