{{/* Values that the schema cannot judge alone (they depend on each other, or on names the chart
derives) but that Kubernetes, or the pods, would refuse later and less clearly: refused here,
at render time, naming the values. Rendered by validate.yaml, which outputs nothing. */}}
{{- define "llmaas.validate" -}}

{{- $pdb := .Values.gateway.podDisruptionBudget -}}
{{- if $pdb.enabled -}}
{{- $min := not (kindIs "invalid" $pdb.minAvailable) -}}
{{- $max := not (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- if and $min $max -}}
{{- fail "gateway.podDisruptionBudget: minAvailable and maxUnavailable are both set; a PodDisruptionBudget takes exactly one (set the other to null)" -}}
{{- else if not (or $min $max) -}}
{{- fail "gateway.podDisruptionBudget: neither minAvailable nor maxUnavailable is set; set one (or enabled: false)" -}}
{{- end -}}
{{- end -}}

{{- /* A grace period shorter than the drain: Kubernetes kills the pod with streams still running
and usage records not flushed to Redis (its spill directory goes with the pod). */ -}}
{{- $explicit := .Values.gateway.terminationGracePeriodSeconds -}}
{{- $drain := include "llmaas.gateway.drainSeconds" . | int -}}
{{- if and (not (kindIs "invalid" $explicit)) (lt (int $explicit) $drain) -}}
{{- fail (printf "gateway.terminationGracePeriodSeconds (%d) is shorter than a pod's drain (%d: preStopSleepSeconds + config.shutdown_grace_s + config.metering.flush_timeout_s + 10): Kubernetes would kill gateways with streams running and usage unflushed; leave it null, or lower config.shutdown_grace_s" (int $explicit) $drain) -}}
{{- end -}}

{{- /* A trainer killed before its job's checkpoint is written: the job starts over. */ -}}
{{- if .Values.fineTuning.enabled -}}
{{- $stop := include "llmaas.trainer.stopSeconds" . | int -}}
{{- $trainerGrace := int .Values.fineTuning.trainer.terminationGracePeriodSeconds -}}
{{- if lt $trainerGrace $stop -}}
{{- fail (printf "fineTuning.trainer.terminationGracePeriodSeconds (%d) is shorter than a trainer's stop (%d: gateway.config.fine_tuning.stop_checkpoint_s + 15): Kubernetes would kill trainers before their job's checkpoint is written, and the job would start over; raise it, or lower stop_checkpoint_s" $trainerGrace $stop) -}}
{{- end -}}
{{- end -}}

{{- $hpa := .Values.gateway.autoscaling -}}
{{- if and $hpa.enabled (gt (int $hpa.minReplicas) (int $hpa.maxReplicas)) -}}
{{- fail (printf "gateway.autoscaling: minReplicas (%d) is above maxReplicas (%d)" (int $hpa.minReplicas) (int $hpa.maxReplicas)) -}}
{{- end -}}
{{- /* A Utilization target is a share of the pods' request: without one the HPA reports
FailedGetResourceMetric and never scales. */ -}}
{{- if $hpa.enabled -}}
{{- $res := .Values.gateway.resources | default dict -}}
{{- $requests := merge (dig "requests" dict $res) (dig "limits" dict $res) -}}
{{- if not (or $hpa.targetCPUUtilizationPercentage (get $hpa "targetMemoryUtilizationPercentage")) -}}
{{- fail "gateway.autoscaling: neither targetCPUUtilizationPercentage nor targetMemoryUtilizationPercentage is set: the HPA would have nothing to scale on" -}}
{{- end -}}
{{- if and $hpa.targetCPUUtilizationPercentage (not (get $requests "cpu")) -}}
{{- fail "gateway.autoscaling: targetCPUUtilizationPercentage is a share of gateway.resources.requests.cpu, which is not set (nor a limit it defaults to): the HPA would never scale; set it" -}}
{{- end -}}
{{- if and (get $hpa "targetMemoryUtilizationPercentage") (not (get $requests "memory")) -}}
{{- fail "gateway.autoscaling: targetMemoryUtilizationPercentage is a share of gateway.resources.requests.memory, which is not set (nor a limit it defaults to): the HPA would never scale; set it" -}}
{{- end -}}
{{- end -}}

{{- /* gateway.env wins over the config file (the environment comes first in the gateway's
Settings), but some settings the chart sets itself (the probes and the Service reach port 8080,
the spill directory is the pod's volume, secrets come from Secrets), and from two it sizes the
pod: a longer grace in the environment than in gateway.config would have Kubernetes kill a pod
still draining, its usage records unflushed. */ -}}
{{- $derived := dict "LLMAAS_SHUTDOWN_GRACE_S" "gateway.config.shutdown_grace_s" "LLMAAS_METERING__FLUSH_TIMEOUT_S" "gateway.config.metering.flush_timeout_s" -}}
{{- $managed := dict "LLMAAS_HOST" "listenAddress" "LLMAAS_URL" "listenAddress (the CLI in the container reaches the gateway at its loopback in that family)" "LLMAAS_PORT" "the chart (8080, where the probes and the Service reach it)" "LLMAAS_MODELS" "engines and gateway.extraModels" "LLMAAS_REDIS_URL" "redis" "LLMAAS_REDIS_PASSWORD" "redis" "LLMAAS_ADMIN_TOKEN" "gateway.secrets.adminToken" "LLMAAS_KEY_PEPPER" "gateway.secrets.keyPepper" "LLMAAS_METRICS_TOKEN" "gateway.secrets.metricsToken" "LLMAAS_AUTH__JWT__HMAC_SECRET" "gateway.jwt.hmacSecret" "LLMAAS_METERING__SPILL_DIR" "gateway.spill (the pod's spill volume)" "LLMAAS_FILES__DIR" "fineTuning.storage.mountPath" "LLMAAS_DEV_MODE" "the chart (off)" "LLMAAS_FILES__ENABLED" "fineTuning.enabled" "LLMAAS_FINE_TUNING__BASE_MODELS" "fineTuning.baseModels" "LLMAAS_FINE_TUNING__MAX_LORA_RANK" "fineTuning.maxLoraRank (the engines' --max-lora-rank)" "LLMAAS_AUTH__JWT__PUBLIC_KEY_FILE" "gateway.jwt.publicKey" "LLMAAS_AUTH__JWT__JWKS_FILE" "gateway.jwt.jwks" "LLMAAS_ROUTING__DNS_REFRESH_S" "gateway.config.routing.dns_refresh_s (the engines' preStopSleepSeconds are checked against it)" -}}
{{- include "llmaas.validate.env" (dict "ctx" . "where" "gateway.env" "pod" "the gateway" "env" .Values.gateway.env "managed" $managed "derived" $derived "sizes" "the pods' terminationGracePeriodSeconds (Kubernetes would kill a pod still draining)") -}}
{{- /* The trainer reads the same config file, with its own environment (trainer/deployment.yaml):
the same settings are the chart's there (Kubernetes keeps the last of a name given twice: a
trainer would quietly use another Redis or files directory), and its stop checkpoint sizes its
pods' grace period. */ -}}
{{- if .Values.fineTuning.enabled -}}
{{- $trainer := merge (dict "HF_HUB_OFFLINE" "the chart (the trainer never reaches the Hugging Face Hub)" "HF_HOME" "the chart (its caches are on the writable /tmp)" "XDG_CACHE_HOME" "the chart (its caches are on the writable /tmp)") (omit $managed "LLMAAS_URL") -}}
{{- $stop := dict "LLMAAS_FINE_TUNING__STOP_CHECKPOINT_S" "gateway.config.fine_tuning.stop_checkpoint_s" -}}
{{- include "llmaas.validate.env" (dict "ctx" . "where" "fineTuning.trainer.env" "pod" "the trainer" "env" .Values.fineTuning.trainer.env "managed" $trainer "derived" $stop "sizes" "the check of fineTuning.trainer.terminationGracePeriodSeconds (Kubernetes would kill a trainer before its job's checkpoint is written)") -}}
{{- end -}}

{{- /* Settings the gateway checks against each other at start (settings.Settings), with its
defaults for the one not given, and gateway.env's value where it sets one (it wins over the
config file): refused here, a release's gateways would crash-loop. */ -}}
{{- $config := .Values.gateway.config | default dict -}}
{{- $fromEnv := dict -}}
{{- range .Values.gateway.env -}}
{{- if and (hasKey . "value") (regexMatch "^[0-9]+$" (toString .value)) -}}
{{- $_ := set $fromEnv (upper .name) (toString .value) -}}
{{- end -}}
{{- end -}}
{{- $body := dig "max_body_bytes" 16777216 $config | int64 -}}
{{- $bodyFrom := "gateway.config.max_body_bytes" -}}
{{- if hasKey $fromEnv "LLMAAS_MAX_BODY_BYTES" -}}
{{- $body = get $fromEnv "LLMAAS_MAX_BODY_BYTES" | int64 -}}
{{- $bodyFrom = "gateway.env LLMAAS_MAX_BODY_BYTES" -}}
{{- end -}}
{{- $image := dig "request_policy" "max_data_url_bytes" 8388608 $config | int64 -}}
{{- $imageFrom := "gateway.config.request_policy.max_data_url_bytes" -}}
{{- if hasKey $fromEnv "LLMAAS_REQUEST_POLICY__MAX_DATA_URL_BYTES" -}}
{{- $image = get $fromEnv "LLMAAS_REQUEST_POLICY__MAX_DATA_URL_BYTES" | int64 -}}
{{- $imageFrom = "gateway.env LLMAAS_REQUEST_POLICY__MAX_DATA_URL_BYTES" -}}
{{- end -}}
{{- if lt $body (add $image 16384) -}}
{{- fail (printf "%s (%d) leaves less than 16384 bytes above %s (%d) for the rest of a request (one with an image that policy accepts would be refused 413): the gateway refuses to start; raise the one or lower the other" $bodyFrom $body $imageFrom $image) -}}
{{- end -}}
{{- /* A token a client sends in a header: HTTP reads its bytes as Latin-1 and clients write
UTF-8, so the gateway refuses one that is not printable ASCII. Never shown: it is a secret. */ -}}
{{- range $name, $ref := dict "gateway.secrets.adminToken" .Values.gateway.secrets.adminToken "gateway.secrets.metricsToken" .Values.gateway.secrets.metricsToken -}}
{{- if and $ref.value (not (regexMatch "^[ -~]*$" $ref.value)) -}}
{{- fail (printf "%s.value: has a character that is not printable ASCII (letters, digits, punctuation, space): a client sends it in a header, and the gateway refuses to start with it; give another" $name) -}}
{{- end -}}
{{- end -}}

{{- /* The chart's gateway Secret holds each secret under its `key`: two under one key were a
duplicate key in its data (one value silently taking the other's place: the admin token could
be the JWT signing secret). Key files are projected under their `key`s too. */ -}}
{{- $s := .Values.gateway.secrets -}}
{{- $j := .Values.gateway.jwt -}}
{{- $kept := dict -}}
{{- range $name, $ref := dict "gateway.secrets.adminToken" $s.adminToken "gateway.secrets.keyPepper" $s.keyPepper "gateway.secrets.metricsToken" $s.metricsToken "gateway.jwt.publicKey" $j.publicKey "gateway.jwt.jwks" $j.jwks "gateway.jwt.hmacSecret" $j.hmacSecret -}}
{{- $inChart := and (not $ref.existingSecret) (or (hasPrefix "gateway.secrets." $name) $ref.value) -}}
{{- if $inChart -}}
{{- if hasKey $kept $ref.key -}}
{{- fail (printf "%s.key and %s.key are both %q: the chart's gateway Secret would hold two values under one key; give them different keys" (get $kept $ref.key) $name $ref.key) -}}
{{- end -}}
{{- $_ := set $kept $ref.key $name -}}
{{- end -}}
{{- end -}}
{{- if and (or $j.publicKey.value $j.publicKey.existingSecret) (or $j.jwks.value $j.jwks.existingSecret) (eq $j.publicKey.key $j.jwks.key) -}}
{{- fail (printf "gateway.jwt.publicKey.key and gateway.jwt.jwks.key are both %q: both files would be projected to one path; give them different keys" $j.jwks.key) -}}
{{- end -}}

{{- $r := .Values.redis -}}
{{- if and $r.enabled (not (dig "limits" "memory" "" $r.resources)) -}}
{{- fail "redis.resources.limits.memory: needed (Redis's maxmemory is redis.maxmemoryPercent of it)" -}}
{{- end -}}
{{- /* With the chart's Redis on, an external one is ignored: limits, keys and usage would go to a
Redis the operator did not mean. */ -}}
{{- $external := $r.external -}}
{{- if and $r.enabled (or $external.url $external.password.value $external.password.existingSecret) -}}
{{- fail "redis.external is set but redis.enabled is true: the gateway would use the chart's own Redis and ignore it; set redis.enabled: false to use yours (or remove redis.external)" -}}
{{- end -}}

{{- $objects := dict -}}
{{- range $e := (include "llmaas.engines" . | fromYaml).engines -}}
{{- $name := include "llmaas.engine.fullname" (dict "ctx" $ "engine" $e) -}}
{{- /* Object names are cut to 63 characters: two long engine names can end up the same. */ -}}
{{- if hasKey $objects $name -}}
{{- fail (printf "engines: %q and %q would both name their Deployment, Service and claim %q (names are cut to 63 characters): make the engine names differ sooner, or shorten the release name or fullnameOverride" (get $objects $name) $e.name $name) -}}
{{- end -}}
{{- $_ := set $objects $name $e.name -}}

{{- /* Adapters are passed to vLLM (--lora-modules) and named to the gateway only with LoRA on:
without it they would be dropped, and their names answered 404 by the gateway. */ -}}
{{- if and $e.lora.modules (not $e.lora.enabled) (not $e.simulator) -}}
{{- fail (printf "engines[%s].lora.modules: %d adapter(s) listed but lora.enabled is false, so vLLM would not load them and the gateway would not serve their names; set lora.enabled: true, or remove them" $e.name (len $e.lora.modules)) -}}
{{- end -}}

{{- /* A stopping engine pod leaves its Service at once, but the gateway goes on choosing it
until it resolves the Service again: SIGTERM before that, and vLLM (draining) refuses the new
requests the gateway still sends it. */ -}}
{{- $refresh := dig "routing" "dns_refresh_s" 10 ($.Values.gateway.config | default dict) -}}
{{- if lt (float64 ($e.preStopSleepSeconds | default 0)) (float64 $refresh) -}}
{{- fail (printf "engines[%s].preStopSleepSeconds (%v) is below gateway.config.routing.dns_refresh_s (%v): a stopping engine pod would get SIGTERM while the gateway still sends it new requests, which it refuses; raise preStopSleepSeconds (and terminationGracePeriodSeconds with it)" $e.name ($e.preStopSleepSeconds | default 0) $refresh) -}}
{{- end -}}

{{- /* vLLM drains for what the grace period leaves after the preStop sleep and 10 s to exit
(engines/deployment.yaml, --shutdown-timeout): nothing left, and it aborts every stream. */ -}}
{{- $grace := int $e.terminationGracePeriodSeconds -}}
{{- if and (not $e.simulator) (le (sub (sub $grace (int ($e.preStopSleepSeconds | default 0))) 10) 0) -}}
{{- fail (printf "engines[%s].terminationGracePeriodSeconds (%d) leaves vLLM no time to finish the requests in flight after the preStopSleepSeconds (%v) and 10 s to exit: it would abort them; raise it" $e.name $grace ($e.preStopSleepSeconds | default 0)) -}}
{{- end -}}

{{- /* vLLM runs a worker on each GPU (a shard of the model, of a pipeline stage, of a data
parallel rank): a pod given fewer never starts. */ -}}
{{- $shards := include "llmaas.engine.shards" $e | int -}}
{{- if and (not $e.simulator) $e.gpu.count (lt (int $e.gpu.count) $shards) -}}
{{- $p := include "llmaas.engine.parallel" $e | fromYaml -}}
{{- $dp := ternary $p.dpl $p.dp (gt (int $p.dpl) 0) -}}
{{- fail (printf "engines[%s].gpu.count: %d GPU(s) for %d workers (tensor parallel %d x pipeline parallel %d x prefill context parallel %d x data parallel ranks here %d, from tensorParallelSize and the last -tp, -pp, -pcp, -dp, -dpl of extraArgs): vLLM needs a GPU per worker and would not start; raise gpu.count or leave it null (one per worker)" $e.name (int $e.gpu.count) $shards (int $p.tp) (int $p.pp) (int $p.pcp) (int $dp)) -}}
{{- end -}}

{{- $a := $e.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "engines[%s].autoscaling: minReplicas (%d) is above maxReplicas (%d)" $e.name (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- end -}}

{{- /* A ReadWriteOnce claim attaches to one node: a second pod of the engine scheduled on another
node (more replicas, KEDA, or a rollout's surge pod) hangs in ContainerCreating on Multi-Attach. */ -}}
{{- $cache := $e.modelCache -}}
{{- if and (not $e.simulator) $cache.enabled (not $cache.existingClaim) (not (has "ReadWriteMany" $cache.accessModes)) -}}
{{- $why := list -}}
{{- $pods := ternary $a.maxReplicas $e.replicas $a.enabled | int -}}
{{- if gt $pods 1 -}}
{{- $why = append $why (printf "%s: %d" (ternary "autoscaling.maxReplicas" "replicas" $a.enabled) $pods) -}}
{{- end -}}
{{- if and (gt $pods 0) (ne ($e.strategy.type | default "RollingUpdate") "Recreate") -}}
{{- $surge := dig "rollingUpdate" "maxSurge" 0 $e.strategy | toString -}}
{{- if not (has $surge (list "0" "0%")) -}}
{{- $why = append $why (printf "strategy.rollingUpdate.maxSurge: %s" $surge) -}}
{{- end -}}
{{- end -}}
{{- if $why -}}
{{- fail (printf "engines[%s].modelCache: a ReadWriteOnce claim, but more than one pod may use it at once (%s): pods on another node would hang on Multi-Attach. Give modelCache a ReadWriteMany class (storageClassName, accessModes: [ReadWriteMany]), an existingClaim, or enabled: false (an emptyDir per pod); or run one pod with maxSurge: 0" $e.name (join ", " $why)) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* The engine ServiceMonitor and KEDA have Prometheus scrape the engines' /metrics (vllm:*),
which the engines' NetworkPolicy closes to all but the gateway unless metricsFrom names
Prometheus: every scrape would fail, and the engine alerts, the dashboard's engine panels and
KEDA's scaling would have no data, with nothing to say so. */ -}}
{{- $np := .Values.networkPolicy -}}
{{- if and $np.enabled (not $np.metricsFrom) -}}
{{- $scraped := list -}}
{{- if .Values.monitoring.serviceMonitors.enabled -}}
{{- $scraped = append $scraped "monitoring.serviceMonitors.enabled" -}}
{{- end -}}
{{- range $e := (include "llmaas.engines" . | fromYaml).engines -}}
{{- if $e.autoscaling.enabled -}}
{{- $scraped = append $scraped (printf "engines[%s].autoscaling.enabled" $e.name) -}}
{{- end -}}
{{- end -}}
{{- if $scraped -}}
{{- fail (printf "%s: Prometheus would scrape the engines' /metrics, but networkPolicy.enabled lets only the gateway reach them and networkPolicy.metricsFrom is empty: every scrape would fail, and the engine alerts, dashboard panels and KEDA would have no data. Name your Prometheus pods in networkPolicy.metricsFrom (docs/deploy.md, Monitoring)" (join ", " $scraped)) -}}
{{- end -}}
{{- end -}}

{{- /* The other objects' names are cut to 63 characters too: from a base name (release and
nameOverride) of 62 or more, the gateway's, Redis's, the trainer's and the engines' are all that
base name, and one object would overwrite another (the gateway's Service sent to Redis). */ -}}
{{- $gateway := include "llmaas.gateway.fullname" . -}}
{{- $owned := list (list "Deployment" $gateway "the gateway") (list "Service" $gateway "the gateway") (list "Secret" (include "llmaas.gateway.secretName" .) "the gateway") -}}
{{- range $e := (include "llmaas.engines" . | fromYaml).engines -}}
{{- $name := include "llmaas.engine.fullname" (dict "ctx" $ "engine" $e) -}}
{{- $owned = concat $owned (list (list "Deployment" $name (printf "engines[%s]" $e.name)) (list "Service" $name (printf "engines[%s]" $e.name))) -}}
{{- end -}}
{{- if $r.enabled -}}
{{- $owned = concat $owned (list (list "Service" (include "llmaas.redis.fullname" .) "Redis") (list "Service" (include "llmaas.redis.headlessName" .) "Redis")) -}}
{{- end -}}
{{- if or $r.enabled $r.external.password.value -}}
{{- $owned = append $owned (list "Secret" (include "llmaas.redis.secretName" .) "Redis") -}}
{{- end -}}
{{- if .Values.huggingFace.token.value -}}
{{- $owned = append $owned (list "Secret" (include "llmaas.huggingFace.secretName" .) "huggingFace.token") -}}
{{- end -}}
{{- if .Values.fineTuning.enabled -}}
{{- $owned = append $owned (list "Deployment" (include "llmaas.trainer.fullname" .) "the trainer") -}}
{{- end -}}
{{- $taken := dict -}}
{{- range $owned -}}
{{- $key := printf "%s/%s" (index . 0) (index . 1) -}}
{{- if hasKey $taken $key -}}
{{- fail (printf "%s and %s would both name their %s %q (object names are cut to 63 characters; the release name and nameOverride make a base name of %d): use a shorter release name or nameOverride, or a fullnameOverride" (get $taken $key) (index . 2) (index . 0) (index . 1) (len (include "llmaas.fullname" $))) -}}
{{- end -}}
{{- $_ := set $taken $key (index . 2) -}}
{{- end -}}

{{- end -}}

{{- /* A list of environment variables for the gateway's or the trainer's container, checked
against what the chart sets there and against the names the gateway reads: any other LLMAAS_*
name stops it at start ("not a setting", exit 2). Call with (dict "ctx" $ "where" "gateway.env"
"pod" "the gateway" "env" $list "managed" $nameToValue "derived" $nameToValue "sizes" "what the derived ones size"). */ -}}
{{- define "llmaas.validate.env" -}}
{{- $where := .where -}}
{{- $managed := .managed -}}
{{- $derived := .derived -}}
{{- $known := .ctx.Files.Get "files/environment.yaml" | fromYaml -}}
{{- $names := concat $known.settings $known.notSettings -}}
{{- range .env -}}
{{- $name := upper .name -}}
{{- /* A whole section as JSON would set the fields the chart sets too. */ -}}
{{- $covered := false -}}
{{- $under := "" -}}
{{- range $set := concat (keys $managed) (keys $derived) -}}
{{- if hasPrefix (printf "%s__" $name) $set }}{{ $covered = true }}{{ end -}}
{{- end -}}
{{- /* A key of a mapping the chart sets (LLMAAS_FINE_TUNING__BASE_MODELS__NAME) is its too. */ -}}
{{- range $set := keys $managed -}}
{{- if hasPrefix (printf "%s__" $set) $name }}{{ $under = $set }}{{ end -}}
{{- end -}}
{{- if $covered -}}
{{- fail (printf "%s: %s would replace a whole section of the config, fields the chart sets among them: set its fields one by one (%s__FIELD) or in gateway.config" $where .name .name) -}}
{{- else if hasKey $derived $name -}}
{{- fail (printf "%s: %s would override %s, from which the chart derives %s: set %s instead" $where .name (get $derived $name) $.sizes (get $derived $name)) -}}
{{- else if or (hasKey $managed $name) $under -}}
{{- fail (printf "%s: %s would override a setting the chart sets from %s: set that instead" $where .name (get $managed (default $name $under))) -}}
{{- else if and (hasPrefix "LLMAAS_" $name) (not (has $name $names)) -}}
{{- $guess := "" -}}
{{- range $names -}}
{{- $rest := trimPrefix (printf "%s_" .) $name -}}
{{- if and (ne $rest $name) (has (printf "%s__%s" . $rest) $names) }}{{ $guess = printf " (did you mean %s__%s?)" . $rest }}{{ end -}}
{{- end -}}
{{- fail (printf "%s: %s is not a setting%s: %s would refuse to start. A setting's variable is LLMAAS_ and its path in gateway.config in capitals, sections joined by __ (LLMAAS_UPSTREAM__MAX_CONNECTIONS for upstream.max_connections)" $where .name $guess $.pod) -}}
{{- end -}}
{{- end -}}
{{- end -}}
