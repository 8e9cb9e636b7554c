local actions = {}

actions["reconcile"] = {["disabled"] = true}
actions["suspend"] = {["disabled"] = true}
actions["resume"] = {["disabled"] = true}

local suspend = false
if obj.spec ~= nil and obj.spec.suspend ~= nil then
  suspend = obj.spec.suspend
end
-- A suspended object runs no helm, so a reconcile request would wait for the resume anyway.
if suspend then
  actions["resume"]["disabled"] = false
else
  actions["reconcile"]["disabled"] = false
  actions["suspend"]["disabled"] = false
end

return actions
