"""Commands that need no cluster: `convert` a helmfile.yaml, `render` a state the way the
operator renders it (for PR checks in CI)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import ValidationError

from helmfile_operator import goyaml
from helmfile_operator.api.models import describe_validation_error
from helmfile_operator.reconcile.values import ObjectSource
from helmfile_operator.render.errors import RenderError
from helmfile_operator.render.state import RenderedState

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

# The exit codes: 0 done, 1 the input is wrong (the message says where), 2 usage (click's),
# 3 converted, but something could not be carried over (listed on stderr).
EXIT_INVALID = 1
EXIT_DROPPED = 3


@dataclass
class FileObjects:
    """The objects of YAML files, read as kubectl reads them (Go's YAML), as an `ObjectSource`
    for environment `valuesFrom`: ConfigMaps come from the files, never from a cluster."""

    objects: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, paths: Iterable[Path]) -> FileObjects:
        found = cls()
        for path in paths:
            try:
                found.objects += goyaml.load_manifest(path.read_text(), str(path))
            except (OSError, ValueError) as error:
                raise click.ClickException(str(error)) from None
        return found

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o.get("kind") == kind]

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        for obj in self.of_kind("ConfigMap"):
            metadata = obj.get("metadata") or {}
            if metadata.get("name") == name and metadata.get("namespace", namespace) == namespace:
                return obj
        return None

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None  # environment values never come from Secrets


def render_states(
    objects: FileObjects,
    environment: str | None,
    namespace: str | None,
    *,
    source: ObjectSource | None = None,
) -> list[tuple[dict[str, Any], RenderedState]]:
    """Each HelmfileState of the files, rendered by the operator's own code, environment
    `valuesFrom` read from `source` (default: the files). A state without a namespace takes
    `namespace` (or `default`). Raises click.ClickException with the message the operator would
    put on the state's condition."""
    from helmfile_operator.reconcile.state import render_body
    from helmfile_operator.reconcile.values import ValuesSourceError

    states = objects.of_kind("HelmfileState")
    if not states:
        raise click.ClickException("no HelmfileState in the files given")
    rendered = []
    for body in states:
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("namespace", namespace or "default")
        if environment:
            body.setdefault("spec", {})["environment"] = environment
        where = f"HelmfileState {metadata.get('namespace')}/{metadata.get('name')}"
        try:
            result = asyncio.run(render_body(body, source or objects, asyncio.Semaphore(1)))
        except ValidationError as error:
            message = describe_validation_error(error)
            raise click.ClickException(f"{where}: InvalidSpec: {message}") from None
        except (RenderError, ValuesSourceError) as error:
            hint = ""
            if isinstance(error, ValuesSourceError):
                hint = " (render is offline: give the ConfigMap's manifest with --values-from FILE)"
            raise click.ClickException(f"{where}: RenderFailed: {error}{hint}") from None
        rendered.append((body, result))
    return rendered


def release_objects(body: dict[str, Any], rendered: RenderedState) -> list[dict[str, Any]]:
    """The HelmfileReleases the operator would write for this render (owner uid unknown)."""
    from helmfile_operator.reconcile.context import ObjectKey
    from helmfile_operator.reconcile.state import child_body

    metadata = body["metadata"]
    key = ObjectKey("HelmfileState", metadata["namespace"], metadata["name"])
    state = {**body, "metadata": {**metadata, "uid": metadata.get("uid", "")}}
    objects = []
    for index in range(len(rendered.releases)):
        child = child_body(key, state, rendered, index)
        child["metadata"].pop("ownerReferences", None)  # the state's uid exists in a cluster
        objects.append(child)
    return objects


def dump(objects: list[dict[str, Any]], output: str) -> str:
    if output == "json":
        return json.dumps(objects[0] if len(objects) == 1 else objects, indent=2) + "\n"
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


@click.command("render")
@click.option("-f", "--filename", "files", type=_FILE, multiple=True, required=True,
              help="A file with HelmfileStates (repeatable).")  # fmt: skip
@click.option("-e", "--environment", help="Render this environment instead of spec.environment.")
@click.option("-n", "--namespace", help="Namespace of states that name none. Default: default.")
@click.option("--values-from", "values_files", type=_FILE, multiple=True,
              help="ConfigMap manifests environment valuesFrom reads (repeatable).")  # fmt: skip
@click.option("-o", "--output", type=click.Choice(["yaml", "json"]), default="yaml")
def render(
    files: tuple[Path, ...],
    environment: str | None,
    namespace: str | None,
    values_files: tuple[Path, ...],
    output: str,
) -> None:
    """The HelmfileReleases a state renders to, offline, by the operator's own code. A render
    error exits 1 with the message the operator would put on the state's condition."""
    objects = FileObjects.read([*files, *values_files])
    releases = [
        release
        for body, rendered in render_states(objects, environment, namespace)
        for release in release_objects(body, rendered)
    ]
    sys.stdout.write(dump(releases, output))


@click.command("convert")
@click.argument("helmfile", type=_FILE)
@click.option("-e", "--environment", default="default", show_default=True,
              help="The helmfile environment to convert.")  # fmt: skip
@click.option("--name", help="Name of the HelmfileState. Default: from the file's directory.")
@click.option("-n", "--namespace", help="Namespace of the HelmfileState (and its ConfigMaps).")
@click.option("--helmfile-binary", help="helmfile, to render Go-templated files first. "
              "Default: `helmfile` on the PATH, if any.")  # fmt: skip
def convert(
    helmfile: Path,
    environment: str,
    name: str | None,
    namespace: str | None,
    helmfile_binary: str | None,
) -> int:
    """A helmfile.yaml as a HelmfileState (plus ConfigMaps for large values files), ready for
    `kubectl apply`. What cannot be carried over is listed on stderr, one line per field, and
    the exit code is 3."""
    from helmfile_operator.convert import ConversionError, convert_file

    try:
        result = convert_file(
            helmfile,
            environment=environment,
            name=name,
            namespace=namespace,
            helmfile_binary=helmfile_binary,
        )
    except ConversionError as error:
        raise click.ClickException(str(error)) from None
    sys.stdout.write(dump(result.documents, "yaml"))
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    for dropped in result.dropped:
        click.echo(f"dropped: {dropped.field}: {dropped.why}; {dropped.instead}", err=True)
    return EXIT_DROPPED if result.dropped else 0
