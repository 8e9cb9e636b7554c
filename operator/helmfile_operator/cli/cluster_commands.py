"""Commands against a cluster, with the user's own credentials: `status`, `reconcile`,
`suspend`, `resume`, `approve`, and `plan`/`diff` (of a recorded plan, or of a state file
against the cluster)."""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import Any

import click
import yaml
from rich.console import Console
from rich.syntax import Syntax
from rich.text import Text
from rich.tree import Tree

from helmfile_operator.cli.cluster import (
    Ref,
    condition,
    connect,
    default_namespace,
    get,
    is_current,
    now,
    ref_argument,
    releases_of,
    run,
)
from helmfile_operator.kube import RELEASES, STATES, Kube
from helmfile_operator.reconcile.context import APPROVE, RECONCILE_REQUEST

_NAMESPACE = click.option("-n", "--namespace", help="Default: the current context's namespace.")


def _console(err: bool = False) -> Console:
    return Console(stderr=err, highlight=False, soft_wrap=True)


# --- status ------------------------------------------------------------------------------------


def _ready_text(body: dict[str, Any]) -> Text:
    ready = condition(body, "Ready")
    stalled = condition(body, "Stalled")
    if not is_current(body):
        return Text("… observing", style="yellow")
    if ready is not None and ready.get("status") == "True":
        return Text("✔ Ready", style="green")
    if stalled is not None and stalled.get("status") == "True":
        return Text(f"✘ {stalled.get('reason')}", style="red")
    if ready is not None and ready.get("reason") == "AwaitingApproval":
        return Text("⏸ AwaitingApproval", style="magenta")
    reason = ready.get("reason") if ready else "Pending"
    return Text(f"… {reason}", style="yellow")


def _release_line(child: dict[str, Any]) -> Text:
    spec, status = child.get("spec") or {}, child.get("status") or {}
    line = Text.assemble(
        (child["metadata"]["name"], "bold"),
        "  ",
        _ready_text(child),
        f"  rev {status.get('revision', '-')}",
        f"  {status.get('chartName') or spec.get('chart', {}).get('name', '')}"
        f" {status.get('chartVersion') or spec.get('chart', {}).get('version') or ''}",
    )
    cluster = status.get("cluster") or {}
    if cluster.get("name"):
        line.append(f"  → cluster {cluster['name']}", style="cyan")
    drifted = condition(child, "Drifted")
    if drifted is not None and drifted.get("status") == "True":
        line.append("  drifted", style="yellow")
    plan = status.get("plan") or {}
    if plan.get("phase") == "AwaitingApproval":
        line.append(f"  plan {plan.get('id')}: {plan.get('action')}", style="magenta")
    ready = condition(child, "Ready")
    if ready is not None and ready.get("status") != "True" and ready.get("message"):
        line.append(f"\n{ready['message']}", style="dim")
    return line


def _state_summary(state: dict[str, Any], children: list[dict[str, Any]]) -> dict[str, Any]:
    status = state.get("status") or {}
    ready = condition(state, "Ready") or {}
    return {
        "name": state["metadata"]["name"],
        "namespace": state["metadata"]["namespace"],
        "ready": ready.get("status") == "True" and is_current(state),
        "reason": ready.get("reason"),
        "message": ready.get("message", ""),
        "plan": status.get("plan"),
        "rollout": status.get("rollout"),
        "releases": [
            {
                "name": child["metadata"]["name"],
                "release": (child.get("spec") or {}).get("releaseName"),
                "namespace": (child.get("spec") or {}).get("targetNamespace"),
                "ready": (condition(child, "Ready") or {}).get("status") == "True"
                and is_current(child),
                "reason": (condition(child, "Ready") or {}).get("reason"),
                "message": (condition(child, "Ready") or {}).get("message", ""),
                "revision": (child.get("status") or {}).get("revision"),
                "chartVersion": (child.get("status") or {}).get("chartVersion"),
                "drifted": (condition(child, "Drifted") or {}).get("status") == "True",
                "plan": (child.get("status") or {}).get("plan"),
                "cluster": ((child.get("status") or {}).get("cluster") or {}).get("name"),
            }
            for child in children
        ],
    }


@click.command("status")
@click.argument("ref", required=False, callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
@_NAMESPACE
@click.option("-A", "--all-namespaces", is_flag=True, help="States of every namespace.")
@click.option("-o", "--output", type=click.Choice(["tree", "json", "yaml"]), default="tree")
def status(ref: Ref | None, namespace: str | None, all_namespaces: bool, output: str) -> int:
    """A tree per state: its releases in `needs` order with Ready, revision, chart version,
    drift, and the message of anything not Ready. Exit code 1 when any shown is not Ready."""
    kube = connect()

    async def collect() -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
        if ref is not None:
            if ref.plural == RELEASES:
                body = await get(kube, ref, default_namespace(namespace))
                return [(body, [])]
            states = [await get(kube, ref, default_namespace(namespace))]
        elif all_namespaces:
            states = await kube.list_all(STATES)
        else:
            states = await kube.list_objects(STATES, default_namespace(namespace))
        states.sort(key=lambda s: (s["metadata"]["namespace"], s["metadata"]["name"]))
        return [(state, await releases_of(kube, state)) for state in states]

    found = run(collect())
    if ref is not None and ref.plural == RELEASES:
        body = found[0][0]
        if output != "tree":
            _print_data(body, output)
        else:
            _console().print(_release_line(body))
        return 0 if _ready(body) else 1
    summaries = [_state_summary(state, children) for state, children in found]
    if output != "tree":
        _print_data(summaries if ref is None else summaries[0], output)
    else:
        console = _console()
        if not found:
            console.print("no HelmfileStates found")
        for state, children in found:
            metadata = state["metadata"]
            ready = condition(state, "Ready") or {}
            head = Text.assemble(
                (f"hfs/{metadata['name']}", "bold"),
                f" ({metadata['namespace']})  ",
                _ready_text(state),
                f"  {ready.get('message', '')}",
            )
            tree = Tree(head)
            for child in children:
                tree.add(_release_line(child))
            console.print(tree)
    return 0 if all(_ready(state) for state, _ in found) else 1


def _ready(body: dict[str, Any]) -> bool:
    return is_current(body) and (condition(body, "Ready") or {}).get("status") == "True"


def _print_data(data: Any, output: str) -> None:
    if output == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


# --- reconcile, suspend, resume ----------------------------------------------------------------


@click.command("reconcile")
@click.argument("ref", callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
@_NAMESPACE
@click.option("--wait", is_flag=True, help="Show progress until Ready (exit 0) or failure (1).")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds.")
def reconcile(ref: Ref, namespace: str | None, wait: bool, timeout: float) -> int:
    """Ask for a pass now (the `helmfile.dev/reconcile-requested-at` annotation): a Stalled
    release is retried and version ranges are resolved again."""
    kube = connect()
    namespace = default_namespace(namespace)
    requested = now()
    run(get(kube, ref, namespace))
    run(
        kube.patch_metadata(
            ref.plural, namespace, ref.name, {"annotations": {RECONCILE_REQUEST: requested}}
        )
    )
    console = _console()
    console.print(f"{ref.short}: reconcile requested at {requested}")
    if not wait:
        return 0
    return _wait(kube, ref, namespace, requested, timeout, console)


def _wait(
    kube: Kube, ref: Ref, namespace: str, requested: str, timeout: float, console: Console
) -> int:
    """Poll (this is a client: the operator itself is event-driven) until the request is
    handled and the object is Ready, Stalled, awaiting approval, or the time is up."""
    deadline = time.monotonic() + timeout
    shown: dict[str, str] = {}
    while time.monotonic() < deadline:
        body = run(get(kube, ref, namespace))
        children = run(releases_of(kube, body)) if ref.plural == STATES else []
        for obj in [*children, body]:
            line = _release_line(obj).plain.splitlines()[0]
            name = obj["metadata"]["name"]
            if shown.get(name) != line:
                shown[name] = line
                console.print(_release_line(obj))
        # A state records the request once each of its releases ran a pass for it; its summary
        # may still predate their last status writes.
        handled = (body.get("status") or {}).get("lastHandledReconcileAt") == requested and all(
            is_current(obj) for obj in [body, *children]
        )
        if handled:
            ready = condition(body, "Ready") or {}
            stalled = condition(body, "Stalled") or {}
            if ready.get("status") == "True":
                console.print(f"{ref.short}: Ready", style="green")
                return 0
            if stalled.get("status") == "True":
                console.print(f"{ref.short}: {stalled.get('message')}", style="red")
                return 1
            if ready.get("reason") == "AwaitingApproval":
                console.print(f"{ref.short}: {ready.get('message')}", style="magenta")
                return 1
        time.sleep(1.0)
    console.print(f"{ref.short}: not Ready after {timeout:.0f}s", style="red")
    return 1


def _set_suspend(ref: Ref, namespace: str | None, value: bool) -> None:
    kube = connect()
    namespace = default_namespace(namespace)
    run(get(kube, ref, namespace))
    run(kube.patch(ref.plural, namespace, ref.name, {"spec": {"suspend": value}}))
    _console().print(f"{ref.short}: {'suspended' if value else 'resumed'}")


@click.command("suspend")
@click.argument("ref", callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
@_NAMESPACE
def suspend(ref: Ref, namespace: str | None) -> None:
    """Pause helm for a state (all its releases) or a release: `spec.suspend: true`."""
    _set_suspend(ref, namespace, True)


@click.command("resume")
@click.argument("ref", callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
@_NAMESPACE
def resume(ref: Ref, namespace: str | None) -> None:
    """Undo `suspend`."""
    _set_suspend(ref, namespace, False)


# --- plans and approval ------------------------------------------------------------------------


@click.command("approve")
@click.argument("ref", callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
@_NAMESPACE
@click.option("--id", "plan_id", help="Approve only if the current plan has this id.")
def approve(ref: Ref, namespace: str | None, plan_id: str | None) -> int:
    """Approve the plan the operator recorded (`helmfile.dev/approve: <id>`): exactly that
    plan; if anything changed since, the operator refuses it and plans again."""
    kube = connect()
    namespace = default_namespace(namespace)
    body = run(get(kube, ref, namespace))
    plan = (body.get("status") or {}).get("plan") or {}
    waiting = (
        plan.get("id") if ref.plural == STATES or plan.get("phase") == "AwaitingApproval" else None
    )
    if not waiting:
        raise click.ClickException(f"{ref.short}: no plan awaits approval")
    if plan_id is not None and plan_id != waiting:
        raise click.ClickException(
            f"{ref.short}: the current plan is {waiting}, not {plan_id}: review it first"
        )
    run(kube.patch_metadata(ref.plural, namespace, ref.name, {"annotations": {APPROVE: waiting}}))
    _console().print(f"{ref.short}: approved plan {waiting} ({_plan_summary(ref, plan)})")
    return 0


def _plan_summary(ref: Ref, plan: dict[str, Any]) -> str:
    if ref.plural == STATES:
        return (
            f"{plan.get('install', 0)} to install, {plan.get('upgrade', 0)} to upgrade, "
            f"{plan.get('delete', 0)} to delete"
        )
    counts = plan.get("counts") or {}
    return (
        f"{plan.get('action')}: {counts.get('create', 0)} to create, "
        f"{counts.get('update', 0)} to update, {counts.get('delete', 0)} to delete"
    )


def _print_plan(console: Console, name: str, plan: dict[str, Any], diff: str | None) -> None:
    versions = ""
    if plan.get("chartVersionFrom") != plan.get("chartVersionTo"):
        versions = f" {plan.get('chartVersionFrom') or '∅'} → {plan.get('chartVersionTo') or '∅'}"
    marks = {"install": "+", "upgrade": "~", "uninstall": "-"}
    console.print(
        Text.assemble(
            (f"{marks.get(plan.get('action', ''), '~')} {name}", "bold"),
            f"  {plan.get('action')}{versions}",
            (f"  [{plan.get('phase')}]" if plan.get("phase") else ""),
        )
    )
    styles = {"create": "green", "update": "yellow", "delete": "red"}
    for obj in plan.get("objects") or []:
        where = f"{obj.get('namespace')}/" if obj.get("namespace") else ""
        paths = f": {', '.join(obj.get('paths') or [])}" if obj.get("paths") else ""
        console.print(
            Text(f"    {obj['action']:<7} {obj['kind']} {where}{obj['name']}{paths}"),
            style=styles.get(obj["action"], ""),
        )
    if plan.get("values"):
        console.print(f"    values: {', '.join(plan['values'])}", style="cyan")
    if plan.get("message"):
        console.print(f"    note: {plan['message']}", style="dim")
    if diff:
        console.print(Syntax(diff, "diff", theme="ansi_dark", background_color="default"))


def _recorded_plans(ref: Ref, namespace: str, with_diff: bool) -> int:
    kube = connect()
    body = run(get(kube, ref, namespace))
    children = [body] if ref.plural == RELEASES else run(releases_of(kube, body))
    console = _console()
    if ref.plural == STATES:
        plan = (body.get("status") or {}).get("plan")
        if plan:
            console.print(f"{ref.short}: plan {plan['id']}: {_plan_summary(ref, plan)}")
        else:
            console.print(f"{ref.short}: nothing awaits approval; the last plan of each release:")
    for child in children:
        plan = (child.get("status") or {}).get("plan")
        if not plan:
            continue
        diff = _diff_of(kube, namespace, plan) if with_diff else None
        _print_plan(console, child["metadata"]["name"], plan, diff)
    return 0


def _diff_of(kube: Kube, namespace: str, plan: dict[str, Any]) -> str | None:
    name = plan.get("diffSecret")
    if not name:
        return None
    secret = run(kube.get_secret(namespace, name))
    data = ((secret or {}).get("data") or {}).get("diff")
    return base64.b64decode(data).decode("utf-8", "replace") if data else None


def _plan_command(name: str, with_diff: bool) -> click.Command:
    @click.command(name)
    @click.argument("ref", required=False, callback=ref_argument, metavar="hfs/NAME|hfr/NAME")
    @_NAMESPACE
    @click.option(
        "-f",
        "--filename",
        "files",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        multiple=True,
        help="Plan a state file against the cluster.",
    )
    @click.option("-e", "--environment", help="With -f: render this environment.")
    def command(
        ref: Ref | None, namespace: str | None, files: tuple[Path, ...], environment: str | None
    ) -> int:
        if bool(ref) == bool(files):
            raise click.UsageError("give either hfs/NAME (a recorded plan) or -f FILE")
        if ref is not None:
            return _recorded_plans(ref, default_namespace(namespace), with_diff)
        from helmfile_operator.cli.planning import plan_files

        return plan_files(
            list(files), environment, default_namespace(namespace), _console(), with_diff,
            _print_plan,
        )  # fmt: skip

    command.help = (
        "What a change would do"
        + (", with the text diff of every object (Secret data masked)" if with_diff else "")
        + ": the plan the operator recorded for hfs/NAME, or -f FILE rendered offline and "
        "compared with the cluster (helm's server dry run and a dry run per object, with your "
        "own credentials)."
    )
    return command


plan = _plan_command("plan", with_diff=False)
diff = _plan_command("diff", with_diff=True)

__all__ = ["approve", "diff", "plan", "reconcile", "resume", "status", "suspend"]
