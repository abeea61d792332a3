#!/bin/bash
# consul-cleanup-traffic
#
# Removes exactly what `consul connect redirect-traffic` adds to the nat table: the jumps from
# PREROUTING and OUTPUT into Consul's chains, then those chains. Every other nat rule (a container
# runtime's, say) stays: this never flushes a built-in chain or the whole table. Missing rules and
# chains are not errors, so it can run any number of times. Installed as
# /usr/local/sbin/consul-cleanup-traffic; run as root by envoy@SERVICE.service (ExecStopPost=+) and
# by consul-redirect-traffic before it redirects.
#
#   IPTABLES             iptables binary (default iptables). It must be the backend (legacy or nft)
#                        Consul used, and Consul runs plain `iptables`: change it only in tests.
#   CONSUL_TRAFFIC_LOCK  lock file shared with consul-redirect-traffic
set -euo pipefail

iptables="${IPTABLES:-iptables}"
# iptables-restore, iptables-legacy-restore or iptables-nft-restore: the same backend as ${iptables}.
iptables_restore="${iptables}-restore"
lock="${CONSUL_TRAFFIC_LOCK:-/run/consul-redirect-traffic.lock}"
chains=(CONSUL_PROXY_INBOUND CONSUL_PROXY_IN_REDIRECT CONSUL_PROXY_OUTPUT CONSUL_PROXY_REDIRECT CONSUL_DNS_REDIRECT)

# One cleanup or redirect at a time: interleaved, they leave half a rule set behind. The redirect runs
# this while it holds the lock and passes the locked file on as fd 9: flock on that same open file
# returns at once, where opening the file anew would wait for the redirect, which waits for us.
if ! [[ /proc/self/fd/9 -ef "${lock}" ]]; then
  exec 9>>"${lock}"
fi
if ! flock -n 9; then
  echo "consul-cleanup-traffic: waiting for another redirect or cleanup to finish" >&2
  flock 9
fi

# Everything is found in one listing of the nat table, so every jump form Consul installs (TCP, DNS
# over UDP and TCP, with or without a destination or a comment) goes, duplicates too.
# A rule jumps into a Consul chain when its `-S` line ENDS with `-j CHAIN` (or `-g CHAIN`, which
# would keep the chain from being deleted just the same): iptables prints the target last, a jump to
# a chain has no target options, and a quoted string always ends with `"`, so neither a comment that
# names a chain nor a look-alike chain (CONSUL_PROXY_OUTPUT2) matches.
# The work is done by iptables-restore, not by `iptables -D` with the line split on whitespace (a
# quoted comment falls apart into a broken command): restore reads iptables' own quoting back. Rules
# go by spec, never by rule number, which goes stale when another program (Docker, kube-proxy)
# inserts a rule meanwhile: a spec can only ever delete a rule that equals a jump into Consul's chains.
# And it is one transaction: either all of Consul's rules go, or nothing changes and this fails.
# Chains are flushed before any is deleted: CONSUL_PROXY_INBOUND jumps to CONSUL_PROXY_IN_REDIRECT,
# and a chain that is still referenced cannot be deleted. Absent chains are left out.
consul_chain="($(IFS='|' && echo "${chains[*]}"))"
nat="$("${iptables}" -w -t nat -S)"
mapfile -t jumps < <(grep -E -e "^-A (PREROUTING|OUTPUT) (.* )?-[jg] ${consul_chain}\$" <<<"${nat}" || true)
mapfile -t present < <(grep -E -e "^-N ${consul_chain}\$" <<<"${nat}" || true)
commands=()
for jump in "${jumps[@]}"; do commands+=("-D${jump#-A}"); done
for chain in "${present[@]}"; do commands+=("-F${chain#-N}"); done
for chain in "${present[@]}"; do commands+=("-X${chain#-N}"); done
if ((${#commands[@]} > 0)); then
  printf '%s\n' '*nat' "${commands[@]}" COMMIT | "${iptables_restore}" -w --noflush
fi

# Newer Consul versions keep these rules in an nftables table of their own instead.
if command -v nft >/dev/null 2>&1 && nft list table inet consul_tproxy >/dev/null 2>&1; then
  nft delete table inet consul_tproxy
fi
