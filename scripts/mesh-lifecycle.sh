#!/bin/bash
# mesh-lifecycle ready|watch
#
# The VM's side of its Auto Scaling group's two lifecycle hooks. Installed as
# /usr/local/sbin/mesh-lifecycle and run as root (the IMDS guard lets only root and consul reach the
# metadata service) by mesh-lifecycle-ready.service and mesh-lifecycle-watch.service.
#   ready  waits until the local agent reports the service AND its sidecar passing (or warning), then completes the
#          launching hook (CONTINUE): an instance refresh never counts a VM whose Envoy is not up.
#   watch  polls the target lifecycle state; on Terminated it takes the VM out of the mesh once
#          (maintenance, drain, leave, logout: see leave_mesh) and completes the terminating hook.
# Outside an Auto Scaling group (no autoscaling/ path in the metadata) both have nothing to do.
#
# Read from the units' EnvironmentFile, /etc/consul.d/lifecycle.env (nothing secret in it):
#   MESH_SERVICE, LAUNCH_HOOK, TERMINATE_HOOK, LIFECYCLE_GROUP (empty: the instance's
#   aws:autoscaling:groupName tag, which needs instance metadata tags enabled).
# Overridden by tests only: IMDS_ENDPOINT, AUTOSCALING_ENDPOINT, CONSUL_HTTP_ADDR, ENVOY_ADMIN,
# TOKEN_FILE, SYSTEMCTL, RUN_DIR and the LIFECYCLE_*_SECONDS timings.
#
# Never prints a token or a credential: the IMDS and Consul tokens and the role's keys reach curl
# through a config on its stdin (-K -), written by bash's builtin printf, so they are in no command
# line either (any local user can read /proc/PID/cmdline).
set -euo pipefail

imds="${IMDS_ENDPOINT:-http://169.254.169.254}"
consul="${CONSUL_HTTP_ADDR:-http://127.0.0.1:8500}"
envoy="${ENVOY_ADMIN:-http://127.0.0.1:19000}"
# Empty: the regional endpoint, https://autoscaling.<region>.amazonaws.com.
autoscaling="${AUTOSCALING_ENDPOINT:-}"
# The service token: its service identity grants service:write (and so read) on the service and its
# sidecar (components/acl.py; the file is root:envoy 0640, written by consul-login).
token_file="${TOKEN_FILE:-/run/consul-login/service.token}"
systemctl="${SYSTEMCTL:-systemctl}"
runuser="${RUNUSER:-runuser}"
# The AWS call goes out as the consul user: the traffic redirect lets its connections through
# (consul-redirect-traffic excludes its UID), where root's would go into Envoy's outbound listener,
# which with meshDestinationsOnly refuses every address outside the mesh.
aws_user="${LIFECYCLE_AWS_USER:-consul}"
run_dir="${RUN_DIR:-/run/mesh-lifecycle}"
retry="${LIFECYCLE_RETRY_SECONDS:-10}"
poll="${LIFECYCLE_POLL_SECONDS:-5}"
drain="${LIFECYCLE_DRAIN_SECONDS:-15}"
# Under the hooks' heartbeat timeouts (launch ~1800 s, terminate ~300 s), so that the script's own
# message, not the hook's default result, says why.
ready_deadline="${LIFECYCLE_READY_DEADLINE_SECONDS:-1500}"
leave_deadline="${LIFECYCLE_LEAVE_DEADLINE_SECONDS:-180}"
service="${MESH_SERVICE:-}"

say() { echo "mesh-lifecycle: $*"; }
die() {
  say "$*" >&2
  exit 1
}

for n in "${retry}" "${poll}" "${drain}" "${ready_deadline}" "${leave_deadline}"; do
  [[ "${n}" =~ ^[0-9]+$ ]] || die "LIFECYCLE_*_SECONDS: ${n} is not a number of seconds"
done
[[ "${service}" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "MESH_SERVICE is not a DNS label"
# botocore's autoscaling model: LifecycleHookName is AsciiStringMaxLen255, [A-Za-z0-9\-_\/]+.
for hook in "${LAUNCH_HOOK:-}" "${TERMINATE_HOOK:-}"; do
  [[ "${hook}" =~ ^[A-Za-z0-9_/-]{1,255}$ ]] || die "LAUNCH_HOOK/TERMINATE_HOOK: '${hook}' is not a hook name"
done

# imds PATH: the metadata answer on stdout (IMDSv2: a session token first). Fails with status 4 when
# the path does not exist (404), 1 on any other failure.
imds() {
  local token out
  token="$(curl -fsS --noproxy '*' --connect-timeout 2 --max-time 5 -X PUT \
    -H 'X-aws-ec2-metadata-token-ttl-seconds: 300' "${imds}/latest/api/token")" || return 1
  out="$(printf 'header = "X-aws-ec2-metadata-token: %s"\n' "${token}" |
    curl -sS --noproxy '*' --connect-timeout 2 --max-time 5 -K - -w '\n%{http_code}' "${imds}/latest/meta-data/$1")" ||
    return 1
  [[ "${out##*$'\n'}" != 404 ]] || return 4
  [[ "${out##*$'\n'}" == 200 ]] || { say "metadata $1: HTTP ${out##*$'\n'}" >&2; return 1; }
  printf '%s\n' "${out%$'\n'*}"
}

# target_state: sets state to autoscaling/target-lifecycle-state (InService, Terminated, ...; EC2
# User Guide, "Instance metadata categories"), or to "" outside an Auto Scaling group. The item is
# written as the instance moves towards a steady state and answers 404 before that (EC2 Auto Scaling
# user guide, "Retrieve the target lifecycle state through instance metadata"): with LIFECYCLE_GROUP
# set the VM is a group's, so a 404 is "not yet", to be asked again, never "no group".
target_state() {
  local got rc=0
  got="$(imds autoscaling/target-lifecycle-state)" || rc=$?
  [[ "${rc}" == 0 || ("${rc}" == 4 && -z "${LIFECYCLE_GROUP:-}") ]] || return 1
  state="${got}"
}

# identity: the instance id, region and group name, read once (every answer checked for its form).
identity() {
  [[ -n "${group:-}" ]] && return 0
  instance_id="$(imds instance-id)" && region="$(imds placement/region)" || return 1
  [[ "${instance_id}" =~ ^i-[0-9a-f]{8,17}$ && "${region}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$ ]] ||
    die "the metadata service answered no instance id or region"
  group="${LIFECYCLE_GROUP:-}"
  [[ -n "${group}" ]] || group="$(imds tags/instance/aws:autoscaling:groupName)" || {
    say "no LIFECYCLE_GROUP, and no aws:autoscaling:groupName tag in the metadata" >&2
    return 1
  }
}

# consul_auth: curl's config line carrying the Consul token.
consul_auth() { printf 'header = "X-Consul-Token: %s"\n' "$(cat "${token_file}" 2>/dev/null)"; }

# passing NAME: the local agent reports no check of NAME on this node critical: 200 passing or 429
# warning, where 503 is critical, 404 not registered (yet) and 403 a token without service:read
# (hashicorp/consul agent/agent_endpoint.go AgentHealthServiceByName, agentHealthService). Warning
# counts: the demo app's upstream probe warns while an upstream is down (agent/checks/check.go: 429),
# Consul still routes to a warning instance, and a new VM must not wait on its callees to serve.
passing() {
  local code
  code="$(consul_auth | curl -sS --noproxy '*' --connect-timeout 2 --max-time 10 -K - -o /dev/null \
    -w '%{http_code}' "${consul}/v1/agent/health/service/name/$1")" || code="no answer"
  [[ "${code}" == 200 || "${code}" == 429 ]] && return 0
  say "$1 is not passing in Consul yet (${code})"
  return 1
}

# complete HOOK: CompleteLifecycleAction (Auto Scaling Query API, POST form) with CONTINUE for this
# instance, signed by curl (SigV4, service autoscaling) with the instance role's credentials; the
# session token goes in x-amz-security-token, which curl signs like every header it is given.
# An action completed before (a reboot, or a timed-out hook) answers ValidationError "No active
# Lifecycle Action found with instance ID ...": done, not a failure.
complete() {
  local role creds config out code
  role="$(imds iam/security-credentials/)" && creds="$(imds "iam/security-credentials/${role%%$'\n'*}")" ||
    return 1
  config="$(printf '%s' "${creds}" | python3 -c '
import json, sys
c = json.load(sys.stdin)
if c["Code"] != "Success":
    sys.exit("mesh-lifecycle: no usable instance role credentials: " + c["Code"])
print("user = \"%s:%s\"" % (c["AccessKeyId"], c["SecretAccessKey"]))
print("header = \"x-amz-security-token: %s\"" % c["Token"])
')" || return 1
  out="$(printf '%s\n' "${config}" | "${runuser}" -u "${aws_user}" -- curl -sS --noproxy '*' --connect-timeout 5 --max-time 20 -K - \
    --aws-sigv4 "aws:amz:${region}:autoscaling" -w '\n%{http_code}' "${autoscaling:-https://autoscaling.${region}.amazonaws.com}/" \
    --data-urlencode Action=CompleteLifecycleAction --data-urlencode Version=2011-01-01 \
    --data-urlencode "AutoScalingGroupName=${group}" --data-urlencode "LifecycleHookName=$1" \
    --data-urlencode LifecycleActionResult=CONTINUE --data-urlencode "InstanceId=${instance_id}")" || return 1
  code="${out##*$'\n'}"
  if [[ "${code}" == 200 ]]; then
    say "completed the lifecycle action of ${1} (CONTINUE) for ${instance_id} in ${group}"
  elif [[ "${code}" == 400 && "${out}" == *"<Code>ValidationError</Code>"*"No active Lifecycle Action found"* ]]; then
    say "no active lifecycle action of ${1} for ${instance_id}: completed before"
  else
    [[ "${out}" =~ \<Code\>([^<]*)\</Code\>.*\<Message\>([^<]*)\< ]] &&
      code="${code} ${BASH_REMATCH[1]}: ${BASH_REMATCH[2]}"
    say "CompleteLifecycleAction ${1} failed: HTTP ${code}" >&2
    return 1
  fi
}

ready_once() {
  target_state || return 1
  # Empty: not in a group. Neither that nor a terminating instance has a launch hook to complete.
  [[ "${state}" == InService ]] || { say "target lifecycle state '${state}': no launch hook to complete"; return 0; }
  passing "${service}" && passing "${service}-sidecar-proxy" && identity && complete "${LAUNCH_HOOK}"
}

# leave_mesh: out of the mesh, in this order:
# 1. Maintenance mode on the service (PUT /v1/agent/service/maintenance/ID, service:write, which the
#    service token's identity has: agent/agent_endpoint.go AgentServiceMaintenance). Its critical
#    check makes the sidecar's alias check critical too (the "Connect Sidecar Aliasing" check every
#    sidecar_service gets, agent/sidecar_service.go; agent/checks/alias.go processChecks), and every
#    other sidecar drops this endpoint from its load assignment, while the agent keeps running: the
#    application can still resolve *.virtual.consul and reach its upstreams to finish its work.
# 2. Drain Envoy's inbound listeners only (POST /drain_listeners?inboundonly&graceful; Envoy docs,
#    operations/admin and "Draining"): Envoy starts asking HTTP clients to close their connections
#    (Connection: close, GOAWAY), spread over its drain time (600 s by default), so step 1 is what
#    moves the traffic; the outbound listeners stay, for the application's own calls (Consul's
#    public listener is the INBOUND one, agent/xds/listeners.go; consul-dataplane and Istio drain
#    inbound only for the same reason).
# 3. A bounded wait (LIFECYCLE_DRAIN_SECONDS) for the requests in flight.
# 4. Leave Consul: stopping the agent sends SIGTERM, and with leave_on_terminate it leaves
#    gracefully (hashicorp/consul command/agent/agent.go: graceful on SIGTERM when LeaveOnTerm,
#    agent.Leave() within 15 s), no token needed (`consul leave` needs agent:write on the node,
#    agent/agent_endpoint.go AgentLeave, which no token of this VM has). The leader deregisters the
#    node at once (agent/consul/leader.go handleLeftMember): no dead node left for the 72 h reap.
# 5. Log out: consul-login.service's ExecStop destroys the tokens (after the agent, as at shutdown).
leave_mesh() {
  consul_auth | curl -fsS --noproxy '*' --connect-timeout 2 --max-time 10 -K - -X PUT -o /dev/null \
    "${consul}/v1/agent/service/maintenance/${service}?enable=true&reason=terminating" ||
    say "could not put ${service} in maintenance" >&2
  curl -fsS --noproxy '*' --connect-timeout 2 --max-time 5 -X POST -o /dev/null \
    "${envoy}/drain_listeners?inboundonly&graceful" || say "Envoy's drain failed" >&2
  sleep "${drain}"
  timeout 120 "${systemctl}" stop consul.service || say "stopping consul.service failed" >&2
  timeout 200 "${systemctl}" stop consul-login.service || say "the logout failed" >&2
  : >"${run_dir}/left"
}

watch() {
  state=unknown
  until target_state && [[ "${state}" == Terminated ]]; do
    [[ -n "${state}" ]] || { say "not in an Auto Scaling group: nothing to watch"; return 0; }
    sleep "${poll}"
  done
  mkdir -p "${run_dir}"
  if [[ -e "${run_dir}/left" ]]; then
    say "target lifecycle state Terminated: out of the mesh already"
  else
    say "target lifecycle state Terminated: leaving the mesh"
    leave_mesh
  fi
  local deadline=$((SECONDS + leave_deadline))
  until identity && complete "${TERMINATE_HOOK}"; do
    ((SECONDS < deadline)) || die "could not complete ${TERMINATE_HOOK} in ${leave_deadline}s"
    sleep "${retry}"
  done
}

case "${1:-}" in
  ready)
    deadline=$((SECONDS + ready_deadline))
    until ready_once; do
      ((SECONDS < deadline)) || die "not ready within ${ready_deadline}s: ${LAUNCH_HOOK} left to its default result"
      sleep "${retry}"
    done
    ;;
  watch) watch ;;
  *) die "usage: mesh-lifecycle ready|watch" ;;
esac
