"""Argo CD's Lua resource customizations, run as Argo CD runs them, without an Argo CD.

What is reproduced from argoproj/argo-cd `util/lua/lua.go` (and `oslib_safe.go`):

- Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1): lupa's `lua51` runtime;
- the libraries of an `argocd-cm` customization (`useOpenLibs` unset): base, `table`, and an `os`
  with only `time` and `date` (also through `require("os")`). No `string`, `math`, `io` or
  `debug`, and no string methods (`s:sub()` needs the string library);
- the globals `obj` (the object as JSON turned into Lua values: maps and lists become tables,
  numbers doubles, null absent) and `actionParams`;
- results read back through JSON: a table with the keys 1..n (or none) is a list, anything else
  a map; integral numbers come back as integers (as JSON writes them); an action's result gets
  `cleanReturnedObj` (an empty map that Lua handed back as an empty list is a map again);
- a health result whose `status` is not a health code becomes `Unknown`, "Lua returned an
  invalid health status".
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lupa.lua51 as lua  # type: ignore[import-untyped]

from helmfile_operator.goyaml import load_manifest

HEALTH_CODES = frozenset({"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"})

# Built in Lua itself: a chunk gets exactly this environment (setfenv), nothing of the host's.
_SANDBOX = """
local source, chunkname, obj, params = ...
local safe_os = {time = os.time, date = os.date}
local env = {
  assert = assert, error = error, getmetatable = getmetatable, ipairs = ipairs, next = next,
  pairs = pairs, pcall = pcall, print = print, rawequal = rawequal, rawget = rawget,
  rawset = rawset, select = select, setmetatable = setmetatable, tonumber = tonumber,
  tostring = tostring, type = type, unpack = unpack, xpcall = xpcall, _VERSION = _VERSION,
  table = {concat = table.concat, insert = table.insert, maxn = table.maxn,
           remove = table.remove, sort = table.sort},
  os = safe_os,
  obj = obj,
  actionParams = params,
}
env._G = env
env.require = function(name)
  if name == "os" then
    return safe_os
  end
  error("module '" .. tostring(name) .. "' not found")
end
local fn, err = loadstring(source, "=" .. chunkname)
if fn == nil then
  error(err, 0)
end
setfenv(fn, env)
-- gopher-lua sets the string metatable only when it opens the string library.
getmetatable("").__index = nil
-- Argo CD cancels a script after 1 s; a bound on instructions keeps a runaway loop from hanging.
debug.sethook(function() error("the script ran too long", 0) end, "", 100000000)
return fn()
"""


class LuaScriptError(Exception):
    pass


def load_object(path: Path) -> dict[str, Any]:
    """A testdata file as Argo CD's tests read it (sigs.k8s.io/yaml: timestamps stay strings)."""
    documents = load_manifest(path.read_text(), str(path))
    assert len(documents) == 1, f"{path}: expected one object"
    return documents[0]


def run(script: str, name: str, obj: dict[str, Any], params: dict[str, str] | None = None) -> Any:
    """The script's return value, through JSON as Argo CD reads it; a fresh Lua state per run."""
    runtime = lua.LuaRuntime(register_eval=False, register_builtins=False)
    sandbox = runtime.execute(f"return function(...) {_SANDBOX} end")
    try:
        result = sandbox(script, name, _to_lua(runtime, obj), _to_lua(runtime, params or {}))
    except lua.LuaError as error:
        raise LuaScriptError(f"{name}: {error}") from error
    return _from_lua(result)


def health(script: str, obj: dict[str, Any]) -> dict[str, str]:
    """`ExecuteHealthLua`: {"status": ..., "message": ...} (keys the script left out are absent)."""
    result = run(script, "health.lua", obj)
    if result is None or result == []:
        return {}
    if not isinstance(result, dict):
        raise LuaScriptError(f"health.lua: expect table output from Lua script, not {result!r}")
    status = {k: v for k, v in result.items() if k in ("status", "message")}
    if status.get("status") not in HEALTH_CODES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return status


def discovery(script: str, obj: dict[str, Any]) -> dict[str, bool]:
    """`ExecuteResourceActionDiscovery`: action name → disabled (actions are enabled by default)."""
    result = run(script, "discovery.lua", obj)
    if result == []:
        return {}
    if not isinstance(result, dict):
        raise LuaScriptError(f"discovery.lua: expect table output from Lua script, not {result!r}")
    return {
        name: isinstance(value, dict) and value.get("disabled") is True
        for name, value in result.items()
    }


def action(script: str, obj: dict[str, Any]) -> dict[str, Any]:
    """`ExecuteResourceAction` for an action that returns the changed object (a patch)."""
    result = run(script, "action.lua", obj)
    if not isinstance(result, dict):
        raise LuaScriptError(f"action.lua: expected the modified object, got {result!r}")
    cleaned: dict[str, Any] = _clean_returned(result, obj)
    return cleaned


def merge_patch(live: Any, changed: Any) -> Any:
    """RFC 7386 merge patch from `live` to `changed` (evanphx/json-patch CreateMergePatch), the
    patch Argo CD sends for an action's result."""
    if not isinstance(live, dict) or not isinstance(changed, dict):
        return changed
    patch: dict[str, Any] = {}
    for key in live.keys() - changed.keys():
        patch[key] = None
    for key, value in changed.items():
        if key not in live:
            patch[key] = value
        elif live[key] != value:
            if isinstance(live[key], dict) and isinstance(value, dict):
                patch[key] = merge_patch(live[key], value)
            else:
                patch[key] = value
    return patch


RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:  # null: absent, as decodeValue leaves it
                table[key] = _to_lua(runtime, item)
        return table
    if isinstance(value, list):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    return value


def _from_lua(value: Any) -> Any:
    if lua.lua_type(value) != "table":
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if lua.lua_type(value) is not None:
            raise LuaScriptError(f"a Lua {lua.lua_type(value)} cannot be converted to JSON")
        return value
    items = list(value.items())
    keys = [key for key, _ in items]
    if all(isinstance(key, int) for key in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        return [_from_lua(item) for _, item in sorted(items, key=lambda pair: pair[0])]
    return {str(key): _from_lua(item) for key, item in items}


def _clean_returned(new: Any, old: Any) -> Any:
    """`cleanReturnedObj`/`cleanReturnedArray`: where the input had a map, an empty list in the
    result is that map emptied (Lua cannot tell `{}` from `[]`)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {
            key: {} if value == [] and isinstance(old.get(key), dict)
            else _clean_returned(value, old[key]) if key in old
            else value
            for key, value in new.items()
        }  # fmt: skip
    if isinstance(new, list) and isinstance(old, list):
        return [
            _clean_returned(item, old[index]) if index < len(old) else item
            for index, item in enumerate(new)
        ]
    return new
