"""A watch of HelmfileStates and HelmfileReleases in the harness: waits end on the event that
satisfies them (no polling of large lists), and cost the API server one stream per kind."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cluster import GROUP_PATH, Api, BenchError

RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"


@dataclass(frozen=True)
class Seen:
    """What the benchmark needs of one object."""

    namespace: str
    name: str
    generation: int
    observed_generation: int | None
    ready: bool
    ready_count: int
    reconcile_handled: str | None
    drift_checked: str | None
    drifted: str | None  # status of the Drifted condition
    # status.plan (HelmfileReleases): its phase (AwaitingApproval, Approved, Applied, Failed),
    # its id, the objects of the planned manifest (created, updated or unchanged: those the plan
    # compares with the cluster) and those it updates.
    plan_phase: str | None = None
    plan_id: str | None = None
    plan_objects: int = 0
    plan_updates: int = 0
    # the `helmfile.dev/reconcile-requested-at` annotation (an operator from before the states
    # answered forced resyncs themselves copied it onto every HelmfileRelease)
    reconcile_requested: str | None = None

    @classmethod
    def of(cls, body: dict[str, Any]) -> Seen:
        metadata = body["metadata"]
        status = body.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        plan = status.get("plan") or {}
        counts = {k: v for k, v in (plan.get("counts") or {}).items() if isinstance(v, int)}
        return cls(
            namespace=metadata["namespace"],
            name=metadata["name"],
            generation=int(metadata.get("generation") or 0),
            observed_generation=status.get("observedGeneration"),
            ready=conditions.get("Ready") == "True",
            ready_count=int((status.get("counts") or {}).get("ready") or 0),
            reconcile_handled=status.get("lastHandledReconcileAt"),
            drift_checked=status.get("lastDriftCheck"),
            drifted=conditions.get("Drifted"),
            plan_phase=plan.get("phase"),
            plan_id=plan.get("id"),
            plan_objects=sum(counts.get(k, 0) for k in ("create", "update", "unchanged")),
            plan_updates=counts.get("update", 0),
            reconcile_requested=(metadata.get("annotations") or {}).get(RECONCILE_REQUEST),
        )

    @property
    def current(self) -> bool:
        return self.observed_generation == self.generation


Objects = dict[tuple[str, str], Seen]


def resync_handled(
    states: list[Seen], releases: list[Seen], requested: str, expected_states: int
) -> bool:
    """Whether a forced resync (`reconcile-requested-at=<requested>` on each state) is complete:
    every HelmfileState's `status.lastHandledReconcileAt` equals it — a state writes it once all
    its releases ran a pass for the request. (An operator from before that copied the annotation
    onto every HelmfileRelease, each release recorded its own `lastHandledReconcileAt`, and the
    state recorded the request at once: when any release carries the request, all of them must
    carry and have handled it.)"""
    if len(states) < expected_states or any(s.reconcile_handled != requested for s in states):
        return False
    copied = [r for r in releases if r.reconcile_requested == requested]
    if not copied:
        return True
    return len(copied) == len(releases) and all(r.reconcile_handled == requested for r in copied)


class Watch:
    """Keeps `states` and `releases` (all namespaces) current from two watch streams."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.states: Objects = {}
        self.releases: Objects = {}
        self.changed = threading.Condition()
        self.error: str | None = None
        self._stop = threading.Event()
        self._connections: list[http.client.HTTPSConnection] = []
        self._threads = [
            threading.Thread(target=self._run, args=(p, o), daemon=True, name=f"watch-{p}")
            for p, o in (("helmfilestates", self.states), ("helmfilereleases", self.releases))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for connection in self._connections:
            sock = connection.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                connection.close()

    def _run(self, plural: str, objects: Objects) -> None:
        while not self._stop.is_set():
            try:
                self._watch(plural, objects)
            except Exception as error:
                if self._stop.is_set():
                    return
                self.error = f"watch {plural}: {error}"
                time.sleep(0.5)

    def _watch(self, plural: str, objects: Objects) -> None:
        connection = http.client.HTTPSConnection(
            self.api.host, self.api.port, context=self.api.context, timeout=3700
        )
        self._connections.append(connection)
        headers = {"Authorization": f"Bearer {self.api.token}", "Accept": "application/json"}
        connection.request("GET", f"{GROUP_PATH}/{plural}", headers=headers)
        response = connection.getresponse()
        listing = json.loads(response.read())
        if response.status != 200:
            raise ValueError(f"list: HTTP {response.status}")
        with self.changed:
            objects.clear()
            for item in listing["items"]:
                seen = Seen.of(item)
                objects[(seen.namespace, seen.name)] = seen
            self.changed.notify_all()
        version = listing["metadata"]["resourceVersion"]
        path = (
            f"{GROUP_PATH}/{plural}?watch=1&allowWatchBookmarks=false&timeoutSeconds=3600"
            f"&resourceVersion={version}"
        )
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise ValueError(f"watch: HTTP {response.status}")
        while not self._stop.is_set():
            line = response.readline()
            if not line:
                return  # the server ended the watch: list and watch again
            event = json.loads(line)
            if event.get("type") == "ERROR":
                return
            seen = Seen.of(event["object"])
            with self.changed:
                if event["type"] == "DELETED":
                    objects.pop((seen.namespace, seen.name), None)
                else:
                    objects[(seen.namespace, seen.name)] = seen
                self.changed.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """Block until `predicate()` (called under the lock) holds; return time.monotonic() then."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
                self.changed.wait(min(remaining, 1.0))
            return time.monotonic()

    def in_namespaces(self, objects: Objects, namespaces: set[str]) -> list[Seen]:
        return [seen for (ns, _), seen in objects.items() if ns in namespaces]
