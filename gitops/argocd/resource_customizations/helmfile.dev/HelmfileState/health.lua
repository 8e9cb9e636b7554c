-- Health of a helmfile.dev/v1alpha1 HelmfileState: the summary of its HelmfileReleases.
-- Its status follows kstatus (sigs.k8s.io/cli-utils pkg/kstatus): Ready, Reconciling while
-- releases are in progress, Stalled for a render error or a failed release, and
-- status.observedGeneration.
-- Only Lua 5.1 base functions: argocd-cm scripts run without the standard libraries.
local hs = {}

local function describe(condition)
  if condition.message ~= nil and condition.message ~= "" then
    return condition.message
  end
  return condition.reason
end

if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "HelmfileState is suspended: its releases run no helm until spec.suspend is false"
  return hs
end

local status = obj.status
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the HelmfileState"
  return hs
end
-- A Ready written for an older spec says nothing about the current one.
local generation = obj.metadata.generation
if status.observedGeneration ~= nil and generation ~= nil and
    status.observedGeneration ~= generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. generation ..
    " (observed " .. status.observedGeneration .. ")"
  return hs
end

local ready, reconciling, stalled
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Reconciling" then
    reconciling = condition
  elseif condition.type == "Stalled" then
    stalled = condition
  end
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  if ready ~= nil and ready.status == "False" then
    hs.status = "Degraded"
    hs.message = describe(ready)
  else
    hs.status = "Progressing"
    hs.message = describe(reconciling)
  end
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
  return hs
end
-- A plan waits for someone's approval (approval.mode manual): paused, not failed.
if ready ~= nil and ready.status == "False" and ready.reason == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = describe(ready)
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = describe(ready)
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = describe(ready)
else
  hs.message = "Waiting for the Ready condition"
end
return hs
