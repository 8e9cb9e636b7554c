"""`convert` on real helmfiles (tests/corpus/helmfile, see SOURCES.md there).

Each case either converts — and the converted state, validated and rendered by the operator's
own `render_state`, has the releases helmfile itself reads from the file (name, namespace, chart,
version, needs, installed), less those reported as dropped — or fails with a ConversionError
naming what cannot be converted. With a `helmfile` binary at hand, the releases are also
compared with what `helmfile build` prints.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.convert import ConversionError, ConversionResult, convert_file
from helmfile_operator.convert.helmfile import NeedsTemplates, load_state
from helmfile_operator.goyaml import load_manifest, load_values
from helmfile_operator.render.state import StateMeta, render_state

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "helmfile"
NAMESPACE = "converted"
# Share of the corpus's plain (not Go-templated) files that must convert.
MIN_CONVERTED_SHARE = 0.5


def _cases() -> list[tuple[str, str]]:
    cases = []
    for line in (CORPUS / "cases.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            file, *environment = line.split()
            cases.append((file, environment[0] if environment else "default"))
    return cases


CASES = _cases()


@functools.cache
def helmfile_binary() -> str | None:
    found = shutil.which("helmfile")
    if found:
        return found
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    built = sorted((cache / "helmfile-operator" / "testbin").glob("helmfile-*/helmfile"))
    return str(built[-1]) if built else None


def _helmfile_env() -> dict[str, str]:
    env = dict(os.environ)
    cache = Path(env.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    helms = sorted((cache / "helmfile-operator" / "testbin").glob("*/helm"))
    if helms and not shutil.which("helm"):
        env["PATH"] = f"{helms[-1].parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def is_templated(path: Path) -> bool:
    """Whether helmfile renders it as a Go template (so that only a helmfile binary reads it)."""
    try:
        load_state(path)
    except NeedsTemplates:
        return True
    except ConversionError:
        return False
    return False


# --- what helmfile reads: an independent, simpler reading of plain files ----------------------


def _parts(path: Path) -> list[dict[str, Any]]:
    text = path.read_text().replace("\r\n", "\n")
    return [load_values(part, str(path)) for part in text.split("\n---\n")]


def _read_helmfile(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for part in _parts(path):
        layered: dict[str, Any] = {}
        for base in part.get("bases") or []:
            for base_part in _parts(path.parent / base):
                layered["releases"] = layered.get("releases", []) + base_part.get("releases", [])
                layered.setdefault("repositories", []).extend(base_part.get("repositories", []))
                layered.update(
                    {k: v for k, v in base_part.items() if k not in ("releases", "repositories")}
                )
        layered["releases"] = layered.get("releases", []) + (part.get("releases") or [])
        layered["repositories"] = layered.get("repositories", []) + (part.get("repositories") or [])
        for key, value in part.items():
            if key not in ("releases", "repositories", "bases"):
                layered[key] = value
        for key, value in layered.items():
            if key in ("releases", "repositories") and not value:
                continue
            state[key] = value
    templates = state.get("templates") or {}
    default = state.get("defaultInherit") or []
    default = [default] if isinstance(default, str) else default
    releases = []
    for release in state.get("releases") or []:
        merged: dict[str, Any] = {}
        inherits = [{"template": d} for d in default] + list(release.get("inherit") or [])
        for inherit in inherits:
            template = copy.deepcopy(templates[inherit["template"]])
            for key in inherit.get("except") or []:
                template.pop(key, None)
            for key, value in template.items():
                merged.setdefault(key, value)
        for key, value in release.items():
            if key not in merged or merged[key] in (None, "", [], {}):
                merged[key] = value
        releases.append(merged)
    state["releases"] = releases
    return state


def _selected(release: dict[str, Any], selectors: list[str]) -> bool:
    labels = {**(release.get("labels") or {}), "name": release.get("name")}
    return any(
        all(labels.get(k) == v for k, _, v in (term.partition("=") for term in s.split(",")))
        for s in selectors
    )


def expected_releases(
    path: Path, selectors: list[str] | None = None, inherited: list[Any] | None = None
) -> list[dict[str, Any]]:
    """(name, namespace, chart URL+name, version, needs, installed) of every release of a plain
    helmfile and its sub-helmfiles, as helmfile reads them."""
    state = _read_helmfile(path)
    state["repositories"] = [*(inherited or []), *(state.get("repositories") or [])]
    result: list[dict[str, Any]] = []
    for entry in state.get("helmfiles") or []:
        sub = entry if isinstance(entry, str) else entry["path"]
        if "::" in sub:
            continue
        spec = {} if isinstance(entry, str) else entry
        passed = state["repositories"] if "repositories" in (spec.get("inherits") or []) else []
        for match in sorted(path.parent.glob(sub)):
            result += expected_releases(match, spec.get("selectors"), passed)
    repos = {r["name"]: r for r in state.get("repositories") or []}
    environment_values: dict[str, Any] = {}
    for release in state["releases"]:
        if selectors and not _selected(release, selectors):
            continue
        namespace = state.get("namespace") or release.get("namespace") or NAMESPACE
        chart, version = str(release["chart"]), release.get("version")
        version = None if version is None else str(version).split("@")[0] or None
        if chart.startswith("oci://"):
            reference = chart.split("@")[0]
            prefix, _, name = reference.rpartition("/")
            if ":" in name:
                name, _, tag = name.partition(":")
                version = version or tag
            url = prefix
        else:
            repo_name, _, rest = chart.partition("/")
            repo = repos.get(repo_name, {})
            if repo.get("oci"):
                directory, _, name = rest.rpartition("/")
                url = (
                    "oci://"
                    + repo["url"].removeprefix("oci://")
                    + (f"/{directory}" if directory else "")
                )
            else:
                url, name = repo.get("url", ""), rest
        needs = []
        for need in release.get("needs") or []:
            parts = need.split("/")
            needs.append((parts[-2] if len(parts) > 1 else namespace, parts[-1]))
        condition = release.get("condition")
        installed = release.get("installed", True)
        if condition:
            holder: Any = environment_values
            for key in condition.split(".")[:-1]:
                holder = holder.get(key, {}) if isinstance(holder, dict) else {}
            installed = installed and holder.get("enabled") is True
        result.append(
            {
                "name": release["name"],
                "namespace": namespace,
                "chart": (url.rstrip("/"), name),
                "version": version,
                "needs": sorted(needs),
                "installed": installed,
            }
        )
    return result


# --- what the converted state renders to ---------------------------------------------------------


def rendered_releases(result: ConversionResult) -> list[dict[str, Any]]:
    spec = HelmfileStateSpec.model_validate(result.state["spec"])
    config_maps = {
        d["metadata"]["name"]: load_values(d["data"]["values.yaml"], "cm")
        for d in result.documents[1:]
    }
    selected = spec.environments.get(spec.environment)
    from_config_maps = [config_maps[r.name] for r in (selected.values_from if selected else [])]
    rendered = render_state(StateMeta("corpus", NAMESPACE, {}, {}), spec, from_config_maps)
    by_resource = {r.resource_name: r for r in rendered.releases}
    return [
        {
            "name": r.spec.release_name,
            "namespace": r.spec.target_namespace,
            "chart": (r.spec.chart.repository.url.rstrip("/"), r.spec.chart.name),
            "version": r.spec.chart.version,
            "needs": sorted(
                (by_resource[n].spec.target_namespace, by_resource[n].spec.release_name)
                for n in r.spec.needs
            ),
            "installed": r.spec.installed,
        }
        for r in rendered.releases
    ]


def _dropped_releases(result: ConversionResult) -> set[str]:
    """`[file: ]releases[i]` fields: releases dropped as a whole (name in the message)."""
    names = set()
    for dropped in result.dropped:
        if re.search(r"releases\[\d+\]$", dropped.field):
            match = re.match(r"release '([^']+)'", dropped.why)
            if match:
                names.add(match[1])
    return names


def _without_dropped(
    releases: list[dict[str, Any]], result: ConversionResult
) -> list[dict[str, Any]]:
    dropped = _dropped_releases(result)
    kept = [r for r in releases if r["name"] not in dropped]
    names = {(r["namespace"], r["name"]) for r in kept}
    for release in kept:
        release["needs"] = sorted(n for n in release["needs"] if n in names)
    return kept


def _key(releases: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[k] if k != "needs" else tuple(r[k]) for k in sorted(r)) for r in releases)


def helmfile_build_releases(
    binary: str, path: Path, environment: str
) -> list[dict[str, Any]] | None:
    """The releases `helmfile build` prints, or None when it fails (e.g. no network for OCI)."""
    done = subprocess.run(
        [binary, "-f", str(path), "-e", environment, "build"],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_helmfile_env(),
    )
    if done.returncode != 0:
        return None
    releases = []
    for document in load_manifest(done.stdout, "helmfile build"):
        repos = {r["name"]: r for r in document.get("repositories") or []}
        for release in document.get("releases") or []:
            document_copy = {"repositories": list(repos.values()), "releases": [release]}
            releases.append((document_copy, document.get("namespace")))
    result = []
    for document_copy, namespace in releases:
        one = _expected_from_state(document_copy, namespace)
        result.extend(one)
    return result


def _expected_from_state(state: dict[str, Any], namespace: str | None) -> list[dict[str, Any]]:
    tmp = {**state}
    if namespace:
        tmp["namespace"] = namespace
    repos = {r["name"]: r for r in tmp.get("repositories") or []}
    out = []
    for release in tmp["releases"]:
        ns = tmp.get("namespace") or release.get("namespace") or NAMESPACE
        chart, version = str(release["chart"]), release.get("version")
        version = None if not version else str(version).split("@")[0] or None
        if chart.startswith("oci://"):
            prefix, _, name = chart.split("@")[0].rpartition("/")
            if ":" in name:
                name, _, tag = name.partition(":")
                version = version or tag
            url = prefix
        else:
            repo_name, _, rest = chart.partition("/")
            repo = repos.get(repo_name, {})
            if repo.get("oci"):
                directory, _, name = rest.rpartition("/")
                url = (
                    "oci://"
                    + repo["url"].removeprefix("oci://")
                    + (f"/{directory}" if directory else "")
                )
            else:
                url, name = repo.get("url", ""), rest
        needs = []
        for need in release.get("needs") or []:
            parts = need.split("/")
            needs.append((parts[-2] if len(parts) > 1 and parts[-2] else ns, parts[-1]))
        out.append(
            {
                "name": release["name"],
                "namespace": ns,
                "chart": (url.rstrip("/"), name),
                "version": version,
                "needs": sorted(needs),
                "installed": release.get("installed", True),
            }
        )
    return out


# --- the tests ---------------------------------------------------------------------------------


def _convert(file: str, environment: str, binary: str | None) -> ConversionResult:
    return convert_file(
        CORPUS / file, environment=environment, namespace=NAMESPACE, helmfile_binary=binary
    )


@pytest.mark.parametrize(("file", "environment"), CASES, ids=[c[0] for c in CASES])
def test_corpus_file(file: str, environment: str) -> None:
    path = CORPUS / file
    binary = helmfile_binary()
    templated = is_templated(path)
    try:
        result = _convert(file, environment, binary if templated else None)
    except ConversionError as error:
        message = str(error)
        assert file.split("/")[-1] in message or path.name in message
        assert re.search(
            r"local path|not a DNS label|helmfile binary is needed|build` failed|neither http|"
            r"does not define|none of its releases|not defined",
            message,
        ), message
        if templated and binary is None:
            assert "helmfile binary is needed" in message
        return
    converted = rendered_releases(result)
    if not templated:
        expected = _without_dropped(expected_releases(path), result)
        assert _key(converted) == _key(expected)
    if binary is not None:
        built = helmfile_build_releases(binary, path, environment)
        if built is not None:  # helmfile itself could not build it here (e.g. no network)
            assert _key(converted) == _key(_without_dropped(built, result))


def test_corpus_summary() -> None:
    outcomes: Counter[str] = Counter()
    converted_plain = plain = 0
    lines = []
    for file, environment in CASES:
        templated = is_templated(CORPUS / file)
        plain += not templated
        try:
            result = _convert(file, environment, None)
        except ConversionError as error:
            message = str(error)
            construct = next(
                (
                    label
                    for pattern, label in (
                        ("helmfile binary is needed", "Go templates (no helmfile binary)"),
                        ("neither http", "helm-git repositories"),
                        ("does not define", "undefined repositories"),
                        ("not a DNS label", "release names that are not DNS labels"),
                        ("local path", "local charts only"),
                    )
                    if pattern in message
                ),
                "other",
            )
            outcomes[f"failed: {construct}"] += 1
            lines.append(f"  FAIL {file}: {construct}")
            continue
        converted_plain += not templated
        kind = "converted cleanly" if not result.dropped else "converted with drops"
        outcomes[kind] += 1
        lines.append(
            f"  OK   {file}: {len(result.state['spec']['releases'])} releases, "
            f"{len(result.dropped)} dropped"
        )
    print(f"\ncorpus: {len(CASES)} files, {plain} plain; outcomes: {dict(outcomes)}")
    print("\n".join(lines))
    assert converted_plain >= MIN_CONVERTED_SHARE * plain, (converted_plain, plain)
