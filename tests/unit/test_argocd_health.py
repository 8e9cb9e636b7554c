"""The Argo CD health checks and actions in gitops/argocd/, run on a real Lua 5.1 as Argo CD runs
them (gitops/argocd_lua.py), case by case from their health_test.yaml and action_test.yaml (Argo
CD's own test format), and argocd-cm.yaml kept identical to the scripts."""

from __future__ import annotations

import copy
import datetime
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "gitops"))

import argocd_cm  # noqa: E402
import argocd_lua  # noqa: E402

RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"
PLACEHOLDER = "0001-01-01T00:00:00Z"
LUA_STRING = re.compile(r'"(?:\\.|[^"\\\n])*"' + r"|'(?:\\.|[^'\\\n])*'")
LUA_COMMENT = re.compile(r"--.*$", re.MULTILINE)


def cases(test_file: str, section: str) -> list[Any]:
    found = []
    for kind in argocd_cm.KINDS:
        path = argocd_cm.kind_dir(kind) / test_file
        for case in yaml.safe_load(path.read_text())[section]:
            label = f"{kind}/{case.get('action', section)}/{case['inputPath']}"
            found.append(pytest.param(path.parent, case, id=label))
    return found


@pytest.mark.parametrize(("directory", "case"), cases("health_test.yaml", "tests"))
def test_health(directory: Path, case: dict[str, Any]) -> None:
    obj = argocd_lua.load_object(directory / case["inputPath"])
    result = argocd_lua.health((directory / "health.lua").read_text(), obj)
    assert result == case["healthStatus"]


@pytest.mark.parametrize("kind", argocd_cm.KINDS)
def test_every_testdata_file_is_a_health_case(kind: str) -> None:
    directory = argocd_cm.kind_dir(kind)
    tests = yaml.safe_load((directory / "health_test.yaml").read_text())["tests"]
    present = {f"testdata/{path.name}" for path in (directory / "testdata").glob("*.yaml")}
    assert {case["inputPath"] for case in tests} == present
    outcomes = {case["healthStatus"]["status"] for case in tests}
    assert outcomes == {"Healthy", "Progressing", "Degraded", "Suspended"}


@pytest.mark.parametrize(("directory", "case"), cases("actions/action_test.yaml", "discoveryTests"))
def test_action_discovery(directory: Path, case: dict[str, Any]) -> None:
    obj = argocd_lua.load_object(directory / case["inputPath"])
    offered = argocd_lua.discovery((directory / "discovery.lua").read_text(), obj)
    assert offered == {action["name"]: action["disabled"] for action in case["result"]}


def normalized(obj: dict[str, Any]) -> dict[str, Any]:
    """The reconcile request holds the current time: checked, then replaced on both sides (as
    Argo CD's own tests do for Flux's `reconcile.fluxcd.io/requestedAt`)."""
    obj = copy.deepcopy(obj)
    annotations = obj["metadata"].get("annotations") or {}
    if RECONCILE_REQUEST in annotations:
        value = annotations[RECONCILE_REQUEST]
        if value != PLACEHOLDER:
            assert argocd_lua.RFC3339_UTC.match(value), value
            requested = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.UTC
            )
            age = datetime.datetime.now(datetime.UTC) - requested
            assert datetime.timedelta(seconds=-1) <= age < datetime.timedelta(minutes=1), value
        annotations[RECONCILE_REQUEST] = PLACEHOLDER
    return obj


@pytest.mark.parametrize(("directory", "case"), cases("actions/action_test.yaml", "actionTests"))
def test_action(directory: Path, case: dict[str, Any]) -> None:
    obj = argocd_lua.load_object(directory / case["inputPath"])
    script = (directory / case["action"] / "action.lua").read_text()
    result = argocd_lua.action(script, obj)
    expected = argocd_lua.load_object(directory / case["expectedOutputPath"])
    assert normalized(result) == normalized(expected)
    # What Argo CD sends: a merge patch touching only what the action changed.
    patch = argocd_lua.merge_patch(obj, result)
    assert set(patch) <= {"metadata", "spec"}
    assert set(patch.get("metadata", {})) <= {"annotations"}
    assert set(patch.get("spec", {})) <= {"suspend"}


def test_reconcile_requests_differ_over_time() -> None:
    """The operator acts on a changed value: the action writes the time, not a constant."""
    directory = argocd_cm.kind_dir("HelmfileRelease")
    obj = argocd_lua.load_object(
        directory / "actions" / "testdata" / "reconciled_helmfilerelease.yaml"
    )
    script = (directory / "actions" / "reconcile" / "action.lua").read_text()
    value = argocd_lua.action(script, obj)["metadata"]["annotations"][RECONCILE_REQUEST]
    assert value != PLACEHOLDER
    assert argocd_lua.RFC3339_UTC.match(value)


def test_argocd_cm_is_generated_from_the_scripts() -> None:
    assert argocd_cm.CONFIGMAP.read_text() == argocd_cm.render(), (
        "gitops/argocd/argocd-cm.yaml differs from the .lua files: "
        "run .venv/bin/python gitops/argocd_cm.py"
    )


@pytest.mark.parametrize("kind", argocd_cm.KINDS)
def test_argocd_cm_holds_each_script_as_argo_cd_reads_it(kind: str) -> None:
    """Parsed as Argo CD parses it: the health key is the script, the actions key a YAML document
    with `discovery.lua` and one `definitions` entry per action the discovery offers."""
    directory = argocd_cm.kind_dir(kind)
    data = yaml.safe_load(argocd_cm.CONFIGMAP.read_text())["data"]
    key = f"{argocd_cm.GROUP}_{kind}"
    assert data[f"resource.customizations.health.{key}"] == (directory / "health.lua").read_text()
    actions = yaml.safe_load(data[f"resource.customizations.actions.{key}"])
    discovery = (directory / "actions" / "discovery.lua").read_text()
    assert actions["discovery.lua"] == discovery
    definitions = {d["name"]: d["action.lua"] for d in actions["definitions"]}
    assert definitions == {
        name: (directory / "actions" / name / "action.lua").read_text()
        for name in argocd_cm.action_names(kind)
    }
    initial = argocd_lua.load_object(
        directory / "actions" / "testdata" / f"initial_{kind.lower()}.yaml"
    )
    assert set(argocd_lua.discovery(discovery, initial)) == set(definitions)


def test_argocd_cm_check_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert argocd_cm.main(["--check"]) == 0
    stale = tmp_path / "argocd-cm.yaml"
    stale.write_text(argocd_cm.render().replace("Healthy", "Fine", 1))
    monkeypatch.setattr(argocd_cm, "CONFIGMAP", stale)
    assert argocd_cm.main(["--check"]) == 1


@pytest.mark.parametrize("kind", argocd_cm.KINDS)
def test_scripts_keep_to_what_argocd_cm_scripts_get(kind: str) -> None:
    """No standard library beyond base, table and os.time/os.date (gopher-lua without
    useOpenLibs), also on branches no testdata reaches; Lua 5.1 syntax is checked by loading."""
    for path in argocd_cm.kind_dir(kind).rglob("*.lua"):
        code = LUA_STRING.sub('""', LUA_COMMENT.sub("", path.read_text()))
        for forbidden in ("string.", "math.", "io.", "debug.", "coroutine.", "utf8.", ":"):
            assert forbidden not in code, f"{path}: {forbidden}"  # ":" would be a method call


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ('return {status = ("x"):upper()}', "attempt to index a string value"),
        ("return {status = string.upper('x')}", "global 'string'"),
        ("return {status = math.floor(1)}", "global 'math'"),
        ("return require('io')", "module 'io' not found"),
        ("local x = 1 // 2", "unexpected symbol"),
    ],
)
def test_the_sandbox_is_as_strict_as_argo_cd(script: str, error: str) -> None:
    with pytest.raises(argocd_lua.LuaScriptError, match=error):
        argocd_lua.run(script, "probe.lua", {})


def test_lua_values_come_back_as_argo_cd_reads_them() -> None:
    result = argocd_lua.run(
        "obj.spec.n = obj.spec.n + 1; obj.spec.list = {}; return obj",
        "probe.lua",
        {"spec": {"n": 2, "values": {}, "skip": None}},
    )
    assert result == {"spec": {"n": 3, "values": [], "list": []}}
    assert argocd_lua.action("return obj", {"spec": {"values": {}}}) == {"spec": {"values": {}}}
    invalid = argocd_lua.health("return {status = 'Fine'}", {})
    assert invalid == {"status": "Unknown", "message": "Lua returned an invalid health status"}
