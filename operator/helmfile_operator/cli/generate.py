"""The `helmfile-operator` command: run the operator, print CRDs and JSON Schemas, write docs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from helmfile_operator import __version__


def _crds(args: argparse.Namespace) -> int:
    from helmfile_operator.api.crd import crd_files

    files = crd_files()
    if args.output_dir is None:
        sys.stdout.write("---\n".join(files.values()))
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.output_dir / name).write_text(text)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from helmfile_operator.api.schema import schema_files

    files = schema_files()
    if args.output_dir is None:
        # One JSON document after the other, as `jq` reads a stream.
        sys.stdout.write("".join(files.values()))
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.output_dir / name).write_text(text)
    return 0


def _docs(args: argparse.Namespace) -> int:
    from helmfile_operator.api.docs import api_reference

    text = api_reference()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)
    return 0


def _run(args: argparse.Namespace) -> int:
    import kopf

    from helmfile_operator.logs import configure_logging
    from helmfile_operator.settings import Settings

    overrides: dict[str, object] = {}
    if args.namespace:
        overrides["namespaces"] = args.namespace
    if args.verbose:
        overrides["verbose"] = True
    if args.log_format:
        overrides["log_format"] = args.log_format
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_format, settings.verbose)
    import helmfile_operator.controllers.handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,  # one replica (Deployment strategy Recreate): no peering needed
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz",
        memo=kopf.Memo(settings=settings),
    )
    return 0


def _version(_: argparse.Namespace) -> int:
    print(__version__)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helmfile-operator", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current cluster")
    run.add_argument(
        "--namespace", action="append", help="watch only this namespace (repeatable); default: all"
    )
    run.add_argument("--verbose", action="store_true", help="debug logging")
    run.add_argument("--log-format", choices=["text", "json"], help="default: text")
    run.set_defaults(handler=_run)

    crds = commands.add_parser("crds", help="print (or write) the CustomResourceDefinitions")
    crds.add_argument("--output-dir", type=Path, help="write one file per CRD into this directory")
    crds.set_defaults(handler=_crds)

    schema = commands.add_parser(
        "schema", help="print (or write) JSON Schemas of both kinds, for editors and linters"
    )
    schema.add_argument(
        "--output-dir",
        type=Path,
        help="write helmfilestate.json and helmfilerelease.json into this directory",
    )
    schema.set_defaults(handler=_schema)

    docs = commands.add_parser("docs", help="print (or write) the API reference in Markdown")
    docs.add_argument("--output", type=Path, help="write to this file instead of stdout")
    docs.set_defaults(handler=_docs)

    version = commands.add_parser("version", help="print the version")
    version.set_defaults(handler=_version)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
