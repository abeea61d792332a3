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
set -euo pipefail

service="${1:?usage: consul-redirect-traffic SERVICE}"
consul="${CONSUL_BIN:-consul}"
cleanup="${CONSUL_CLEANUP_TRAFFIC:-/usr/local/sbin/consul-cleanup-traffic}"
attempts="${REDIRECT_ATTEMPTS:-60}"
retry_seconds="${REDIRECT_RETRY_SECONDS:-2}"

args=("-proxy-id=${service}-sidecar-proxy" "-proxy-uid=$(id -u "${PROXY_USER:-envoy}")")
# The agent's own gossip and RPC must never loop through Envoy.
args+=("-exclude-uid=$(id -u "${AGENT_USER:-consul}")")
# SSH survives the redirect, whatever else is configured.
args+=("-exclude-inbound-port=22")

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
# redirect-traffic cannot look up the proxy's listener ports and fails.
until "${consul}" connect redirect-traffic "${args[@]}"; do
  # A failed attempt may have created some chains: remove them before the next one.
  "${cleanup}"
  if ((attempt >= attempts)); then
    echo "consul-redirect-traffic: no redirect for ${service} after ${attempts} attempts;" \
      "is ${service}-sidecar-proxy registered with the local agent?" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep "${retry_seconds}"
done
echo "consul-redirect-traffic: traffic of ${service} now goes through its Envoy sidecar"
