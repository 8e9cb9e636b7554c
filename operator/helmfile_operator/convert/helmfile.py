"""Reading a helmfile.yaml the way helmfile v1 does, without its template engine.

- The file is split into parts at `\\n---\\n` lines; each part is one YAML document, read with
  the rules of go-yaml (`goyaml`), so that anchors, `<<` merge keys and scalars mean what they
  mean to helmfile.
- Each part's `bases:` are read (relative to the helmfile's directory, as helmfile resolves
  them) and layered under the part: lists are appended, maps merged, non-empty scalars
  override, and environments merge value by value (`mergeEnvironments`).
- The parts are then layered in order: a later part's non-empty lists replace the earlier ones,
  maps merge key by key and non-empty scalars override (mergo's `WithOverride`).
- Release templates (`templates:` + `inherit`, `defaultInherit`) are applied as helmfile's
  `releaseWithInheritedTemplate` does: the templates first, the release's own fields only fill
  what they left empty, lists are appended; `except` clears a field of the template.
- `helmfiles:` entries are read the same way, each relative to its own directory, with their
  `values` and `selectors`.

A file helmfile renders as a Go template (`*.gotmpl`), or one whose release fields hold `{{ }}`
(helmfile renders those even in plain files), raises `NeedsTemplates`: the caller delegates such
files to a helmfile binary (`gotemplate`).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from helmfile_operator.convert.result import ConversionError, Dropped
from helmfile_operator.goyaml import GoYAMLError, load_values

__all__ = [
    "LoadedState",
    "NeedsTemplates",
    "is_remote",
    "load_state",
    "load_state_text",
    "selected",
]

# Helmfile's ReleaseSpec fields that helmfile renders with Go templates in every file.
_TEMPLATED_RELEASE_FIELDS = ("name", "chart", "namespace", "version", "labels", "needs")
_TEMPLATE_FIELDS = (
    "valuesTemplate",
    "setTemplate",
    "installedTemplate",
    "conditionTemplate",
    "waitTemplate",
    "verifyTemplate",
)
# Fields whose Go type is a pointer: `false` and `0` are set values there, not empty ones.
_POINTER_FIELDS = frozenset(
    {
        "installed",
        "wait",
        "waitForJobs",
        "atomic",
        "createNamespace",
        "historyMax",
        "timeout",
        "verify",
        "devel",
        "force",
        "recreatePods",
        "cleanupOnFail",
        "reuseValues",
        "disableValidation",
        "disableOpenAPIValidation",
        "disableValidationOnInstall",
        "skipDeps",
        "skipRefresh",
        "rollbackOnFailure",
    }
)
_EXCEPT = frozenset(
    {"labels", "values", "valuesTemplate", "setTemplate", "set", "setString", "secrets"}
)
_PART_SPLIT = "\n---\n"
_REMOTE = re.compile(r"^([a-z][a-z0-9+.-]*::|[a-z][a-z0-9+.-]*://)")


class NeedsTemplates(Exception):
    """The file is a Go template for helmfile: only helmfile can read it."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


@dataclass
class LoadedState:
    """One helmfile (with its bases and parts layered) and the sub-helmfiles it names."""

    path: Path
    base_dir: Path
    label: str
    """How messages name it: `""` for the converted file, else its path relative to it."""
    raw: dict[str, Any]
    """The layered file; releases have their templates applied."""
    override_values: list[Any] = field(default_factory=list)
    """`values` of the parent's `helmfiles:` entry (state values of highest precedence)."""
    selectors: list[Any] = field(default_factory=list)
    """`selectors` of the parent's `helmfiles:` entry: only matching releases are converted."""
    subs: list[LoadedState] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)

    def field(self, name: str) -> str:
        return f"{self.label}: {name}" if self.label else name


def is_remote(path: str) -> bool:
    """`git::https://…`, `https://…`, `s3::…`: fetched by helmfile's go-getter, not a file."""
    return bool(_REMOTE.match(path))


def load_state(path: Path, *, root: Path | None = None, depth: int = 0) -> LoadedState:
    """Read `path` and its bases and sub-helmfiles (`root`: the converted file, default
    `path`). Raises NeedsTemplates, ConversionError."""
    root = root if root is not None else path
    text = _read(path, root)
    return load_state_text(text, path, root=root, depth=depth)


def load_state_text(
    text: str,
    path: Path,
    *,
    root: Path,
    depth: int = 0,
    templated_ok: bool = False,
    resolve_helmfiles: bool = True,
) -> LoadedState:
    """`text` read as the helmfile at `path`. `templated_ok`: the text is helmfile's own output
    (`helmfile build`), already rendered."""
    if depth > 10:
        raise ConversionError(f"{path}: helmfiles: are nested more than 10 levels deep")
    label = _label(path, root)
    if not templated_ok and path.name.endswith(".gotmpl"):
        raise NeedsTemplates(path, "it is a Go template (*.gotmpl) that helmfile renders")
    base_dir = path.parent
    state = LoadedState(path=path, base_dir=base_dir, label=label, raw={})
    parts = text.replace("\r\n", "\n").split(_PART_SPLIT)
    merged: dict[str, Any] = {}
    for i, part in enumerate(parts):
        document = _parse(part, path, i, templated_ok=templated_ok)
        layered: dict[str, Any] = {}
        for base in _strings(document.get("bases"), path, "bases"):
            if is_remote(base):
                state.dropped.append(
                    Dropped(
                        state.field(f"bases[{base}]"),
                        "a remote base is fetched by helmfile when it runs",
                        "download it next to the helmfile and list it as a local path",
                    )
                )
                continue
            base_path = (base_dir / base).resolve()
            base_text = _read(base_path, root)
            if base_path.name.endswith(".gotmpl") and not templated_ok:
                raise NeedsTemplates(
                    base_path, "it is a Go template (*.gotmpl) that helmfile renders"
                )
            base_state = _parse_parts(base_text, base_path, templated_ok=templated_ok)
            if base_state.get("bases"):
                raise ConversionError(
                    f"{base_path}: a base names more `bases:`; helmfile does not support nested "
                    "bases either"
                )
            _layer(layered, base_state, append=True)
        document.pop("bases", None)
        _layer(layered, document, append=True)
        _layer(merged, layered, append=False)
    if not templated_ok:
        _check_release_templates(merged, path)
    if templated_ok:  # helmfile's own output: release templates are applied already
        merged["releases"] = list(merged.get("releases") or [])
    else:
        merged["releases"] = _apply_templates(merged, path)
    state.raw = merged
    if resolve_helmfiles:
        state.subs = _load_subs(state, root, depth)
    return state


def _label(path: Path, root: Path) -> str:
    """`root` is the converted file: "" for it, else the path relative to its directory."""
    if path.resolve() == root.resolve():
        return ""
    try:
        return str(path.resolve().relative_to(root.resolve().parent))
    except ValueError:
        return str(path)


def _read(path: Path, root: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path}: cannot be read: {error}") from None


def _parse_parts(text: str, path: Path, *, templated_ok: bool) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for i, part in enumerate(text.replace("\r\n", "\n").split(_PART_SPLIT)):
        _layer(merged, _parse(part, path, i, templated_ok=templated_ok), append=False)
    return merged


def _parse(part: str, path: Path, index: int, *, templated_ok: bool) -> dict[str, Any]:
    try:
        document = load_values(part, f"{path} (document {index + 1})")
    except GoYAMLError as error:
        if not templated_ok and "{{" in part:
            raise NeedsTemplates(
                path, "it holds `{{ }}` Go template expressions that helmfile renders"
            ) from None
        raise ConversionError(f"{error} (helmfile could not read it either)") from None
    try:
        text_view = yaml.load(part, Loader=_TextLoader)  # noqa: S506 - a BaseLoader: strings only
    except yaml.YAMLError:
        return document
    if isinstance(text_view, dict):
        _restore_strings(document, text_view)
    return document


class _TextLoader(yaml.BaseLoader):
    """Every scalar as its text, `<<` merges applied: what a Go `string` field holds."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            merged: list[tuple[Any, Any]] = []
            own: list[tuple[Any, Any]] = []
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == "<<" and key.style is None:
                    sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                    for source in reversed(sources):
                        if isinstance(source, yaml.MappingNode):
                            self.flatten(source)
                            merged.extend(source.value)
                else:
                    own.append((key, value))
            node.value = merged + own
        return super().construct_mapping(node, deep=True)

    def flatten(self, node: Any) -> None:
        self.construct_mapping(node)


# Fields of helmfile's structs that are Go strings: go-yaml keeps their text (`name: off` is the
# release "off", `version: 1.10` is "1.10"), where reading the YAML for values would not.
_STRING_RELEASE_FIELDS = ("name", "namespace", "chart", "version", "condition", "kubeContext")


def _restore_strings(typed: dict[str, Any], text: dict[str, Any]) -> None:
    for key in ("namespace",):
        _restore_field(typed, text, key)
    for t, s in _pairs(typed.get("releases"), text.get("releases")):
        _restore_release(t, s)
    templates, text_templates = typed.get("templates"), text.get("templates")
    if isinstance(templates, dict) and isinstance(text_templates, dict):
        for name, template in templates.items():
            if isinstance(template, dict) and isinstance(text_templates.get(name), dict):
                _restore_release(template, text_templates[name])
    for t, s in _pairs(typed.get("repositories"), text.get("repositories")):
        for key in ("name", "url"):
            _restore_field(t, s, key)


def _pairs(typed: Any, text: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    if not isinstance(typed, list) or not isinstance(text, list) or len(typed) != len(text):
        return []
    return [
        (t, s)
        for t, s in zip(typed, text, strict=True)
        if isinstance(t, dict) and isinstance(s, dict)
    ]


def _restore_field(typed: dict[str, Any], text: dict[str, Any], key: str) -> None:
    value, original = typed.get(key), text.get(key)
    if value is not None and not isinstance(value, (str, dict, list)) and isinstance(original, str):
        typed[key] = original


def _restore_release(typed: dict[str, Any], text: dict[str, Any]) -> None:
    for key in _STRING_RELEASE_FIELDS:
        _restore_field(typed, text, key)
    labels, text_labels = typed.get("labels"), text.get("labels")
    if isinstance(labels, dict) and isinstance(text_labels, dict):
        for key in list(labels):
            _restore_field(labels, text_labels, key)
    for key in ("needs", "values", "secrets"):
        items, text_items = typed.get(key), text.get(key)
        if (
            isinstance(items, list)
            and isinstance(text_items, list)
            and len(items) == len(text_items)
        ):
            for k, (item, original) in enumerate(zip(items, text_items, strict=True)):
                if (
                    item is not None
                    and not isinstance(item, (str, dict, list))
                    and isinstance(original, str)
                ):
                    items[k] = original
    for key in ("set", "setString"):
        for t, s in _pairs(typed.get(key), text.get(key)):
            _restore_field(t, s, "name")
            _restore_field(t, s, "value")
            values, text_values = t.get("values"), s.get("values")
            if (
                isinstance(values, list)
                and isinstance(text_values, list)
                and len(values) == len(text_values)
            ):
                t["values"] = [
                    o
                    if v is not None and not isinstance(v, (str, dict, list)) and isinstance(o, str)
                    else v
                    for v, o in zip(values, text_values, strict=True)
                ]


def _strings(value: Any, path: Path, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConversionError(f"{path}: `{where}` must be a list of file names")
    return list(value)


def _is_zero(key: str, value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return not value and key not in _POINTER_FIELDS
    if isinstance(value, (int, float)):
        return value == 0 and key not in _POINTER_FIELDS
    if isinstance(value, (str, list, dict)):
        return len(value) == 0
    return False


def _layer(into: dict[str, Any], source: dict[str, Any], *, append: bool) -> None:
    """mergo.Merge(into, source, WithOverride[, WithAppendSlice]) on helmfile's HelmState."""
    for key, value in source.items():
        current = into.get(key)
        if key == "environments" and isinstance(value, dict):
            if append and isinstance(current, dict):
                _merge_environments(current, value)
            elif isinstance(current, dict):
                current.update(copy.deepcopy(value))
            else:
                into[key] = copy.deepcopy(value)
        elif isinstance(value, list):
            if append and isinstance(current, list):
                into[key] = current + copy.deepcopy(value)
            elif value or key not in into:
                into[key] = copy.deepcopy(value)
        elif isinstance(value, dict):
            if isinstance(current, dict):
                for k, v in value.items():
                    if not _is_zero(k, v):
                        current[k] = copy.deepcopy(v)
            else:
                into[key] = copy.deepcopy(value)
        elif not _is_zero(key, value) or key not in into:
            into[key] = value


def _merge_environments(into: dict[str, Any], source: dict[str, Any]) -> None:
    """helmfile's mergeEnvironments: values and secrets of the later layer are appended."""
    for name, spec in source.items():
        spec = spec if isinstance(spec, dict) else {}
        current = into.get(name)
        if not isinstance(current, dict):
            into[name] = copy.deepcopy(spec)
            continue
        merged = dict(current)
        for key, value in spec.items():
            if key in ("values", "secrets") and isinstance(value, list):
                merged[key] = [*(current.get(key) or []), *copy.deepcopy(value)]
            elif not _is_zero(key, value):
                merged[key] = copy.deepcopy(value)
        into[name] = merged


def _check_release_templates(state: dict[str, Any], path: Path) -> None:
    """helmfile renders some release fields as Go templates even in plain files."""
    releases = list(state.get("releases") or [])
    templates = state.get("templates") or {}
    if isinstance(templates, dict):
        releases += [t for t in templates.values() if isinstance(t, dict)]
    for release in releases:
        if not isinstance(release, dict):
            continue
        for key in _TEMPLATE_FIELDS:
            if key in release:
                return  # dropped field by field later
        for key in _TEMPLATED_RELEASE_FIELDS:
            if "{{" in repr(release.get(key, "")):
                raise NeedsTemplates(
                    path,
                    f"release field `{key}` holds `{{{{ }}}}`, which helmfile renders as a Go "
                    "template",
                )
        for key in ("values", "secrets"):
            for entry in release.get(key) or []:
                if isinstance(entry, str) and "{{" in entry:
                    raise NeedsTemplates(
                        path,
                        f"a `{key}` file name holds `{{{{ }}}}`, which helmfile renders as a Go "
                        "template",
                    )


def _normalize_inherit(value: Any, path: Path) -> list[dict[str, Any]]:
    if value is None:
        return []
    entries = value if isinstance(value, list) else [value]
    result = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConversionError(f"{path}: `inherit` entries must be maps with `template`")
        result.append(entry)
    return result


def _apply_templates(state: dict[str, Any], path: Path) -> list[Any]:
    templates = state.get("templates") or {}
    if not isinstance(templates, dict):
        raise ConversionError(f"{path}: `templates` must be a map of release templates")
    default = state.get("defaultInherit") or []
    default_names = [default] if isinstance(default, str) else list(default)
    default_names = [n.strip() for n in default_names if isinstance(n, str) and n.strip()]
    releases = state.get("releases") or []
    if not isinstance(releases, list):
        raise ConversionError(f"{path}: `releases` must be a list")
    result: list[Any] = []
    for release in releases:
        if not isinstance(release, dict):
            raise ConversionError(f"{path}: every entry of `releases` must be a map")
        inherit = _normalize_inherit(release.get("inherit"), path)
        named = {str(i.get("template", "")).strip() for i in inherit}
        with_defaults = [{"template": n} for n in default_names if n not in named] + inherit
        result.append(_inherit(dict(release, inherit=with_defaults), templates, (), path))
    return result


def _inherit(
    release: dict[str, Any], templates: dict[str, Any], chain: tuple[str, ...], path: Path
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in _normalize_inherit(release.get("inherit"), path):
        name = str(entry.get("template", "")).strip()
        if not name:
            return {k: v for k, v in release.items() if k != "inherit"}
        if name in chain:
            raise ConversionError(
                f"{path}: cyclic release template inheritance: {' -> '.join((*chain, name))}"
            )
        template = templates.get(name)
        if not isinstance(template, dict):
            raise ConversionError(
                f"{path}: release {release.get('name')!r} inherits the template {name!r}, which "
                "`templates:` does not define"
            )
        source = _inherit(copy.deepcopy(template), templates, (*chain, name), path)
        for key in entry.get("except") or []:
            if key not in _EXCEPT:
                raise ConversionError(
                    f"{path}: `inherit.except` names {key!r}; helmfile allows only "
                    f"{', '.join(sorted(_EXCEPT))}"
                )
            source.pop(key, None)
        _fill(merged, source)
    _fill(merged, {k: v for k, v in release.items() if k != "inherit"})
    return merged


def _fill(into: dict[str, Any], source: dict[str, Any]) -> None:
    """mergo.Merge(into, source, WithAppendSlice): fills empty fields, appends lists."""
    for key, value in source.items():
        current = into.get(key)
        if isinstance(value, list) and isinstance(current, list):
            into[key] = current + copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(current, dict):
            for k, v in value.items():
                current.setdefault(k, copy.deepcopy(v))
        elif key not in into or _is_zero(key, current):
            into[key] = copy.deepcopy(value)


def _load_subs(state: LoadedState, root: Path, depth: int) -> list[LoadedState]:
    subs: list[LoadedState] = []
    entries = state.raw.get("helmfiles") or []
    if not isinstance(entries, list):
        raise ConversionError(f"{state.path}: `helmfiles` must be a list")
    for k, entry in enumerate(entries):
        spec = {"path": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or not isinstance(spec.get("path"), str):
            raise ConversionError(
                f"{state.path}: helmfiles[{k}] must be a path or a map with `path`"
            )
        sub_path: str = spec["path"]
        if is_remote(sub_path):
            state.dropped.append(
                Dropped(
                    state.field(f"helmfiles[{k}]"),
                    f"the remote sub-helmfile {sub_path!r} is fetched by helmfile when it runs",
                    "download it and list it as a local path, or convert it on its own",
                )
            )
            continue
        matches = sorted(p for p in state.base_dir.glob(sub_path) if p.is_file())
        if not matches:
            raise ConversionError(
                f"{state.path}: helmfiles[{k}] names {sub_path!r}, which matches no file"
            )
        for match in matches:
            if match.resolve() == state.path.resolve():
                raise ConversionError(f"{state.path}: helmfiles[{k}] names the file itself")
            sub = load_state(match, root=root, depth=depth + 1)
            values = spec.get("values") or []
            sub.override_values = list(values) if isinstance(values, list) else [values]
            sub.selectors = list(spec.get("selectors") or [])
            subs.append(sub)
    return subs


def release_labels(release: dict[str, Any]) -> dict[str, str]:
    """The labels `--selector` matches: the release's, plus name, namespace and chart."""
    labels = {str(k): _text(v) for k, v in (release.get("labels") or {}).items()}
    labels["name"] = _text(release.get("name"))
    labels["namespace"] = _text(release.get("namespace"))
    labels["chart"] = _text(release.get("chart")).split("/")[-1]
    return labels


def selected(release: dict[str, Any], selectors: list[Any]) -> bool:
    labels = release_labels(release)
    for selector in selectors:
        terms = [t.strip() for t in str(selector).split(",") if t.strip()]
        ok = True
        for term in terms:
            if "!=" in term:
                key, _, value = term.partition("!=")
                ok = ok and labels.get(key.strip(), "") != value.strip()
            else:
                key, _, value = term.partition("=")
                ok = ok and labels.get(key.strip()) == value.strip()
        if ok:
            return True
    return False


def _text(value: Any) -> str:
    """A scalar as the text a Go string field would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
