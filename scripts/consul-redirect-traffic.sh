#!/bin/bash
# consul-redirect-traffic SERVICE
#
# Forces SERVICE's inbound and outbound TCP through its Envoy sidecar with
# `consul connect redirect-traffic`. Installed as /usr/local/sbin/consul-redirect-traffic and run as
# root by envoy@SERVICE.service (ExecStartPre=+).
#
# Safe to run again at any time: it removes Consul's rules first, because a crash (no ExecStopPost)
# can leave them behind, `iptables -N` fails on an existing chain, and rules must never stack.
#
# Read from the unit's EnvironmentFile (lists are space-separated):
#   CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN      how the consul CLI reaches the local agent
#   REDIRECT_EXCLUDE_INBOUND_PORTS           inbound ports left alone (22 always is)
#   REDIRECT_EXCLUDE_OUTBOUND_PORTS          outbound ports left alone
#   REDIRECT_EXCLUDE_OUTBOUND_CIDRS          destinations left alone (e.g. 169.254.169.254/32)
#   REDIRECT_EXCLUDE_UIDS                    users whose traffic is left alone (consul's always is)
#   REDIRECT_ATTEMPTS, REDIRECT_RETRY_SECONDS how long to wait for the agent to know the sidecar
#   PROXY_USER, AGENT_USER                   users Envoy and the agent run as (envoy, consul)
# Read by tests only: IPTABLES (passed on to the cleanup; Consul itself always runs plain `iptables`,
# so production keeps the default) and CONSUL_TRAFFIC_LOCK (the lock file).
set -euo pipefail

service="${1:?usage: consul-redirect-traffic SERVICE}"
consul="${CONSUL_BIN:-consul}"
cleanup="${CONSUL_CLEANUP_TRAFFIC:-/usr/local/sbin/consul-cleanup-traffic}"
attempts="${REDIRECT_ATTEMPTS:-60}"
retry_seconds="${REDIRECT_RETRY_SECONDS:-2}"
lock="${CONSUL_TRAFFIC_LOCK:-/run/consul-redirect-traffic.lock}"

# One redirect or cleanup at a time, for the whole run: two at once (a restart racing a stop, say)
# interleave their iptables commands and leave half a rule set behind while both report success.
# The lock is held on fd 9, which the cleanup inherits and locks again without waiting; the consul CLI
# gets it closed, so nothing it leaves running can keep the lock.
exec 9>>"${lock}"
if ! flock -n 9; then
  echo "consul-redirect-traffic: waiting for another redirect or cleanup to finish" >&2
  flock 9
fi

args=("-proxy-id=${service}-sidecar-proxy" "-proxy-uid=$(id -u "${PROXY_USER:-envoy}")")
# The agent's own gossip and RPC must never loop through Envoy.
args+=("-exclude-uid=$(id -u "${AGENT_USER:-consul}")")
# SSH and the agent's Serf LAN port survive the redirect, whatever else is configured. Servers and
# peers send memberlist push/pull syncs and TCP fallback probes to 8301; sent into Envoy's public
# listener instead, they are dropped and the node is soon marked failed. (UDP is never redirected.)
args+=("-exclude-inbound-port=22" "-exclude-inbound-port=8301")

read -r -a ports <<<"${REDIRECT_EXCLUDE_INBOUND_PORTS:-}"
for port in "${ports[@]}"; do args+=("-exclude-inbound-port=${port}"); done
read -r -a ports <<<"${REDIRECT_EXCLUDE_OUTBOUND_PORTS:-}"
for port in "${ports[@]}"; do args+=("-exclude-outbound-port=${port}"); done
read -r -a cidrs <<<"${REDIRECT_EXCLUDE_OUTBOUND_CIDRS:-}"
for cidr in "${cidrs[@]}"; do args+=("-exclude-outbound-cidr=${cidr}"); done
read -r -a uids <<<"${REDIRECT_EXCLUDE_UIDS:-}"
for uid in "${uids[@]}"; do args+=("-exclude-uid=${uid}"); done

"${cleanup}"
attempt=1
# The agent registers the sidecar from its config dir shortly after it starts; until then
# redirect-traffic cannot look up the proxy's listener ports and fails. It fails for other reasons
# too (iptables rejecting an argument, a token without agent:read), so its error is kept for the
# final message. fd 3 passes its stdout through while $(...) captures its stderr.
exec 3>&1
until consul_stderr="$("${consul}" connect redirect-traffic "${args[@]}" 2>&1 >&3 9>&-)"; do
  echo "consul-redirect-traffic: attempt ${attempt}/${attempts} failed: ${consul_stderr}" >&2
  # A failed attempt may have created some chains: remove them before the next one.
  "${cleanup}"
  if ((attempt >= attempts)); then
    echo "consul-redirect-traffic: no redirect for ${service} after ${attempts} attempts" \
      "(is ${service}-sidecar-proxy registered with the local agent?); last error: ${consul_stderr}" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep "${retry_seconds}"
done
# The warnings of the run that succeeded belong in the journal too.
if [[ -n "${consul_stderr}" ]]; then echo "${consul_stderr}" >&2; fi
echo "consul-redirect-traffic: traffic of ${service} now goes through its Envoy sidecar"
