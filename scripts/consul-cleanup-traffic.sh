#!/bin/bash
# consul-cleanup-traffic
#
# Removes exactly what `consul connect redirect-traffic` adds to the nat table: the jumps from
# PREROUTING and OUTPUT into Consul's chains, then those chains. Every other nat rule (a container
# runtime's, say) stays: this never flushes a built-in chain or the whole table. Missing rules and
# chains are not errors, so it can run any number of times. Installed as
# /usr/local/sbin/consul-cleanup-traffic; run as root by envoy@SERVICE.service (ExecStopPost=+) and
# by consul-redirect-traffic before it redirects.
set -euo pipefail

iptables="${IPTABLES:-iptables}"
chains=(CONSUL_PROXY_INBOUND CONSUL_PROXY_IN_REDIRECT CONSUL_PROXY_OUTPUT CONSUL_PROXY_REDIRECT CONSUL_DNS_REDIRECT)
jump_pattern="-j ($(IFS='|' && echo "${chains[*]}"))( |$)"

# Jumps are found by listing, so every form Consul installs (TCP, DNS over UDP and TCP, with or
# without a destination) goes, whatever its match options, and duplicates go one by one.
for builtin in PREROUTING OUTPUT; do
  mapfile -t jumps < <("${iptables}" -t nat -S "${builtin}" | grep -E -e "${jump_pattern}" || true)
  for jump in "${jumps[@]}"; do
    read -r -a rule <<<"${jump}"
    rule[0]="-D"
    "${iptables}" -t nat "${rule[@]}"
  done
done

# Flush all before deleting any: CONSUL_PROXY_INBOUND jumps to CONSUL_PROXY_IN_REDIRECT, and a
# chain that is still referenced cannot be deleted.
for chain in "${chains[@]}"; do
  if "${iptables}" -t nat -S "${chain}" >/dev/null 2>&1; then
    "${iptables}" -t nat -F "${chain}"
  fi
done
for chain in "${chains[@]}"; do
  if "${iptables}" -t nat -S "${chain}" >/dev/null 2>&1; then
    "${iptables}" -t nat -X "${chain}"
  fi
done

# Newer Consul versions keep these rules in an nftables table of their own instead.
if command -v nft >/dev/null 2>&1 && nft list table inet consul_tproxy >/dev/null 2>&1; then
  nft delete table inet consul_tproxy
fi
