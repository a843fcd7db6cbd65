{{/*
The operator's permissions: exactly the API calls it makes, with explicit verbs.
"agentrun-operator.rules" apply where runs are watched (cluster-wide, or in each watched
namespace); "agentrun-operator.leaseRules" only in the release namespace, where the
replicas elect their leader on one Lease. Pods only for pod mode's runner Pods; nothing
for configmaps, namespaces or CRDs, and no Lease anywhere else: kopf runs standalone (no
peering objects), and the operator does not discover CRDs or namespaces at run time.
See README.md, "RBAC".
*/}}
{{- define "agentrun-operator.rules" -}}
# Watch AgentRuns (the operator's own list + watch), re-read one before a guarded write (get), add or
# remove the agentrun.dev/finalizer while a run is active (patch), and delete finished runs
# whose ttlSecondsAfterFinished has passed (delete, with a uid precondition).
- apiGroups: ["agentrun.dev"]
  resources: ["agentruns"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# Read the Agent a run names, once, when the run is admitted (get by name only).
- apiGroups: ["agentrun.dev"]
  resources: ["agents"]
  verbs: ["get"]
# Keep conversations: watch AgentThreads (a deleted thread cancels its active run) and read
# one when a run joins it.
- apiGroups: ["agentrun.dev"]
  resources: ["agentthreads"]
  verbs: ["get", "list", "watch"]
# Record a thread's active run, turns and history through its status subresource, with a
# resourceVersion-guarded merge patch.
- apiGroups: ["agentrun.dev"]
  resources: ["agentthreads/status"]
  verbs: ["patch"]
# Record phase, conditions, events and results: status is only ever written through the
# status subresource, with a resourceVersion-guarded merge patch.
- apiGroups: ["agentrun.dev"]
  resources: ["agentruns/status"]
  verbs: ["patch"]
# Read model API keys that runs reference with apiKeySecretRef (get by name; no list or
# watch, so the operator cannot enumerate Secrets). Store outputs and session snapshots
# too large for status in a Secret owned by the run, and conversations too large for a
# thread's status in a Secret owned by the thread (create; patch when the owner's Secret is
# already there).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
# Pod mode: create each attempt's runner Pod, read its state by name (get), and delete it
# when its run is cancelled, deleted or past its deadline. list and watch are the verbs a
# Pod watch needs; today the operator reads its Pods by name only. The runner's input is a Secret owned by the run (secrets create/patch above).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Pod mode: follow a runner Pod's log for its progress events and its result.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Post Kubernetes Events about runs (Started, Succeeded, Failed, ...) for `kubectl describe`;
# create only: every Event gets a fresh generated name, none is ever updated.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "agentrun-operator.leaseRules" -}}
# Leader election (agentrun.kube.lease): every replica reads the Lease to learn who leads
# (get); the first one creates it (create); the holder renews it and a standby takes it
# over with a resourceVersion-guarded replace (update). No list or watch: each replica
# reads the one Lease by name. No delete: the leader releases it by clearing its holder.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update"]
{{- end }}
