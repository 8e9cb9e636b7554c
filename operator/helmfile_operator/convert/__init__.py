"""`helmfile-operator convert`: a helmfile.yaml as a HelmfileState (and ConfigMaps).

    result = convert_file(Path("helmfile.yaml"), environment="prod", namespace="shop")
    print(result.to_yaml())          # the HelmfileState first, then ConfigMaps
    for dropped in result.dropped:   # what could not be carried over, field by field
        ...

Plain helmfiles are read here (`helmfile`), with helmfile's own layering rules; Go-templated
ones (`*.gotmpl`, or `{{ }}` in release fields) are rendered first by a `helmfile` binary
(`gotemplate`), or refused with a ConversionError when there is none. The state is built and
checked against the operator's own API models and renderer (`state`).
"""

from __future__ import annotations

from pathlib import Path

from helmfile_operator.convert.gotemplate import find_helmfile, render_with_helmfile
from helmfile_operator.convert.helmfile import LoadedState, NeedsTemplates, load_state
from helmfile_operator.convert.result import ConversionError, ConversionResult, Dropped
from helmfile_operator.convert.state import INLINE_VALUES_MAX_BYTES, build_state, state_name

__all__ = [
    "INLINE_VALUES_MAX_BYTES",
    "ConversionError",
    "ConversionResult",
    "Dropped",
    "convert_file",
]


def convert_file(
    path: Path,
    *,
    environment: str = "default",
    name: str | None = None,
    namespace: str | None = None,
    helmfile_binary: str | None = None,
) -> ConversionResult:
    """Convert the helmfile at `path` for `environment` into a HelmfileState named `name`
    (default: from the file's name, or its directory's for `helmfile.yaml`) in `namespace`
    (default: none, i.e. kubectl's). Raises ConversionError naming the file and the construct
    when nothing sensible can be produced."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: no such file")
    loaded: LoadedState
    rendered_by: str | None = None
    try:
        loaded = load_state(path)
    except NeedsTemplates as needs:
        binary = find_helmfile(helmfile_binary)
        if binary is None:
            raise ConversionError(
                f"{needs.path}: {needs.why}; a helmfile binary is needed to convert templated "
                "files (put `helmfile` on PATH or pass its path), or rewrite the templated parts "
                "as plain YAML"
            ) from None
        loaded = render_with_helmfile(binary, path, environment)
        rendered_by = binary
    result = build_state(
        loaded,
        name=state_name(path, name),
        namespace=namespace,
        environment=environment,
    )
    if rendered_by is not None:
        result.notes.insert(
            0,
            f"{path} holds Go templates: it was rendered with `{rendered_by} -e {environment} "
            "build --embed-values`, so the state holds the values of that rendering (templates, "
            "env and exec were evaluated once, on this machine)",
        )
    return result
