"""Commands that run the operator or print what is generated from the models: `run`, `crds`,
`schema`, `docs`, `version`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from helmfile_operator import __version__

_OUTPUT_DIR = click.Path(file_okay=False, path_type=Path)


@click.command("run")
@click.option(
    "--namespace",
    "namespaces",
    multiple=True,
    help="Watch only this namespace (repeatable); default: all.",
)
@click.option(
    "--shard",
    metavar="KEY",
    help="Reconcile only objects labelled helmfile.dev/shard=KEY; default: only unlabelled ones.",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    "leader_elect",
    default=None,
    help="Act only while holding the (shard's) Lease, so that replicas can stand by.",
)
@click.option("--verbose", is_flag=True, help="Debug logging (every helm command line).")
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Default: text.")
@click.option(
    "--allow-kubeconfig-exec",
    is_flag=True,
    help="Allow exec/auth-provider plugins in spec.kubeConfig Secrets (they run commands of "
    "the tenants' choosing in the operator's pod).",
)
def run(
    namespaces: tuple[str, ...],
    shard: str | None,
    leader_elect: bool | None,
    verbose: bool,
    log_format: str | None,
    allow_kubeconfig_exec: bool,
) -> None:
    """Run the operator against the current cluster."""
    import kopf

    from helmfile_operator.logs import configure_logging
    from helmfile_operator.settings import Settings

    overrides: dict[str, object] = {}
    if namespaces:
        overrides["namespaces"] = list(namespaces)
    if shard is not None:
        overrides["shard"] = shard
    if leader_elect is not None:
        overrides["leader_election"] = leader_elect
    if verbose:
        overrides["verbose"] = True
    if log_format:
        overrides["log_format"] = log_format
    if allow_kubeconfig_exec:
        overrides["allow_kubeconfig_exec"] = True
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_format, settings.verbose)
    import helmfile_operator.controllers.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,
        # No kopf peering: replicas coordinate through our own Lease (leadership.py).
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings),
    )


@click.command("crds")
@click.option("--output-dir", type=_OUTPUT_DIR, help="Write one file per CRD into this directory.")
def crds(output_dir: Path | None) -> None:
    """Print (or write) the CustomResourceDefinitions."""
    from helmfile_operator.api.crd import crd_files

    _emit(crd_files(), output_dir, separator="---\n")


@click.command("schema")
@click.option(
    "--output-dir",
    type=_OUTPUT_DIR,
    help="Write helmfilestate.json and helmfilerelease.json into this directory.",
)
def schema(output_dir: Path | None) -> None:
    """Print (or write) JSON Schemas of both kinds, for editors and linters."""
    from helmfile_operator.api.schema import schema_files

    # Without a directory: one JSON document after the other, as `jq` reads a stream.
    _emit(schema_files(), output_dir, separator="")


@click.command("docs")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), help="Write here.")
def docs(output: Path | None) -> None:
    """Print (or write) the API reference in Markdown."""
    from helmfile_operator.api.docs import api_reference

    text = api_reference()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)


@click.command("version")
def version() -> None:
    """Print the version."""
    click.echo(__version__)


def _emit(files: dict[str, str], output_dir: Path | None, *, separator: str) -> None:
    if output_dir is None:
        sys.stdout.write(separator.join(files.values()))
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (output_dir / name).write_text(text)
