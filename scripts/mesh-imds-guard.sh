#!/bin/bash
# mesh-imds-guard [USER...]
#
# Keeps every local user but root and USER (default: consul) away from the instance metadata service.
# IMDS hands the instance role's credentials to any process that asks, and with them anyone can log in
# to Consul as this VM: `PUT /v1/acl/login` needs no token, and every agent forwards it (hashicorp/consul
# agent/acl_endpoint.go ACLLogin). consul-login runs as root; the agent (user consul) needs IMDS for
# cloud auto-join (go-discover's aws provider). The application and Envoy need it for nothing.
#
# An OUTPUT rule in the filter table jumps to the chain MESH_IMDS_GUARD, which returns for the allowed
# UIDs and rejects the rest (a refused connection, at once). Locally generated packets pass nat OUTPUT
# before filter OUTPUT, so a connection the traffic redirect sends to Envoy is judged when Envoy (user
# envoy) dials the metadata service, and one the redirect leaves alone (it excludes 169.254.169.254/32)
# when the application dials it. The chain is written in one iptables-restore transaction (a chain
# declared with --noflush is emptied and refilled at once: no moment without the REJECT), and the jump
# is added once: running it again changes nothing. Installed as /usr/local/sbin/mesh-imds-guard and
# run as root by mesh-imds-guard.service before the application, Envoy and the login start.
# Overridden by tests only: IPTABLES.
set -euo pipefail

iptables="${IPTABLES:-iptables}"
chain=MESH_IMDS_GUARD
imds=169.254.169.254/32

die() {
  echo "mesh-imds-guard: $*" >&2
  exit 1
}

uids=(0)
for user in "${@:-consul}"; do
  uid="$(id -u -- "${user}" 2>/dev/null)" || die "no such user: ${user}"
  uids+=("${uid}")
done

rules="*filter
:${chain} - [0:0]"
for uid in "${uids[@]}"; do
  rules+="
-A ${chain} -m owner --uid-owner ${uid} -j RETURN"
done
rules+="
-A ${chain} -j REJECT
COMMIT"
"${iptables}-restore" -w --noflush <<<"${rules}" || die "could not write the ${chain} chain"

if ! "${iptables}" -w -C OUTPUT -d "${imds}" -j "${chain}" 2>/dev/null; then
  "${iptables}" -w -I OUTPUT 1 -d "${imds}" -j "${chain}" || die "could not add the OUTPUT jump to ${chain}"
fi
echo "mesh-imds-guard: the metadata service answers root and UIDs ${uids[*]:1} only"
