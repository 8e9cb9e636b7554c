"""in sync → check for drift (warn: record it; correct: restore the objects, then verify)."""

from __future__ import annotations

from helmfile_operator.api.models import DriftMode, DriftStatus
from helmfile_operator.helm.storage import StorageDecodeError
from helmfile_operator.kube import AccessDenied, ApiUnreachable
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.drift import DriftCheckError, DriftReport
from helmfile_operator.reconcile.release_context import ReleaseContext, seconds_since


def drift_mode(ctx: ReleaseContext) -> DriftMode:
    detection = ctx.spec.drift_detection
    return detection.mode if detection is not None else DriftMode.DISABLED


async def _manifest(ctx: ReleaseContext) -> str | None:
    """The manifest of the deployed revision, decoded once per revision (cached)."""
    assert ctx.storage is not None
    cached = ctx.reconciler.manifests.get(ctx.target, ctx.manifest_version(ctx.storage.revision))
    if cached is not None:
        return cached
    try:
        stored = await ctx.read_stored_release(ctx.storage.revision)
    except StorageDecodeError:
        return None
    if stored is None:
        return None
    ctx.reconciler.manifests.put(ctx.target, ctx.manifest_version(stored.revision), stored.manifest)
    return stored.manifest


def _summary(report: DriftReport) -> str:
    parts = []
    for obj in report.objects[:5]:
        what = "missing" if obj.missing else ", ".join(obj.paths[:5])
        parts.append(f"{obj.kind} {obj.name}: {what}")
    more = f" (+{len(report.objects) - 5} more)" if len(report.objects) > 5 else ""
    return "; ".join(parts) + more


async def detect_drift(ctx: ReleaseContext) -> None:
    """One check (and, under `correct`, the correction). `status.lastDriftCheck` is rewritten
    when the outcome changed, or when it is older than `drift_check_record_seconds` (an hour)."""
    status = ctx.status
    outcome = _outcome(ctx)
    checked_at = conditions.now()
    result = await _check(ctx)
    if result is None:
        return
    ctx.reconciler.metrics.drift_checks.labels(result).inc()
    if (
        _outcome(ctx) != outcome
        or status.last_drift_check is None
        or seconds_since(status.last_drift_check)
        >= ctx.reconciler.settings.drift_check_record_seconds
    ):
        status.last_drift_check = checked_at


def _outcome(ctx: ReleaseContext) -> tuple[object, ...]:
    drifted = conditions.find(ctx.status.conditions, conditions.DRIFTED)
    condition = (drifted.status, drifted.reason, drifted.message) if drifted else None
    return (condition, ctx.status.drift)


async def _check(ctx: ReleaseContext) -> str | None:
    """The check's result (clean, drifted, failed); None when none ran."""
    mode = drift_mode(ctx)
    checker = ctx.drift_checker
    status = ctx.status
    if mode is DriftMode.DISABLED or checker is None or ctx.storage is None:
        if status.drift is not None or conditions.find(status.conditions, conditions.DRIFTED):
            status.drift = None
            ctx.remove_condition(conditions.DRIFTED)
        return None
    try:
        manifest = await _manifest(ctx)
    except (AccessDenied, ApiUnreachable) as error:
        ctx.set_condition(conditions.DRIFTED, "Unknown", "DriftCheckFailed", str(error))
        return "failed"
    if manifest is None:
        return None
    ignore = ctx.spec.drift_detection.ignore if ctx.spec.drift_detection else []
    namespace = ctx.spec.target_namespace
    try:
        identity = ctx.target_identity
        report = await checker.check(manifest, namespace, ignore, identity)
        if report.drifted:
            _record(ctx, report)
            if mode is DriftMode.CORRECT:
                await checker.correct(manifest, ctx.spec.release_name, namespace, identity)
                report = await checker.check(manifest, namespace, ignore, identity)
                if not report.drifted:
                    ctx.reconciler.metrics.remediations.labels("drift-correction").inc()
                    status.drift = None
                    ctx.set_condition(
                        conditions.DRIFTED,
                        "False",
                        "DriftCorrected",
                        "live objects were restored from the release manifest",
                    )
                    ctx.event("Normal", "DriftCorrected", "restored the drifted objects")
                    return "drifted"
                _record(ctx, report)
            return "drifted"
    except DriftCheckError as error:
        ctx.set_condition(conditions.DRIFTED, "Unknown", "DriftCheckFailed", str(error))
        ctx.event("Warning", "DriftCheckFailed", str(error))
        return "failed"
    status.drift = None
    drifted = conditions.find(status.conditions, conditions.DRIFTED)
    if drifted is None or drifted.status != "False" or drifted.reason == "DriftCheckFailed":
        ctx.set_condition(
            conditions.DRIFTED, "False", "NoDrift", "live objects match the release manifest"
        )
    return "clean"


def _record(ctx: ReleaseContext, report: DriftReport) -> None:
    assert ctx.storage is not None
    status = ctx.status
    previous = status.drift
    if previous is None or previous.objects != report.objects:
        ctx.reconciler.metrics.drift_detections.inc()
        ctx.event("Warning", "DriftDetected", _summary(report))
    detected_at = previous.detected_at if previous is not None else conditions.now()
    status.drift = DriftStatus(
        detected_at=detected_at, revision=ctx.storage.revision, objects=report.objects
    )
    ctx.set_condition(conditions.DRIFTED, "True", "DriftDetected", _summary(report))
