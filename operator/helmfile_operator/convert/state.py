"""Building a HelmfileState (and ConfigMaps) from a read helmfile (`helmfile.LoadedState`).

Every field of the helmfile either becomes a field of the state, or is reported: as a
`Dropped` entry when something it did is lost, as a note when the user has to do something
(credentials) or the meaning shifts slightly. The state is validated with the API's models and
rendered with the operator's own `render_state` before it is returned, so that what `convert`
prints is what the operator will accept.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import ValidationError

from helmfile_operator.api.models import (
    API_VERSION,
    DNS_LABEL,
    HELM_RELEASE_NAME_MAX,
    MAX_HELM_TIMEOUT,
    HelmfileStateSpec,
    describe_validation_error,
)
from helmfile_operator.convert.helmfile import LoadedState, is_remote, selected
from helmfile_operator.convert.result import ConversionError, ConversionResult, Dropped
from helmfile_operator.goyaml import GoYAMLError, load_values
from helmfile_operator.render.errors import RenderError
from helmfile_operator.render.state import StateMeta, render_state
from helmfile_operator.render.values import get_path, merge_all

__all__ = ["INLINE_VALUES_MAX_BYTES", "build_state"]

# A values file larger than this goes into a ConfigMap (`valuesFrom`) rather than into the spec:
# a HelmfileState, like every object, must fit in etcd (about 1.5 MiB) with all its releases.
INLINE_VALUES_MAX_BYTES = 256 * 1024
_DNS_LABEL = re.compile(DNS_LABEL)
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_MAX_TIMEOUT_SECONDS = 24 * 3600
_DEFAULT_ENVIRONMENT = "default"

# helm options of helmDefaults and of releases that HelmOptions has.
_HELM_BOOLS = {
    "wait": "wait",
    "waitForJobs": "waitForJobs",
    "atomic": "atomic",
    "rollbackOnFailure": "atomic",  # helm 4's name of --atomic
    "createNamespace": "createNamespace",
}

_CHARTIFY = (
    "helmfile rewrites the chart with chartify (kustomize) on the machine running it; the "
    "operator installs charts as published",
    "publish the patched chart to a repository or OCI registry, or make the change through the "
    "chart's values",
)
_GO_TEMPLATE = (
    "a Go template of helmfile; the operator's templates are Jinja2 (valuesTemplate)",
    "rewrite it as a Jinja2 `valuesTemplate` entry of the release (docs/rendering.md), or set "
    "the value it computes",
)
_HELM_FLAG = (
    "a helm or helmfile option the operator does not offer",
    "remove it (docs/migrating-from-helmfile.md lists what the operator supports)",
)
_KUBE_CONTEXT = (
    "the operator deploys into the cluster it runs in",
    "apply the state in the cluster of that context (one operator per cluster)",
)
_MISSING_FILE_HANDLER = (
    "there are no files in the cluster; missing files were handled during the conversion",
    "use `optional: true` on a `valuesFrom` entry for a ConfigMap that may be missing",
)
_WHY: dict[str, tuple[str, str]] = {
    "hooks": (
        "hooks run commands on the machine running helmfile; the operator runs no commands",
        "use Helm chart hooks (`helm.sh/hook` Jobs), or a release that the others `needs`",
    ),
    "secrets": (
        "helm-secrets would need the decryption keys in the operator, and decrypted values "
        "would be stored in HelmfileRelease specs",
        "keep the values in a Kubernetes Secret (Sealed Secrets, SOPS in your GitOps tool, "
        "External Secrets) and add `valuesFrom: [{kind: Secret, name: …}]` to the release",
    ),
    "kubeContext": _KUBE_CONTEXT,
    "missingFileHandler": _MISSING_FILE_HANDLER,
    "missingFileHandlerConfig": _MISSING_FILE_HANDLER,
    "postRenderer": (
        "a post-renderer is a program that the operator would have to run",
        "make the change in the chart or through its values",
    ),
    "postRendererArgs": (
        "a post-renderer is a program that the operator would have to run",
        "make the change in the chart or through its values",
    ),
    "strategicMergePatches": _CHARTIFY,
    "jsonPatches": _CHARTIFY,
    "transformers": _CHARTIFY,
    "dependencies": _CHARTIFY,
    "adopt": _CHARTIFY,
    "forceNamespace": _CHARTIFY,
    "valuesTemplate": _GO_TEMPLATE,
    "setTemplate": _GO_TEMPLATE,
    "installedTemplate": _GO_TEMPLATE,
    "conditionTemplate": _GO_TEMPLATE,
    "waitTemplate": _GO_TEMPLATE,
    "verifyTemplate": _GO_TEMPLATE,
    "apiVersions": (
        "the operator renders charts against the real cluster",
        "remove it; the cluster's API versions apply",
    ),
    "kubeVersion": (
        "the operator renders charts against the real cluster",
        "remove it; the cluster's version applies",
    ),
    "helmBinary": (
        "the operator runs its own helm",
        "set HELMFILE_OPERATOR_HELM_BINARY on the operator if needed",
    ),
    "kustomizeBinary": _CHARTIFY,
    "lockFilePath": (
        "helmfile's lock file pins versions on the machine running it",
        "pin exact chart versions in `version`",
    ),
    "chart": (
        "a helmfile-wide chart override is a command-line feature of helmfile",
        "set each release's chart",
    ),
    "env": (
        "environment variables of the machine running helmfile",
        "set the values in the state or a ConfigMap",
    ),
}
_TOP_LEVEL = frozenset(
    {
        "repositories",
        "releases",
        "environments",
        "helmDefaults",
        "helmfiles",
        "bases",
        "templates",
        "values",
        "commonLabels",
        "namespace",
        "defaultInherit",
    }
)
_RELEASE_FIELDS = frozenset(
    {
        "name",
        "namespace",
        "chart",
        "version",
        "values",
        "set",
        "setString",
        "needs",
        "installed",
        "labels",
        "condition",
        "wait",
        "waitForJobs",
        "timeout",
        "atomic",
        "rollbackOnFailure",
        "createNamespace",
        "historyMax",
        "inherit",
    }
)
_HELM_DEFAULTS = frozenset(
    {
        "wait",
        "waitForJobs",
        "timeout",
        "atomic",
        "rollbackOnFailure",
        "createNamespace",
        "historyMax",
    }
)
_REPOSITORY_FIELDS = frozenset(
    {
        "name",
        "url",
        "oci",
        "username",
        "password",
        "caFile",
        "skipTLSVerify",
        "insecureSkipTLSVerify",
    }
)


@dataclass
class _Repo:
    name: str
    url: str  # without `oci://` when oci
    oci: bool
    secret_ref: str | None
    ca_secret_ref: str | None
    insecure: bool
    origin: str


@dataclass
class _Build:
    name: str
    namespace: str | None
    environment: str
    dropped: list[Dropped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    config_maps: list[dict[str, Any]] = field(default_factory=list)
    # ConfigMap name → its values, for rendering the selected environment.
    config_map_values: dict[str, dict[str, Any]] = field(default_factory=dict)

    def drop(self, where: str, key: str, value: Any = None) -> None:
        why, instead = _WHY.get(key, _HELM_FLAG)
        self.dropped.append(Dropped(where, why, instead))

    def unknown(self, where: str) -> None:
        self.dropped.append(
            Dropped(
                where,
                "not a helmfile field that the converter knows, so it is not carried over",
                "check the spelling; if helmfile knows it, set the equivalent by hand "
                "(docs/migrating-from-helmfile.md)",
            )
        )


def build_state(
    main: LoadedState, *, name: str, namespace: str | None, environment: str
) -> ConversionResult:
    build = _Build(name=name, namespace=namespace, environment=environment)
    states = _flatten(main)
    for state in states:
        build.dropped.extend(state.dropped)
        _top_level(build, state)
    repositories = _repositories(build, states)
    environments = _environments(build, states)
    if environment not in environments and environment != _DEFAULT_ENVIRONMENT:
        raise ConversionError(
            f"{main.path}: environment {environment!r} is not defined in the helmfile (known: "
            f"{', '.join(sorted(environments)) or 'none'}); helmfile fails the same way"
        )
    defaults = _helm_options(build, main.raw.get("helmDefaults") or {}, "helmDefaults", True)
    _default_notes(build, main.raw.get("helmDefaults") or {})

    releases: list[dict[str, Any]] = []
    origins: list[tuple[LoadedState, int]] = []
    for state in states:
        sub_defaults = (
            _helm_options(
                build, state.raw.get("helmDefaults") or {}, state.field("helmDefaults"), True
            )
            if state is not main
            else {}
        )
        for i, raw in enumerate(state.raw.get("releases") or []):
            if state.selectors and not selected(raw, state.selectors):
                continue
            converted = _release(build, state, i, raw, repositories)
            if converted is None:
                continue
            for key, value in sub_defaults.items():
                if defaults.get(key) != value:
                    converted.setdefault("helm", {}).setdefault(key, value)
            releases.append(converted)
            origins.append((state, i))
    if not releases:
        reasons = "; ".join(f"{d.field}: {d.why}" for d in build.dropped if d.field.endswith("]"))
        raise ConversionError(
            f"{main.path}: none of its releases can be converted"
            + (f" ({reasons})" if reasons else " (it has no releases)")
        )
    _unique_names(main, releases, origins)
    _needs(build, releases, origins)
    _conditions(build, releases, environments, origins)

    spec: dict[str, Any] = {"environment": environment}
    if environments:
        spec["environments"] = environments
    used = _used_repositories(repositories, releases)
    if used:
        spec["repositories"] = used
    if defaults:
        spec["helmDefaults"] = defaults
    spec["releases"] = releases
    state_doc = _validated(main, build, spec)
    return ConversionResult(
        documents=[state_doc, *build.config_maps], dropped=build.dropped, notes=build.notes
    )


def _flatten(main: LoadedState) -> list[LoadedState]:
    """Sub-helmfiles first (helmfile deploys them before the releases of their parent)."""
    result: list[LoadedState] = []
    for sub in main.subs:
        result.extend(_flatten(sub))
    result.append(main)
    return result


# --- top level ------------------------------------------------------------------------------


def _top_level(build: _Build, state: LoadedState) -> None:
    for key, value in state.raw.items():
        if key in _TOP_LEVEL or _empty(value):
            continue
        build.drop(state.field(key), key) if key in _WHY else build.unknown(state.field(key))
    helmfiles = state.raw.get("helmfiles") or []
    for k, entry in enumerate(helmfiles if isinstance(helmfiles, list) else []):
        if isinstance(entry, dict) and entry.get("selectorsInherited"):
            build.notes.append(
                f"{state.field(f'helmfiles[{k}]')}: selectorsInherited has no effect (no "
                "command-line selectors)"
            )


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", [], {})


# --- repositories -----------------------------------------------------------------------------


def _repositories(build: _Build, states: list[LoadedState]) -> dict[str, _Repo]:
    repositories: dict[str, _Repo] = {}
    taken: set[str] = set()
    for state in states:
        entries = state.raw.get("repositories") or []
        for k, entry in enumerate(entries if isinstance(entries, list) else []):
            where = state.field(f"repositories[{k}]")
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise ConversionError(f"{state.path}: {where} must be a map with a `name`")
            repo = _repository(build, entry, where, taken)
            if repo is None:
                continue
            previous = repositories.get(entry["name"])
            if previous is not None:
                if (previous.url, previous.oci) != (repo.url, repo.oci):
                    raise ConversionError(
                        f"{state.path}: {where} defines repository {entry['name']!r} with URL "
                        f"{repo.url!r}, but {previous.origin} gives it {previous.url!r}; one "
                        "state has one repository of a name: rename one of them"
                    )
                continue
            taken.add(repo.name)
            repositories[entry["name"]] = repo
    return repositories


def _repository(build: _Build, entry: dict[str, Any], where: str, taken: set[str]) -> _Repo | None:
    helmfile_name: str = entry["name"]
    url = _text(entry.get("url")).strip()
    oci = entry.get("oci") is True
    for key, value in entry.items():
        if key in _REPOSITORY_FIELDS or _empty(value):
            continue
        if key in ("certFile", "keyFile"):
            build.dropped.append(
                Dropped(
                    f"{where}.{key}",
                    "client certificates for chart repositories are not supported",
                    "use username/password (a Secret) or a repository that does not need one",
                )
            )
        elif key in (
            "passCredentials",
            "verify",
            "keyring",
            "managed",
            "registryConfig",
            "plainHttp",
        ):
            build.drop(f"{where}.{key}", key)
        else:
            build.unknown(f"{where}.{key}")
    if oci:
        url = url.removeprefix("oci://")
    elif not re.match(r"^https?://.+", url):
        build.dropped.append(
            Dropped(
                where,
                f"repository {helmfile_name!r} has the URL {url!r}, which is neither http(s):// "
                "nor an OCI registry (helm plugins such as helm-git are not available)",
                "publish the charts to an http(s) chart repository or an OCI registry",
            )
        )
        return None
    name = _dns_label(helmfile_name, taken)
    if name != helmfile_name:
        build.notes.append(
            f"{where}: repository {helmfile_name!r} is named {name!r} (a DNS label) in the state; "
            "its releases' charts name it so"
        )
    secret_ref = None
    if entry.get("username") or entry.get("password"):
        secret_ref = f"helmfile-repo-{name}"
        build.notes.append(
            f"repository {helmfile_name!r} has credentials, which are not copied: create Secret "
            f"{secret_ref!r} with keys `username` and `password` in the state's namespace (e.g. "
            f"`kubectl create secret generic {secret_ref} --from-literal=username=… "
            "--from-literal=password=…`)"
        )
    ca_secret_ref = None
    if entry.get("caFile"):
        ca_secret_ref = f"helmfile-repo-{name}-ca"
        build.notes.append(
            f"repository {helmfile_name!r} trusts the CA file {entry['caFile']!r}: create Secret "
            f"{ca_secret_ref!r} with key `ca.crt` (`kubectl create secret generic {ca_secret_ref} "
            f"--from-file=ca.crt={entry['caFile']}`)"
        )
    insecure = entry.get("skipTLSVerify") is True or entry.get("insecureSkipTLSVerify") is True
    return _Repo(name, url.rstrip("/"), oci, secret_ref, ca_secret_ref, insecure, where)


def _used_repositories(
    repositories: dict[str, _Repo], releases: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    extra: list[dict[str, Any]] = []
    for repo in repositories.values():
        if repo.oci and repo.secret_ref is None:
            continue  # its charts became full oci:// references
        if repo.oci:
            continue  # added per chart path below
        entry: dict[str, Any] = {"name": repo.name, "url": repo.url}
        _repo_auth(entry, repo)
        result.append(entry)
        seen.add(repo.name)
    for release in releases:
        oci_repo = release.pop("_ociRepository", None)
        if oci_repo is not None and oci_repo["name"] not in seen:
            seen.add(oci_repo["name"])
            extra.append(oci_repo)
    return result + extra


def _repo_auth(entry: dict[str, Any], repo: _Repo) -> None:
    if repo.secret_ref:
        entry["secretRef"] = repo.secret_ref
    if repo.ca_secret_ref:
        entry["caSecretRef"] = repo.ca_secret_ref
    if repo.insecure:
        entry["insecureSkipTlsVerify"] = True


# --- environments -----------------------------------------------------------------------------


def _environments(build: _Build, states: list[LoadedState]) -> dict[str, dict[str, Any]]:
    environments: dict[str, dict[str, Any]] = {}
    for state in states:
        handler = state.raw.get("missingFileHandler")
        defaults = list(state.raw.get("values") or [])
        specs = state.raw.get("environments") or {}
        if not isinstance(specs, dict):
            raise ConversionError(f"{state.path}: `environments` must be a map")
        names = list(specs)
        if (defaults or state.override_values) and _DEFAULT_ENVIRONMENT not in names:
            names.append(_DEFAULT_ENVIRONMENT)
        for env_name in names:
            spec = specs.get(env_name) or {}
            if not isinstance(spec, dict):
                raise ConversionError(f"{state.path}: environments.{env_name} must be a map")
            where = state.field(f"environments.{env_name}")
            for key, value in spec.items():
                if key == "values" or _empty(value):
                    continue
                if key in (
                    "secrets",
                    "kubeContext",
                    "missingFileHandler",
                    "missingFileHandlerConfig",
                ):
                    build.drop(f"{where}.{key}", key)
                else:
                    build.unknown(f"{where}.{key}")
            entries = [
                *((e, state.field(f"values[{k}]")) for k, e in enumerate(defaults)),
                *((e, f"{where}.values[{k}]") for k, e in enumerate(spec.get("values") or [])),
                *(
                    (e, state.field(f"values[{k}] (of the parent's helmfiles entry)"))
                    for k, e in enumerate(state.override_values)
                ),
            ]
            target = environments.setdefault(env_name, {})
            for entry, field_name in entries:
                _environment_entry(
                    build,
                    state,
                    env_name,
                    target,
                    entry,
                    field_name,
                    spec.get("missingFileHandler") or handler,
                )
    for env_name, env in list(environments.items()):
        if not env:
            environments[env_name] = {}
    return environments


def _environment_entry(
    build: _Build,
    state: LoadedState,
    env_name: str,
    target: dict[str, Any],
    entry: Any,
    where: str,
    handler: Any,
) -> None:
    if isinstance(entry, dict):
        if target.get("valuesFrom"):
            build.notes.append(
                f"{where}: inline values now merge before the file(s) of environment "
                f"{env_name!r} that went into ConfigMaps (the operator merges valuesFrom last)"
            )
        target.setdefault("values", []).append(entry)
        return
    if entry is None:
        return
    if not isinstance(entry, str):
        raise ConversionError(f"{state.path}: {where} must be a map or a file name")
    loaded = _values_file(build, state, entry, where, handler)
    if loaded is None:
        return
    values, text = loaded
    if text is None:
        target.setdefault("values", []).append(values)
        return
    cm = _config_map(build, f"{build.name}-env-{env_name}-{len(build.config_maps)}", text, entry)
    build.config_map_values[cm] = values
    target.setdefault("valuesFrom", []).append({"kind": "ConfigMap", "name": cm})


def _values_file(
    build: _Build, state: LoadedState, entry: str, where: str, handler: Any
) -> tuple[dict[str, Any], str | None] | None:
    """(values, None) to inline, (values, text) for a ConfigMap, None when dropped/skipped."""
    if entry.startswith("ref+"):
        build.dropped.append(
            Dropped(
                where,
                "a vals reference (`ref+…`) is a secret fetched by helmfile when it runs",
                "put the secret in a Kubernetes Secret and add it to the release's `valuesFrom`",
            )
        )
        return None
    if is_remote(entry):
        build.dropped.append(
            Dropped(
                where,
                f"the remote values file {entry!r} is fetched by helmfile when it runs",
                "download it into a ConfigMap and reference it with `valuesFrom`",
            )
        )
        return None
    if "{{" in entry:
        build.dropped.append(Dropped(where, *_GO_TEMPLATE))
        return None
    path = (state.base_dir / entry).resolve()
    if entry.endswith(".gotmpl"):
        build.dropped.append(
            Dropped(
                where,
                f"the values file {entry!r} is a Go template of helmfile (no helmfile binary "
                "rendered it); the operator's templates are Jinja2",
                "rewrite it as a Jinja2 `valuesTemplate` entry (docs/rendering.md), or convert "
                "with a helmfile binary (`--helmfile-binary`) to freeze its rendered values",
            )
        )
        return None
    if not path.is_file():
        mode = str(handler or "Error")
        if mode.lower() in ("warn", "info", "debug"):
            build.notes.append(
                f"{where}: values file {entry!r} does not exist and is skipped "
                f"(missingFileHandler: {mode}, as helmfile does)"
            )
            return None
        raise ConversionError(
            f"{state.path}: {where} names the values file {entry!r}, which does not exist "
            "(helmfile fails too; set missingFileHandler: Warn to skip it)"
        )
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: the values file cannot be read: {error}") from None
    try:
        values = load_values(text, str(path))
    except GoYAMLError as error:
        raise ConversionError(f"{error} (named by {state.path}: {where})") from None
    if "{{" in text:
        build.notes.append(
            f"{where}: {entry!r} holds `{{{{ }}}}`: helmfile passes a plain values file to helm "
            "as it is (for the chart's own `tpl`), and so does the operator"
        )
    if len(raw) > INLINE_VALUES_MAX_BYTES:
        return values, text
    return values, None


def _config_map(build: _Build, name: str, text: str, source: str) -> str:
    name = _dns_subdomain(name)
    metadata: dict[str, Any] = {"name": name}
    if build.namespace:
        metadata["namespace"] = build.namespace
    metadata["annotations"] = {"helmfile.dev/converted-from": source}
    build.config_maps.append(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata,
            "data": {"values.yaml": text},
        }
    )
    build.notes.append(
        f"values file {source!r} is larger than {INLINE_VALUES_MAX_BYTES // 1024} KiB: it is in "
        f"ConfigMap {name!r} (apply it with the state)"
    )
    return name


# --- helm options ------------------------------------------------------------------------------


def _helm_options(build: _Build, raw: Any, where: str, is_defaults: bool) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ConversionError(f"{where} must be a map")
    options: dict[str, Any] = {}
    for key, value in raw.items():
        field_name = f"{where}.{key}"
        if key in _HELM_BOOLS:
            if isinstance(value, bool):
                options[_HELM_BOOLS[key]] = value
            elif value is not None:
                raise ConversionError(f"{field_name} must be true or false, not {value!r}")
        elif key == "timeout":
            if value is None or value == 0:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConversionError(f"{field_name} must be a number of seconds, not {value!r}")
            if value > _MAX_TIMEOUT_SECONDS:
                build.dropped.append(
                    Dropped(
                        field_name,
                        f"{value} seconds is more than the operator's longest helm timeout "
                        f"({MAX_HELM_TIMEOUT}); it is {MAX_HELM_TIMEOUT} in the state",
                        "split the work, or accept the shorter timeout",
                    )
                )
                options["timeout"] = MAX_HELM_TIMEOUT
            else:
                options["timeout"] = f"{value}s"
        elif key == "historyMax":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConversionError(f"{field_name} must be a number, not {value!r}")
            options["historyMax"] = value
        elif is_defaults and not _empty(value):
            if key == "kubeContext":
                build.drop(field_name, key)
            elif key == "args" or key.endswith("Args"):
                build.dropped.append(
                    Dropped(
                        field_name,
                        "extra helm command-line arguments are not passed by the operator",
                        "use the matching field of `helmDefaults`/`helm` if there is one",
                    )
                )
            else:
                build.drop(field_name, key)
    return options


def _default_notes(build: _Build, raw: Any) -> None:
    if not isinstance(raw, dict):
        return
    missing = [k for k in ("wait", "atomic") if k not in raw and "rollbackOnFailure" not in raw]
    if missing:
        build.notes.append(
            f"helmfile's default is {' and '.join(f'{k}: false' for k in missing)}; the "
            f"operator's is {' and '.join(f'{k}: true' for k in missing)}: set "
            f"spec.helmDefaults.{missing[0]}: false to keep helmfile's behaviour"
        )


# --- releases -----------------------------------------------------------------------------------


def _release(
    build: _Build, state: LoadedState, i: int, raw: dict[str, Any], repositories: dict[str, _Repo]
) -> dict[str, Any] | None:
    where = state.field(f"releases[{i}]")
    name = _text(raw.get("name"))
    if not name:
        raise ConversionError(f"{state.path}: {where} has no name")
    if len(name) > HELM_RELEASE_NAME_MAX or not _DNS_LABEL.match(name):
        build.dropped.append(
            Dropped(
                where,
                f"release {name!r}: its name is not a DNS label of at most "
                f"{HELM_RELEASE_NAME_MAX} characters, which the operator needs (it names the "
                "HelmfileRelease)",
                "rename the release (helm then installs it anew) or manage it apart",
            )
        )
        return None
    namespace = _text(state.raw.get("namespace")) or _text(raw.get("namespace")) or None
    if namespace is not None and (len(namespace) > 63 or not _DNS_LABEL.match(namespace)):
        build.dropped.append(
            Dropped(
                where,
                f"release {name!r}: namespace {namespace!r} is not a DNS label",
                "fix the namespace",
            )
        )
        return None
    chart = _chart(build, where, name, raw, repositories)
    if chart is None:
        return None
    release: dict[str, Any] = {"name": name}
    if namespace:
        release["namespace"] = namespace
    release.update(chart)

    labels = {str(k): _text(v) for k, v in (raw.get("labels") or {}).items()}
    labels.update({str(k): _text(v) for k, v in (state.raw.get("commonLabels") or {}).items()})
    if labels:
        release["labels"] = labels
    condition = raw.get("condition")
    if condition not in (None, ""):
        release["condition"] = _text(condition)
    installed = raw.get("installed")
    if installed is not None:
        if not isinstance(installed, bool):
            raise ConversionError(f"{state.path}: {where}.installed must be true or false")
        release["installed"] = installed

    _values(build, state, where, release, raw)
    sets = [
        *_set_entries(build, where, "set", raw.get("set"), as_string=False),
        *_set_entries(build, where, "setString", raw.get("setString"), as_string=True),
    ]
    if sets:
        release["set"] = sets
    needs = raw.get("needs") or []
    if needs:
        if not isinstance(needs, list):
            raise ConversionError(f"{state.path}: {where}.needs must be a list")
        release["needs"] = [_text(n) for n in needs]
    helm = _helm_options(build, {k: raw[k] for k in _HELM_DEFAULTS if k in raw}, where, False)
    if helm:
        release["helm"] = helm
    for key, value in raw.items():
        if key in _RELEASE_FIELDS or _empty(value):
            continue
        if key in _WHY or key in _KNOWN_RELEASE_FLAGS:
            build.drop(f"{where}.{key}", key)
        else:
            build.unknown(f"{where}.{key}")
    return release


_KNOWN_RELEASE_FLAGS = frozenset(
    {
        "verify",
        "keyring",
        "devel",
        "enableDNS",
        "waitRetries",
        "recreatePods",
        "force",
        "cleanupOnFail",
        "forceConflicts",
        "reuseValues",
        "disableOpenAPIValidation",
        "disableValidation",
        "disableValidationOnInstall",
        "unitTests",
        "description",
        "insecureSkipTLSVerify",
        "plainHttp",
        "chartPath",
        "directory",
        "valuesPathPrefix",
        "forceGoGetter",
        "skipDeps",
        "skipRefresh",
        "skipSchemaValidation",
        "cascade",
        "suppressOutputLineRegex",
        "disableAutoDetectedKubeVersionForDiff",
        "suppressDiff",
        "deleteWait",
        "deleteTimeout",
        "syncReleaseLabels",
        "takeOwnership",
        "serverSide",
        "trackMode",
        "trackTimeout",
        "trackLogs",
        "trackFailedLogs",
        "helmStuckGrace",
        "trackKinds",
        "skipKinds",
        "trackResources",
        "kubedogQPS",
        "kubedogBurst",
        "trackFailOnError",
        "updateStrategy",
    }
)


def _chart(
    build: _Build, where: str, name: str, raw: dict[str, Any], repositories: dict[str, _Repo]
) -> dict[str, Any] | None:
    chart = _text(raw.get("chart")).strip()
    version = _text(raw.get("version")).strip() or None
    if isinstance(raw.get("version"), (int, float)) and not isinstance(raw.get("version"), bool):
        build.notes.append(
            f"{where}.version: {raw['version']!r} is an unquoted number in the helmfile; it is "
            f"{version!r} in the state: quote versions such as `1.10`"
        )
    if version and "@" in version:
        version, _, digest = version.partition("@")
        build.dropped.append(_digest(f"{where}.version", digest))
        version = version or None
    if chart.startswith("oci://"):
        reference = chart
        if "@" in reference.rsplit("/", 1)[-1]:
            reference, _, digest = reference.rpartition("@")
            build.dropped.append(_digest(f"{where}.chart", digest))
        prefix, _, last = reference.rpartition("/")
        if ":" in last and prefix != "oci:/":
            last, _, tag = last.partition(":")
            if version is None:
                version = tag
            elif version != tag:
                build.notes.append(
                    f"{where}.chart: the tag {tag!r} is dropped in favour of version {version!r}"
                )
            reference = f"{prefix}/{last}"
        return _chart_fields(reference, version)
    repo_name, slash, rest = chart.partition("/")
    repo = repositories.get(repo_name) if slash else None
    if repo is None or not rest:
        if chart.startswith((".", "/")) or not slash:
            why = f"release {name!r}: chart {chart!r} is a local path"
        elif is_remote(chart):
            why = f"release {name!r}: chart {chart!r} is fetched by helmfile (go-getter)"
        else:
            why = (
                f"release {name!r}: chart {chart!r} names the repository {repo_name!r}, which "
                "the helmfile does not define (or that could not be converted); helm would read "
                "it as a local path"
            )
        build.dropped.append(
            Dropped(
                where,
                why + "; the operator has no checkout of your files",
                "publish the chart to a chart repository or OCI registry and point `chart` there",
            )
        )
        return None
    if repo.oci:
        if repo.secret_ref is None and repo.ca_secret_ref is None and not repo.insecure:
            return _chart_fields(f"oci://{repo.url}/{rest}", version)
        directory, _, chart_name = rest.rpartition("/")
        url = f"oci://{repo.url}" + (f"/{directory}" if directory else "")
        repo_id = _dns_label(f"{repo.name}-{directory}" if directory else repo.name, set())
        oci_repo: dict[str, Any] = {"name": repo_id, "url": url}
        _repo_auth(oci_repo, repo)
        fields = _chart_fields(f"{repo_id}/{chart_name}", version)
        fields["_ociRepository"] = oci_repo
        return fields
    if "/" in rest:
        build.dropped.append(
            Dropped(
                where,
                f"release {name!r}: chart {chart!r} has a path inside an http(s) repository",
                "use `<repository>/<chart>`",
            )
        )
        return None
    return _chart_fields(f"{repo.name}/{rest}", version)


def _chart_fields(chart: str, version: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"chart": chart}
    if version:
        fields["version"] = version
    return fields


def _digest(where: str, digest: str) -> Dropped:
    return Dropped(
        where,
        f"the digest {digest!r} pins the chart's content; the operator resolves charts by "
        "version only",
        "pin the exact chart version in `version`",
    )


def _values(
    build: _Build, state: LoadedState, where: str, release: dict[str, Any], raw: dict[str, Any]
) -> None:
    entries = raw.get("values") or []
    if not isinstance(entries, list):
        entries = [entries]
    handler = raw.get("missingFileHandler") or state.raw.get("missingFileHandler")
    inline: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    templated = False
    for k, entry in enumerate(entries):
        field_name = f"{where}.values[{k}]"
        if isinstance(entry, dict):
            if refs:
                build.notes.append(
                    f"{field_name}: inline values now merge before the values file(s) that went "
                    "into ConfigMaps (the operator applies valuesFrom after values)"
                )
            inline.append(entry)
            templated = templated or "{{" in repr(entry)
            continue
        if entry is None:
            continue
        if not isinstance(entry, str):
            raise ConversionError(f"{state.path}: {field_name} must be a map or a file name")
        loaded = _values_file(build, state, entry, field_name, handler)
        if loaded is None:
            continue
        values, text = loaded
        if text is None:
            inline.append(values)
        else:
            cm = _config_map(build, f"{build.name}-{release['name']}-values-{k}", text, entry)
            refs.append({"kind": "ConfigMap", "name": cm})
    if templated:
        build.notes.append(
            f"{where}.values: inline values hold `{{{{ }}}}`; helmfile does not render inline "
            "values but passes them to helm as they are (for the chart's own `tpl`), and so "
            "does the operator"
        )
    if inline:
        release["values"] = inline
    if refs:
        release["valuesFrom"] = refs


def _set_entries(
    build: _Build, where: str, key: str, entries: Any, *, as_string: bool
) -> list[dict[str, Any]]:
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ConversionError(f"{where}.{key} must be a list")
    result: list[dict[str, Any]] = []
    for k, entry in enumerate(entries):
        field_name = f"{where}.{key}[{k}]"
        if not isinstance(entry, dict) or not _text(entry.get("name")):
            raise ConversionError(f"{field_name} must be a map with `name`")
        name = _text(entry["name"])
        if entry.get("file"):
            build.dropped.append(
                Dropped(
                    field_name,
                    f"`file` sets {name!r} from the local file {entry['file']!r}",
                    "set the file's content as the value, or put it in a ConfigMap/Secret and "
                    "use `valuesFrom`",
                )
            )
            continue
        value = entry.get("value")
        text = _text(value)
        if text:
            if text.startswith("ref+"):
                build.dropped.append(
                    Dropped(
                        field_name,
                        "a vals reference (`ref+…`) is a secret fetched by helmfile when it runs",
                        "put the secret in a Kubernetes Secret and add it to `valuesFrom`",
                    )
                )
                continue
            parsed: Any = _unescape(text) if as_string else _typed(_unescape(text))
            result.append({"name": name, "value": parsed})
        elif entry.get("values"):
            items = entry["values"] if isinstance(entry["values"], list) else [entry["values"]]
            texts = [_unescape(_text(item)) for item in items]
            result.append(
                {"name": name, "value": texts if as_string else [_typed(t) for t in texts]}
            )
        # An empty value sets nothing in helmfile (`if set.Value != ""`).
    return result


def _unescape(text: str) -> str:
    """helm's strvals reading a value helmfile escaped (`,{}`): a backslash keeps the next
    character as it is."""
    out: list[str] = []
    chars = iter(text)
    for char in chars:
        if char == "\\":
            out.append(next(chars, ""))
        else:
            out.append(char)
    return "".join(out)


def _typed(text: str) -> Any:
    """helm's strvals typedVal for `--set` values."""
    lower = text.lower()
    if lower == "true":
        return True
    if lower == "false":
        return False
    if lower == "null":
        return None
    if text == "0":
        return 0
    if text and text[0] != "0" and re.fullmatch(r"[+-]?[0-9]+", text):
        number = int(text)
        if -(1 << 63) <= number < (1 << 63):
            return number
    return text


# --- across releases ----------------------------------------------------------------------------


def _unique_names(
    main: LoadedState, releases: list[dict[str, Any]], origins: list[tuple[LoadedState, int]]
) -> None:
    seen: dict[str, int] = {}
    for j, release in enumerate(releases):
        previous = seen.get(release["name"])
        if previous is not None:
            a, b = origins[previous], origins[j]
            raise ConversionError(
                f"{main.path}: release {release['name']!r} is defined twice "
                f"({a[0].field(f'releases[{a[1]}]')} and {b[0].field(f'releases[{b[1]}]')}); a "
                "HelmfileState needs unique release names: rename one, or convert the files "
                "into separate states"
            )
        seen[release["name"]] = j


def _needs(
    build: _Build, releases: list[dict[str, Any]], origins: list[tuple[LoadedState, int]]
) -> None:
    default_ns = build.namespace or _DEFAULT_ENVIRONMENT
    ids = {(r.get("namespace") or default_ns, r["name"]) for r in releases}
    for release, (state, i) in zip(releases, origins, strict=True):
        needs = release.pop("needs", [])
        namespace = release.get("namespace") or default_ns
        converted: list[str] = []
        for k, need in enumerate(needs):
            where = state.field(f"releases[{i}].needs[{k}]")
            parts = need.split("/")
            target_name = parts[-1]
            target_ns = parts[-2] if len(parts) > 1 else ""
            if len(parts) > 2:
                context = "/".join(parts[:-2])
                build.dropped.append(
                    Dropped(
                        f"{where}",
                        f"{need!r} names the kube context {context!r}; "
                        + _KUBE_CONTEXT[0]
                        + f", so it needs {'/'.join(p for p in parts[-2:] if p)!r} instead",
                        "keep releases of other clusters in a state applied there",
                    )
                )
            effective_ns = target_ns or namespace
            if (effective_ns, target_name) not in ids:
                build.dropped.append(
                    Dropped(
                        where,
                        f"release {release['name']!r} needs {need!r}, which is not a release "
                        "of the converted state (it was dropped, or helmfile cannot find it "
                        "either)",
                        "convert that release too, or remove the need",
                    )
                )
                continue
            text = f"{target_ns}/{target_name}" if target_ns else target_name
            if text not in converted:
                converted.append(text)
        if converted:
            release["needs"] = converted


def _conditions(
    build: _Build,
    releases: list[dict[str, Any]],
    environments: dict[str, dict[str, Any]],
    origins: list[tuple[LoadedState, int]],
) -> None:
    """helmfile reads `x.enabled` as false when the key is missing or not a boolean; the
    operator refuses both. The state gets an explicit `false` where helmfile assumed one."""
    for release, (state, i) in zip(releases, origins, strict=True):
        condition = release.get("condition")
        if condition is None:
            continue
        where = state.field(f"releases[{i}].condition")
        if condition.lower() in ("true", "false"):
            del release["condition"]
            if condition.lower() == "false":
                release["installed"] = False
            continue
        keys = condition.split(".")
        if keys[-1] != "enabled" or len(keys) < 2:
            raise ConversionError(
                f"{state.path}: {where}: {condition!r} is not of the form `foo.enabled`, which "
                "helmfile requires"
            )
        parent = ".".join(keys[:-1])
        names = sorted(set(environments) | {build.environment})
        for env_name in names:
            env = environments.setdefault(env_name, {})
            values = merge_all(
                [
                    *env.get("values", []),
                    *(
                        build.config_map_values.get(r["name"], {})
                        for r in env.get("valuesFrom", [])
                    ),
                ]
            )
            try:
                holder = get_path(values, parent)
            except (KeyError, ValueError):
                holder = None
            if not isinstance(holder, dict):
                if env_name == build.environment:
                    raise ConversionError(
                        f"{state.path}: {where}: {parent!r} is not a map in the values of "
                        f"environment {env_name!r}, so helmfile fails on this condition too"
                    )
                continue
            if not isinstance(holder.get("enabled"), bool):
                patch: dict[str, Any] = {"enabled": False}
                for key in reversed(keys[:-1]):
                    patch = {key: patch}
                env.setdefault("values", []).append(patch)
                build.notes.append(
                    f"{where}: {condition!r} is not a boolean in environment {env_name!r}, which "
                    f"helmfile reads as false; the state sets it to false there"
                )


# --- the object ---------------------------------------------------------------------------------


def _validated(main: LoadedState, build: _Build, spec: dict[str, Any]) -> dict[str, Any]:
    try:
        model = HelmfileStateSpec.model_validate(spec)
    except ValidationError as error:
        raise ConversionError(
            f"{main.path}: the converted state is not valid: {describe_validation_error(error)}"
        ) from None
    selected = model.environments.get(model.environment)
    from_config_maps = [
        copy.deepcopy(build.config_map_values.get(ref.name, {}))
        for ref in (selected.values_from if selected is not None else [])
    ]
    try:
        render_state(
            StateMeta(build.name, build.namespace or _DEFAULT_ENVIRONMENT, {}, {}),
            model,
            from_config_maps,
        )
    except RenderError as error:
        raise ConversionError(
            f"{main.path}: the converted state does not render: {error}"
        ) from None
    metadata: dict[str, Any] = {"name": build.name}
    if build.namespace:
        metadata["namespace"] = build.namespace
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileState",
        "metadata": metadata,
        "spec": model.model_dump(mode="json", by_alias=True, exclude_unset=True),
    }


# --- names -------------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return repr(value)
    return str(value)


def _dns_label(name: str, taken: set[str]) -> str:
    label = _NOT_DNS.sub("-", name.lower()).strip("-")[:63].strip("-") or "repo"
    candidate, n = label, 2
    while candidate in taken:
        suffix = f"-{n}"
        candidate = label[: 63 - len(suffix)] + suffix
        n += 1
    return candidate


def _dns_subdomain(name: str) -> str:
    return _NOT_DNS.sub("-", name.lower()).strip("-")[:253].strip("-")


def state_name(path: Path, name: str | None) -> str:
    """The given name, or one derived from the file (its directory for `helmfile.yaml`)."""
    if name:
        return name
    stem = PurePosixPath(path.name).name.split(".")[0]
    if stem in ("helmfile", "input", ""):
        stem = path.resolve().parent.name
    label = _NOT_DNS.sub("-", stem.lower()).strip("-")[:40].strip("-")
    return label or "helmfile"
