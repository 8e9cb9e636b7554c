"""Go-templated helmfiles: rendered by a real `helmfile` binary, then read like plain ones.

helmfile's templates are Go templates with Sprig and helmfile's own functions (`exec`,
`readFile`, `requiredEnv`, `fetchSecretValue`, …): no other program can render them faithfully.
`helmfile -f FILE -e ENV build --embed-values` renders every part of the file, its bases and its
sub-helmfiles for one environment, applies release templates and embeds the release values files
(`.gotmpl` ones rendered) as maps; that output is plain YAML, one document per state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from helmfile_operator.convert.helmfile import LoadedState, load_state_text
from helmfile_operator.convert.result import ConversionError, Dropped

__all__ = ["BUILD_TIMEOUT_SECONDS", "find_helmfile", "render_with_helmfile", "uses_exec"]

BUILD_TIMEOUT_SECONDS = 300
_SOURCE = re.compile(r"^---\n#  Source: (?P<path>.*)\n", re.MULTILINE)
_EXEC = re.compile(r"\{\{-?[^}]*\bexec\b")


def find_helmfile(explicit: str | None) -> str | None:
    """`explicit` (a path or a name on PATH) when given, else `helmfile` on PATH."""
    if explicit:
        if os.sep in explicit:
            return explicit if os.access(explicit, os.X_OK) else None
        return shutil.which(explicit)
    return shutil.which("helmfile")


def uses_exec(text: str) -> bool:
    """Whether a template calls helmfile's `exec` function."""
    return bool(_EXEC.search(text))


def render_with_helmfile(binary: str, path: Path, environment: str) -> LoadedState:
    """The states `helmfile build --embed-values` prints, the converted file's first, its
    sub-helmfiles' as its `subs`. Raises ConversionError when helmfile fails."""
    argv = [binary, "-f", str(path.resolve()), "-e", environment, "build", "--embed-values"]
    try:
        done = subprocess.run(
            argv,
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConversionError(f"{path}: `helmfile build` could not run: {error}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise ConversionError(
            f"{path}: `helmfile -e {environment} build` failed, so the Go templates of the file "
            f"cannot be rendered: {' / '.join(detail) or f'exit status {done.returncode}'}"
        )
    return parse_build_output(done.stdout, path)


def _strip_selector_labels(state: LoadedState) -> None:
    """`helmfile build` prints the labels `--selector` matches (name, namespace, chart) as if
    they were the release's own: those equal to the automatic value are removed again."""
    for release in state.raw.get("releases") or []:
        if not isinstance(release, dict) or not isinstance(release.get("labels"), dict):
            continue
        labels = release["labels"]
        automatic = {
            "name": str(release.get("name") or ""),
            "namespace": str(release.get("namespace") or ""),
            "chart": str(release.get("chart") or "").split("/")[-1],
        }
        for key, value in automatic.items():
            if labels.get(key) == value:
                del labels[key]
        if not labels:
            del release["labels"]


def parse_build_output(output: str, path: Path) -> LoadedState:
    """One LoadedState per `---\\n#  Source: <file>` document of `helmfile build`'s output."""
    matches = list(_SOURCE.finditer(output))
    if not matches:
        raise ConversionError(f"{path}: `helmfile build` printed no state")
    states: list[LoadedState] = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(output)
        source = Path(match["path"].strip())
        if not source.is_absolute():
            source = (path.parent / source).resolve()
        text = output[match.end() : end]
        state = load_state_text(text, source, root=path, templated_ok=True, resolve_helmfiles=False)
        _strip_selector_labels(state)
        # What `build` adds of its own: the file name, the defaults of binaries, the values.
        for key, default in (
            ("filepath", None),
            ("renderedvalues", None),
            ("helmBinary", "helm"),
            ("kustomizeBinary", "kustomize"),
        ):
            if default is None or state.raw.get(key) == default:
                state.raw.pop(key, None)
        states.append(state)
        if source.is_file():
            try:
                original = source.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                original = ""
            if uses_exec(original):
                state.dropped.append(
                    Dropped(
                        state.field("exec"),
                        "the file computes values with `exec`: the command ran once, on this "
                        "machine, during the conversion, and its output is frozen in the state; "
                        "the operator never runs commands",
                        "compute the value in CI and write it into the state, a ConfigMap or a "
                        "Secret (valuesFrom)",
                    )
                )
    main = next((s for s in states if s.path.resolve() == path.resolve()), states[0])
    main.subs = [s for s in states if s is not main]
    main.raw.pop("helmfiles", None)
    return main
