{{/*
The fields of an AgentRun that name a Secret in the run's namespace, by wire name. The
operator reads every one of them with its own identity, so the admission policy checks
each against the requesting user. A new Secret reference is one more line here:
`layerConfig` for a field of a layer's `config`, `spec` for a field of the AgentRun's spec.
Each reference is an object whose `name` is the Secret's name.
*/}}
{{- define "agentrun-operator.secretReferenceFields" -}}
layerConfig:
  - apiKeySecretRef
  - headersSecretRef
spec:
  - sessionSnapshotRef
{{- end }}

{{/*
Most distinct Secrets one AgentRun may reference while the policy is enabled. Every
authorization check costs 350000 of the 10000000 CEL cost units a policy may spend on one
request (and of the 1000000 one expression may spend), so each check is its own validation
and their number stays well inside the budget.
*/}}
{{- define "agentrun-operator.maxSecretsPerRun" -}}
16
{{- end }}

{{/*
Most layers in a composition: the CRD's `maxItems`, read from the CRD the chart ships so
that the policy never covers fewer layers than the API server accepts.
*/}}
{{- define "agentrun-operator.maxLayers" -}}
{{- $crd := .Files.Get "files/agentrun.dev_agentruns.yaml" | fromYaml }}
{{- $max := "" }}
{{- range $version := ($crd.spec).versions }}
{{- $max = dig "schema" "openAPIV3Schema" "properties" "spec" "properties" "composition" "properties" "layers" "maxItems" $max $version }}
{{- end }}
{{- required "files/agentrun.dev_agentruns.yaml must bound spec.composition.layers with maxItems" $max | int }}
{{- end }}

{{/*
A CEL list of `{'secret': <name>, 'field': <where>}`, one per Secret reference in the
AgentRun `root` (`object` or `oldObject`) whose layers are the CEL list `layers`. The field
is typed `dyn` like the name (a map literal's values share one type); a name that is not a
string then fails the authorization check, and the policy refuses the request.
*/}}
{{- define "agentrun-operator.secretReferencesCEL" -}}
{{- $fields := include "agentrun-operator.secretReferenceFields" . | fromYaml }}
{{- $terms := list }}
{{- range $field := $fields.layerConfig }}
{{- $terms = append $terms (printf "%s.filter(l, has(l.config) && has(l.config.%s)).map(l, {'secret': l.config.%s.name, 'field': dyn('spec.composition.layers[' + l.name + '].config.%s')})" $.layers $field $field $field) }}
{{- end }}
{{- range $field := $fields.spec }}
{{- $terms = append $terms (printf "(has(%s.spec.%s) ? [{'secret': %s.spec.%s.name, 'field': dyn('spec.%s')}] : [])" $.root $field $.root $field $field) }}
{{- end }}
{{- join "\n+ " $terms }}
{{- end }}
