-- Health of a helmfile.dev/v1alpha1 HelmfileRelease.
-- Its status follows kstatus (sigs.k8s.io/cli-utils pkg/kstatus): Ready, Reconciling while
-- work is in progress, Stalled when it will not progress without a change, and
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
  hs.message = "HelmfileRelease is suspended: no helm action until spec.suspend is false"
  return hs
end

local status = obj.status
if status == nil or (status.observedGeneration == nil and status.conditions == nil) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to reconcile the HelmfileRelease"
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

local ready, reconciling, stalled, drifted
for _, condition in ipairs(status.conditions or {}) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Reconciling" then
    reconciling = condition
  elseif condition.type == "Stalled" then
    stalled = condition
  elseif condition.type == "Drifted" then
    drifted = condition
  end
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  -- Ready=False while Reconciling: an attempt failed and is retried with backoff. Argo CD has no
  -- progress deadline for custom resources, so Progressing would hide the failure.
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
  -- Drift (mode warn) leaves the release Ready; say so without failing syncs.
  if drifted ~= nil and drifted.status == "True" then
    hs.message = hs.message .. "; drifted: " .. describe(drifted)
  end
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
