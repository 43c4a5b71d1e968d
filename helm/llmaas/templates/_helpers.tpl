{{/* Names, labels, merged engine entries and secret references shared by the templates. */}}

{{- define "llmaas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmaas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "llmaas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "llmaas.labels" -}}
helm.sh/chart: {{ include "llmaas.chart" . }}
app.kubernetes.io/name: {{ include "llmaas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component (gateway, engine, redis): call with (dict "ctx" $ "component" "gateway"). */}}
{{- define "llmaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llmaas.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels of a pod template: the selector's and the user's podLabels, nothing that changes with
the chart's version (helm.sh/chart, app.kubernetes.io/version) or with commonLabels: a new pod
template rolls every pod, GPU engines and Redis included. podLabels naming a selector label are
refused (where: the value's path, for the message). Call with (dict "ctx" $ "component" "engine"
"extra" (dict "llmaas.io/engine" "x") "podLabels" $podLabels "where" "engines[x].podLabels"). */}}
{{- define "llmaas.podLabels" -}}
{{- $selector := include "llmaas.selectorLabels" . | fromYaml -}}
{{- range $key, $_ := .podLabels -}}
{{- if or (hasKey $selector $key) (hasKey ($.extra | default dict) $key) -}}
{{- fail (printf "%s: %q is a selector label of the pods, set by the chart: the pods would no longer match their Deployment's selector (Kubernetes refuses it); use another key" $.where $key) -}}
{{- end -}}
{{- end -}}
{{ include "llmaas.selectorLabels" . }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- with .podLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "llmaas.gateway.fullname" -}}
{{- printf "%s-gateway" (include "llmaas.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmaas.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "llmaas.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmaas.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (.Values.gateway.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "llmaas.redis.fullname" -}}
{{- printf "%s-redis" (include "llmaas.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet's own name. Its pods carry the label controller-revision-hash
"<name>-<revision hash, up to 10 characters>", and a label value past 63 characters makes
Kubernetes refuse the pod (the StatefulSet would never start Redis): 52 characters at most. */}}
{{- define "llmaas.redis.statefulSetName" -}}
{{- include "llmaas.redis.fullname" . | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{/* The StatefulSet's governing Service (headless: a DNS name per pod). Clients use the
ClusterIP Service llmaas.redis.fullname. */}}
{{- define "llmaas.redis.headlessName" -}}
{{- printf "%s-headless" (include "llmaas.redis.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* An engine's Deployment and headless Service: call with (dict "ctx" $ "engine" $engine). */}}
{{- define "llmaas.engine.fullname" -}}
{{- printf "%s-engine-%s" (include "llmaas.fullname" .ctx) .engine.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name clients send for an engine's model. */}}
{{- define "llmaas.engine.servedName" -}}
{{- .servedModelName | default .model -}}
{{- end -}}

{{/* The parallelism one vLLM pod runs with, as YAML {tp, pp, pcp, dp, dpl}: tensorParallelSize
(rendered as --tensor-parallel-size before extraArgs), then each -tp, -pp, -pcp, -dp, -dpl of
extraArgs as vLLM's parser reads them: --tensor-parallel-size, --pipeline-parallel-size,
--prefill-context-parallel-size, --data-parallel-size, --data-parallel-size-local, with the
value next or after "=", "_" for "-" in long flags, a long flag cut short (argparse completes
--tensor-parallel; a whole flag wins over one it begins: --data-parallel-size is not
--data-parallel-size-local), and the last of each winning. dpl 0: not given. Call with a merged
engine entry. */}}
{{- define "llmaas.engine.parallel" -}}
{{- $sizes := dict "tp" (.tensorParallelSize | int) "pp" 1 "pcp" 1 "dp" 1 "dpl" 0 -}}
{{- $short := dict "-tp" "tp" "-pp" "pp" "-pcp" "pcp" "-dp" "dp" "-dpl" "dpl" -}}
{{- $long := dict "tp" "--tensor-parallel-size" "pp" "--pipeline-parallel-size" "pcp" "--prefill-context-parallel-size" "dp" "--data-parallel-size" "dpl" "--data-parallel-size-local" -}}
{{- $args := .extraArgs | default list -}}
{{- range $i, $arg := $args -}}
{{- $flag := toString $arg -}}
{{- $value := "" -}}
{{- if contains "=" $flag -}}
{{- $parts := splitn "=" 2 $flag -}}
{{- $flag = $parts._0 -}}
{{- $value = $parts._1 -}}
{{- else if lt (add1 $i) (len $args) -}}
{{- $value = index $args (add1 $i) | toString -}}
{{- end -}}
{{- if hasPrefix "--" $flag }}{{ $flag = replace "_" "-" $flag }}{{ end -}}
{{- $which := get $short $flag -}}
{{- $begun := list -}}
{{- range $key, $name := $long -}}
{{- if eq $flag $name }}{{ $which = $key }}{{ end -}}
{{- if and (ge (len $flag) 4) (hasPrefix $flag $name) }}{{ $begun = append $begun $key }}{{ end -}}
{{- end -}}
{{- if and (not $which) (eq (len $begun) 1) }}{{ $which = first $begun }}{{ end -}}
{{- if $which }}{{ $_ := set $sizes $which (max ($value | int) 1) }}{{ end -}}
{{- end -}}
{{- toYaml $sizes -}}
{{- end -}}

{{/* The GPUs one vLLM pod needs: a worker per GPU, tensor x pipeline x prefill context parallel
x the data parallel ranks it runs (--data-parallel-size-local if given, else
--data-parallel-size) (llmaas.engine.parallel). Call with a merged engine entry. */}}
{{- define "llmaas.engine.shards" -}}
{{- $p := include "llmaas.engine.parallel" . | fromYaml -}}
{{- mul $p.tp $p.pp $p.pcp (ternary $p.dpl $p.dp (gt (int $p.dpl) 0)) -}}
{{- end -}}

{{/* How the gateway names an engine: every address of its headless Service. */}}
{{- define "llmaas.engine.entry" -}}
{{- printf "dns://%s.%s.svc.%s:8000" (include "llmaas.engine.fullname" .) .ctx.Release.Namespace .ctx.Values.clusterDomain -}}
{{- end -}}

{{/* Deep merge of two maps as YAML: keys of .over win (false, 0 and "" too), maps merge. */}}
{{- define "llmaas.merge" -}}
{{- $out := deepCopy .base -}}
{{- range $key, $value := .over -}}
{{- $current := get $out $key -}}
{{- if and (kindIs "map" $value) (kindIs "map" $current) -}}
{{- $_ := set $out $key (include "llmaas.merge" (dict "base" $current "over" $value) | fromYaml) -}}
{{- else -}}
{{- $_ := set $out $key $value -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/* Every engine entry merged over engineDefaults, as YAML {engines: [...]}. */}}
{{- define "llmaas.engines" -}}
{{- $engines := list -}}
{{- $seen := dict -}}
{{- range .Values.engines -}}
{{- if hasKey $seen .name -}}
{{- fail (printf "engines: the name %q is used twice (each engine needs its own Deployment and Service)" .name) -}}
{{- end -}}
{{- $_ := set $seen .name true -}}
{{- $engines = append $engines (include "llmaas.merge" (dict "base" $.Values.engineDefaults "over" .) | fromYaml) -}}
{{- end -}}
{{- toYaml (dict "engines" $engines) -}}
{{- end -}}

{{/* A secret reference {name, key} for a {value, existingSecret, key} block: call with
(dict "ref" $block "name" $chartSecretName). */}}
{{- define "llmaas.secretRef" -}}
name: {{ .ref.existingSecret | default .name }}
key: {{ .ref.key }}
{{- end -}}

{{/* The value to store for a generated secret: the given value, the one in the Secret already
in the cluster (upgrades), or a new random one. Call with
(dict "ctx" $ "ref" $block "secret" $chartSecretName). */}}
{{- define "llmaas.secretValue" -}}
{{- if .ref.value -}}
{{- .ref.value -}}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- $data := dig "data" (dict) $existing -}}
{{- if hasKey $data .ref.key -}}
{{- index $data .ref.key | b64dec -}}
{{- else -}}
{{- randAlphaNum 40 -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The gateway's chart-made Secret and whether it is needed. */}}
{{- define "llmaas.gateway.secretName" -}}
{{- include "llmaas.gateway.fullname" . -}}
{{- end -}}

{{- define "llmaas.redis.secretName" -}}
{{- include "llmaas.redis.fullname" . -}}
{{- end -}}

{{- define "llmaas.huggingFace.secretName" -}}
{{- printf "%s-huggingface" (include "llmaas.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Whether the gateway connects with a password: "true" or "". */}}
{{- define "llmaas.redis.hasPassword" -}}
{{- if .Values.redis.enabled -}}
true
{{- else if or .Values.redis.external.password.value .Values.redis.external.password.existingSecret -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret reference {name, key} of the Redis password, if the gateway connects with one. */}}
{{- define "llmaas.redis.passwordRef" -}}
{{- if .Values.redis.enabled -}}
{{- include "llmaas.secretRef" (dict "ref" .Values.redis.auth "name" (include "llmaas.redis.secretName" .)) -}}
{{- else if include "llmaas.redis.hasPassword" . -}}
{{- include "llmaas.secretRef" (dict "ref" .Values.redis.external.password "name" (include "llmaas.redis.secretName" .)) -}}
{{- end -}}
{{- end -}}

{{/* LLMAAS_REDIS_URL, never with the password: that reaches the gateway as LLMAAS_REDIS_PASSWORD
(any character allowed; in a URL, / @ # % ? would break it), from a Secret. The URL is a plain
env value of the Deployments, so redis.external.url with a password is refused; an ACL user
name in it is kept. */}}
{{- define "llmaas.redis.url" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s.%s.svc.%s:6379/0" (include "llmaas.redis.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- $userinfo := (urlParse .Values.redis.external.url).userinfo -}}
{{- if and (contains ":" $userinfo) (splitn ":" 2 $userinfo)._1 -}}
{{- fail "redis.external.url: has a password in it, which would be readable by anyone who can read the Deployments (it is their LLMAAS_REDIS_URL): give it as redis.external.password (value or existingSecret) and the URL without it; an ACL user name may stay (rediss://default@host:6380/0)" -}}
{{- end -}}
{{- .Values.redis.external.url -}}
{{- end -}}
{{- end -}}

{{/* The Redis connection of a pod that uses it (gateway, trainer): env entries. */}}
{{- define "llmaas.redis.env" -}}
- name: LLMAAS_REDIS_URL
  value: {{ include "llmaas.redis.url" . | quote }}
{{- with include "llmaas.redis.passwordRef" . }}
- name: LLMAAS_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      {{- . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* The gateway's config file (configs/gateway.yaml's shape), from gateway.config and the engines. */}}
{{- define "llmaas.gateway.config" -}}
{{- $config := deepCopy .Values.gateway.config -}}
{{- $_ := set $config "host" .Values.listenAddress -}}
{{- $_ := set $config "port" 8080 -}}
{{- $models := list -}}
{{- $pools := dict -}}
{{- range (include "llmaas.engines" . | fromYaml).engines -}}
{{- $entry := include "llmaas.engine.entry" (dict "ctx" $ "engine" .) -}}
{{- $names := list (include "llmaas.engine.servedName" .) -}}
{{- if and .lora.enabled (not .simulator) -}}
{{- range .lora.modules }}{{ $names = append $names .name }}{{ end -}}
{{- end -}}
{{- range $names -}}
{{- if not (hasKey $pools .) -}}
{{- $models = append $models . -}}
{{- $_ := set $pools . list -}}
{{- end -}}
{{- $_ := set $pools . (append (get $pools .) $entry) -}}
{{- end -}}
{{- end -}}
{{- $routes := list -}}
{{- range $models -}}
{{- $routes = append $routes (dict "name" . "engines" (get $pools .)) -}}
{{- end -}}
{{- /* The gateway refuses to start on a model name given twice ("models: duplicate model
names"): engines of one servedModelName pool together, but an extraModels entry cannot join. */ -}}
{{- range .Values.gateway.extraModels -}}
{{- if has .name $models -}}
{{- fail (printf "gateway.extraModels: the name %q is taken already (an engine's servedModelName or lora.modules name, or an earlier extraModels entry): the gateway refuses duplicate model names" .name) -}}
{{- end -}}
{{- $models = append $models .name -}}
{{- end -}}
{{- $routes = concat $routes .Values.gateway.extraModels -}}
{{- if $routes }}{{ $_ := set $config "models" $routes }}{{ end -}}
{{- $metering := $config.metering | default dict -}}
{{- $_ := set $metering "spill_dir" "/var/lib/llmaas/spill" -}}
{{- $_ := set $config "metering" $metering -}}
{{- $jwt := dict -}}
{{- if .Values.gateway.config.auth -}}
{{- $jwt = .Values.gateway.config.auth.jwt | default dict | deepCopy -}}
{{- end -}}
{{- if include "llmaas.gateway.jwtFile" (dict "ctx" . "which" "publicKey") -}}
{{- $_ := set $jwt "public_key_file" (printf "/etc/llmaas/jwt/%s" .Values.gateway.jwt.publicKey.key) -}}
{{- end -}}
{{- if include "llmaas.gateway.jwtFile" (dict "ctx" . "which" "jwks") -}}
{{- $_ := set $jwt "jwks_file" (printf "/etc/llmaas/jwt/%s" .Values.gateway.jwt.jwks.key) -}}
{{- end -}}
{{- /* Any key source turns JWTs on, and then the gateway refuses to start without an issuer
and an audience to check every token against. */ -}}
{{- $sources := list -}}
{{- range $which := list "publicKey" "jwks" "hmacSecret" -}}
{{- $ref := get $.Values.gateway.jwt $which -}}
{{- if or $ref.value $ref.existingSecret }}{{ $sources = append $sources (printf "gateway.jwt.%s" $which) }}{{ end -}}
{{- end -}}
{{- if $jwt.jwks_url }}{{ $sources = append $sources "gateway.config.auth.jwt.jwks_url" }}{{ end -}}
{{- if and $sources (not (and $jwt.issuer $jwt.audience)) -}}
{{- fail (printf "gateway.config.auth.jwt.issuer and gateway.config.auth.jwt.audience are both required when JWTs are on (%s set): the gateway refuses to start without them" (join ", " $sources)) -}}
{{- end -}}
{{- /* As the gateway (settings.JwtSettings): some listed algorithm must have its key: HS* the
HMAC secret, the others a public key, a JWKS file or jwks_url. */ -}}
{{- if $sources -}}
{{- $algorithms := $jwt.algorithms | default (list "RS256" "ES256") -}}
{{- $hmac := or .Values.gateway.jwt.hmacSecret.value .Values.gateway.jwt.hmacSecret.existingSecret -}}
{{- $keyed := or $jwt.public_key_file $jwt.jwks_file $jwt.jwks_url -}}
{{- $usable := false -}}
{{- range $alg := $algorithms -}}
{{- if hasPrefix "HS" $alg }}{{ if $hmac }}{{ $usable = true }}{{ end }}{{ else if $keyed }}{{ $usable = true }}{{ end -}}
{{- end -}}
{{- if not $usable -}}
{{- fail (printf "gateway.config.auth.jwt.algorithms %v: no key for any of them (%s set): HS* need gateway.jwt.hmacSecret, the others gateway.jwt.publicKey, gateway.jwt.jwks or jwks_url; the gateway refuses to start without one" $algorithms (join ", " $sources)) -}}
{{- end -}}
{{- /* As the gateway (RFC 7518 3.2): an HMAC key at least as long as the hash of the strongest
HS* listed, in bytes. A secret in an existingSecret cannot be read here (deploy.md says so). */ -}}
{{- $secret := .Values.gateway.jwt.hmacSecret.value -}}
{{- if $secret -}}
{{- $needed := 0 -}}
{{- $strongest := "" -}}
{{- range $alg := $algorithms -}}
{{- if hasPrefix "HS" $alg -}}
{{- $bytes := div (trimPrefix "HS" $alg | int) 8 | int -}}
{{- if gt $bytes $needed }}{{ $needed = $bytes }}{{ $strongest = $alg }}{{ end -}}
{{- end -}}
{{- end -}}
{{- if lt (len $secret) $needed -}}
{{- fail (printf "gateway.jwt.hmacSecret.value: %d bytes, but %s needs at least %d (gateway.config.auth.jwt.algorithms %v): the gateway refuses to start with a shorter HMAC secret; give a longer one" (len $secret) $strongest $needed $algorithms) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $jwt -}}
{{- $auth := $config.auth | default dict -}}
{{- $_ := set $auth "jwt" $jwt -}}
{{- $_ := set $config "auth" $auth -}}
{{- end -}}
{{- $ft := .Values.fineTuning -}}
{{- $files := $config.files | default dict -}}
{{- $_ := set $files "dir" $ft.storage.mountPath -}}
{{- $_ := set $files "enabled" $ft.enabled -}}
{{- $_ := set $config "files" $files -}}
{{- if $ft.enabled -}}
{{- $tuning := $config.fine_tuning | default dict -}}
{{- $bases := dict -}}
{{- range $ft.baseModels }}{{ $_ := set $bases .name .path }}{{ end -}}
{{- $_ := set $tuning "base_models" $bases -}}
{{- $_ := set $tuning "max_lora_rank" $ft.maxLoraRank -}}
{{- /* A job left on lora_rank "auto" trains at fine_tuning.lora_rank (8 by default): never
above what the engines load (the gateway refuses to start with it higher). */ -}}
{{- if hasKey $tuning "lora_rank" -}}
{{- if gt (int $tuning.lora_rank) (int $ft.maxLoraRank) -}}
{{- fail (printf "gateway.config.fine_tuning.lora_rank %v is above fineTuning.maxLoraRank %v (the engines' --max-lora-rank): the adapter of a job left on lora_rank \"auto\" could not be loaded" $tuning.lora_rank $ft.maxLoraRank) -}}
{{- end -}}
{{- else -}}
{{- $_ := set $tuning "lora_rank" (min 8 (int $ft.maxLoraRank)) -}}
{{- end -}}
{{- $_ := set $config "fine_tuning" $tuning -}}
{{- else if gt (dig "fine_tuning" "lora_rank" 8 $config | int) 8 -}}
{{- /* Off, the chart leaves max_lora_rank at the gateway's default (8), which it checks all the
same at start. */ -}}
{{- fail (printf "gateway.config.fine_tuning.lora_rank %v is above 8, the gateway's fine_tuning.max_lora_rank with fineTuning.enabled false (fineTuning.maxLoraRank is set only with fine-tuning on): the gateway refuses to start; lower it, or remove it" $config.fine_tuning.lora_rank) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* "true" if a JWT key file (publicKey or jwks) is configured. */}}
{{- define "llmaas.gateway.jwtFile" -}}
{{- $ref := get .ctx.Values.gateway.jwt .which -}}
{{- if or $ref.value $ref.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* Seconds a gateway pod needs from deletion to the end of its drain: the preStop sleep,
config.shutdown_grace_s for requests in flight, metering.flush_timeout_s, and 10 to exit. */}}
{{- define "llmaas.gateway.drainSeconds" -}}
{{- $config := .Values.gateway.config -}}
{{- $grace := 30.0 -}}
{{- if hasKey $config "shutdown_grace_s" }}{{ $grace = $config.shutdown_grace_s }}{{ end -}}
{{- $flush := 10.0 -}}
{{- if and $config.metering (hasKey ($config.metering | default dict) "flush_timeout_s") }}{{ $flush = $config.metering.flush_timeout_s }}{{ end -}}
{{- add .Values.gateway.preStopSleepSeconds (ceil $grace) (ceil $flush) 10 | int -}}
{{- end -}}

{{/* Seconds a trainer takes to stop at most: its job's checkpoint (fine_tuning.stop_checkpoint_s),
then 5 s for a run that did not write it, and the job queued again. */}}
{{- define "llmaas.trainer.stopSeconds" -}}
{{- $fineTuning := .Values.gateway.config.fine_tuning | default dict -}}
{{- $checkpoint := 30.0 -}}
{{- if hasKey $fineTuning "stop_checkpoint_s" }}{{ $checkpoint = $fineTuning.stop_checkpoint_s }}{{ end -}}
{{- add (ceil $checkpoint) 15 | int -}}
{{- end -}}

{{/* Seconds from deletion to SIGKILL for gateway pods. */}}
{{- define "llmaas.gateway.terminationGrace" -}}
{{- if kindIs "invalid" .Values.gateway.terminationGracePeriodSeconds -}}
{{- include "llmaas.gateway.drainSeconds" . -}}
{{- else -}}
{{- .Values.gateway.terminationGracePeriodSeconds | int -}}
{{- end -}}
{{- end -}}


{{/* Fine-tuning: the trainer's name, the shared files claim, and the base models' names. */}}
{{- define "llmaas.trainer.fullname" -}}
{{- printf "%s-trainer" (include "llmaas.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "llmaas.fineTuning.claimName" -}}
{{- .Values.fineTuning.storage.existingClaim | default (printf "%s-files" (include "llmaas.fullname" .) | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/* The base models as YAML {names: [...]}, after checking them: at least one, no name twice,
and each served by an engine of the release or an extraModels entry (adapters are loaded into
the engines serving their base model). */}}
{{- define "llmaas.fineTuning.baseNames" -}}
{{- $served := list -}}
{{- range (include "llmaas.engines" . | fromYaml).engines }}{{ $served = append $served (include "llmaas.engine.servedName" .) }}{{ end -}}
{{- range .Values.gateway.extraModels }}{{ $served = append $served .name }}{{ end -}}
{{- $names := list -}}
{{- if not .Values.fineTuning.baseModels -}}
{{- fail "fineTuning.baseModels: at least one base model is needed when fineTuning.enabled (the trainer has nothing to train)" -}}
{{- end -}}
{{- range .Values.fineTuning.baseModels -}}
{{- if has .name $names -}}
{{- fail (printf "fineTuning.baseModels: the name %q is listed twice" .name) -}}
{{- end -}}
{{- if not (has .name $served) -}}
{{- fail (printf "fineTuning.baseModels: %q is not a model of this release (an engine's servedModelName or a gateway.extraModels name)" .name) -}}
{{- end -}}
{{- $names = append $names .name -}}
{{- end -}}
{{- toYaml (dict "names" $names) -}}
{{- end -}}

{{/* "true" if an engine (merged entry) serves a base model: it gets LoRA and the files volume.
Call with (dict "ctx" $ "engine" $engine). */}}
{{- define "llmaas.engine.fineTuned" -}}
{{- if and .ctx.Values.fineTuning.enabled (not .engine.simulator) -}}
{{- if has (include "llmaas.engine.servedName" .engine) (include "llmaas.fineTuning.baseNames" .ctx | fromYaml).names -}}true{{- end -}}
{{- end -}}
{{- end -}}
