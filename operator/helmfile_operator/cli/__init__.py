"""The `helmfile-operator` command (also installed as `kubectl-hfo`, so `kubectl hfo …` works):
run the operator; convert, render and plan states; show, reconcile, suspend, resume and approve
them in a cluster; print the CRDs, JSON Schemas and API reference. docs/cli.md documents each."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from helmfile_operator import __version__
from helmfile_operator.cli import cluster_commands as cluster_commands
from helmfile_operator.cli import generate as generate
from helmfile_operator.cli import offline as offline


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="helmfile-operator")
def cli() -> None:
    """helmfile's model in the cluster: HelmfileStates rendered into HelmfileReleases."""


for command in (
    generate.run,
    offline.convert,
    offline.render,
    cluster_commands.plan,
    cluster_commands.diff,
    cluster_commands.approve,
    cluster_commands.status,
    cluster_commands.reconcile,
    cluster_commands.suspend,
    cluster_commands.resume,
    generate.crds,
    generate.schema,
    generate.docs,
    generate.version,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; its exit code (click's own for usage errors)."""
    try:
        result = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="kubectl hfo" if _as_kubectl_plugin() else "helmfile-operator",
            standalone_mode=False,
        )
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.ClickException as error:
        error.show()
        return error.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    return int(result) if isinstance(result, int) else 0


def _as_kubectl_plugin() -> bool:
    return sys.argv[0].rsplit("/", 1)[-1] == "kubectl-hfo"


if __name__ == "__main__":
    sys.exit(main())
