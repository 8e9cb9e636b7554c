-- Any new value of this annotation makes the operator reconcile now and retry a Stalled release
-- (the value itself is not interpreted: a time keeps each request distinct).
local os = require("os")
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["helmfile.dev/reconcile-requested-at"] = os.date("!%Y-%m-%dT%H:%M:%SZ")

return obj
