#!/bin/bash
# consul-login [logout]
#
# Gives a mesh VM its Consul identity at boot, so that its user data holds no secret: the VM logs in
# with its EC2 instance role through Consul's aws-iam auth methods (one each for the agent, service
# and DNS tokens), reads the gossip key with the agent token, and writes the agent's node name,
# tokens and gossip key into its config dir. Installed as /usr/local/sbin/consul-login and run as
# root by consul-login.service, which consul.service requires: the agent never starts without them.
# `consul-login logout` (the unit's ExecStop, after the agent has stopped) destroys the tokens.
#
# Read from the unit's EnvironmentFile, /etc/consul.d/login.env (no secret in it; lists are
# space-separated):
#   MESH_SERVICE                             the service name; the node is named SERVICE-INSTANCE_ID
#   LOGIN_METHODS                            agent=METHOD service=METHOD dns=METHOD
#   LOGIN_ROLES                              agent=ROLE service=ROLE dns=ROLE: the role each token must
#                                            carry (read back after the login, see login_checked)
#   LOGIN_SERVER_ID                          the methods' ServerIDHeaderValue (anti-replay)
#   LOGIN_HTTP_ADDRS                         https://host:port of the Consul servers, tried in turn
#   CONSUL_CACERT, CONSUL_TLS_SERVER_NAME    how the consul CLI verifies the servers' certificate
#   GOSSIP_KEY_PATH                          KV key holding the gossip key; empty: none
#   LOGIN_DEADLINE_SECONDS, LOGIN_RETRY_SECONDS  how long to keep trying, and the pause between tries
# Overridden by tests only: IMDS_ENDPOINT, CONSUL_BIN, CONSUL_CONFIG_DIR, TOKEN_DIR, CONSUL_GROUP,
# ENVOY_GROUP, LOCK_FILE.
#
# The AWS region of the login comes from the metadata service (placement/region): `consul login
# -type=aws-iam` stops with "AWS region not found" without -aws-region, AWS_REGION or a shared config
# (hashicorp/consul command/login/aws.go createAWSBearerToken; aws-sdk-go v1 never asks the instance
# metadata for it), and the instance's own region is the one its STS request is signed for.
#
# A boot after a crash (no ExecStop) finds the previous boot's tokens in tokens.hcl, which lives on
# disk: they are logged out once the new ones are in place, so no live token is left behind.
# Two runs never overlap: the login and the logout hold LOCK_FILE.
#
# Never prints a token, the gossip key or the IMDS session token.
set -euo pipefail

consul="${CONSUL_BIN:-consul}"
imds="${IMDS_ENDPOINT:-http://169.254.169.254}"
config_dir="${CONSUL_CONFIG_DIR:-/etc/consul.d}"
token_dir="${TOKEN_DIR:-/run/consul-login}"
consul_group="${CONSUL_GROUP:-consul}"
envoy_group="${ENVOY_GROUP:-envoy}"
deadline_seconds="${LOGIN_DEADLINE_SECONDS:-900}"
retry_seconds="${LOGIN_RETRY_SECONDS:-5}"
# One consul call may not hang the whole boot: the servers can accept the connection and stall.
call_timeout="${LOGIN_CALL_TIMEOUT_SECONDS:-30}"
token_kinds=(agent service dns)
lock_file="${LOCK_FILE:-/run/lock/consul-login.lock}"

die() {
  echo "consul-login: $*" >&2
  exit 1
}

[[ "${deadline_seconds}" =~ ^[0-9]+$ ]] || die "LOGIN_DEADLINE_SECONDS is not a number of seconds"
[[ "${retry_seconds}" =~ ^[0-9]+$ ]] || die "LOGIN_RETRY_SECONDS is not a number of seconds"
[[ "${call_timeout}" =~ ^[1-9][0-9]*$ ]] || die "LOGIN_CALL_TIMEOUT_SECONDS is not a number of seconds"
read -r -a addrs <<<"${LOGIN_HTTP_ADDRS:-}"
((${#addrs[@]} > 0)) || die "LOGIN_HTTP_ADDRS names no Consul server"
# Host names, IPv4 and [IPv6] with a port; ']' first in a bracket expression is a literal.
https_addr='^https://[][A-Za-z0-9.:-]+$'
for addr in "${addrs[@]}"; do
  # The login sends the instance's signed AWS requests and gets tokens back: never in clear text.
  [[ "${addr}" =~ ${https_addr} ]] || die "LOGIN_HTTP_ADDRS: ${addr} is not https://host:port"
done

# The consul CLI reads these from the environment; -http-addr is passed on every call, and a token
# left in the environment must not be sent along with a login or a logout.
if [[ -n "${CONSUL_CACERT:-}" ]]; then export CONSUL_CACERT; fi
if [[ -n "${CONSUL_TLS_SERVER_NAME:-}" ]]; then export CONSUL_TLS_SERVER_NAME; fi
unset CONSUL_HTTP_ADDR CONSUL_HTTP_TOKEN CONSUL_HTTP_TOKEN_FILE

# Index into addrs of the server to try next: the one that last answered, so that the next call
# does not start again with a server that is down.
addr_index=0

# The last non-empty line of a file: consul's error, without its usage text or blank lines.
last_line() { awk 'NF { line = $0 } END { print line }' "$1"; }

# consul_call ADDR SUBCOMMAND ARGS...: one call, stdout to ${work}/out, the error to ${call_error}.
# -http-addr goes right after the subcommand, because Go's flag parsing stops at the first
# positional argument (the key of `kv get`).
consul_call() {
  local addr="$1" rc=0 sub
  read -r -a sub <<<"$2"
  shift 2
  timeout --kill-after=5 "${call_timeout}" "${consul}" "${sub[@]}" "-http-addr=${addr}" "$@" \
    >"${work}/out" 2>"${work}/err" </dev/null || rc=$?
  ((rc == 0)) && return 0
  call_error="$(last_line "${work}/err")"
  if ((rc == 124)); then
    call_error="no answer within ${call_timeout}s"
  elif [[ -z "${call_error}" ]]; then
    call_error="consul exited with status ${rc} and no message"
  fi
  return 1
}

# retry WHAT COMMAND ARGS...: run COMMAND ADDR ARGS... (consul_call, or a function that makes several
# calls to one server) until it succeeds, moving to the next server after each failure, until the
# deadline. Servers that are still booting, a binding rule or role not yet written or an instance
# profile not yet usable all heal on their own, so every failure is retried.
retry() {
  local what="$1" command="$2" attempt=1 addr
  shift 2
  while true; do
    addr="${addrs[addr_index]}"
    "${command}" "${addr}" "$@" && return 0
    if ((SECONDS >= deadline)); then
      die "${what} failed after ${attempt} attempts in ${SECONDS}s: the Consul servers (${addrs[*]})" \
        "are not reachable or refuse the login; last error: ${call_error}"
    fi
    echo "consul-login: ${what} at ${addr} failed (attempt ${attempt}): ${call_error};" \
      "retrying in ${retry_seconds}s" >&2
    addr_index=$(((addr_index + 1) % ${#addrs[@]}))
    attempt=$((attempt + 1))
    sleep "${retry_seconds}"
  done
}

# login_checked ADDR KIND SINK: log in to KIND's method, then read the token back and check that it
# carries KIND's role (and the service token its service identity). A binding rule whose role does
# not exist yet is skipped without a word and the login still succeeds (hashicorp/consul
# agent/consul/auth/binder.go), and a token's links are fixed when it is made: such a token would
# lack rights for good, so it is logged out and the login is tried again.
login_checked() {
  local addr="$1" kind="$2" sink="$3" missing message
  rm -f "${sink}"
  consul_call "${addr}" login -type=aws-iam "-method=${methods[${kind}]}" -aws-auto-bearer-token \
    -aws-include-entity "-aws-region=${region}" "-aws-server-id-header-value=${LOGIN_SERVER_ID}" \
    "-token-sink-file=${sink}" || return 1
  # The SecretID goes into HCL and files: a sink holding anything else is a broken answer.
  [[ "$(cat "${sink}" 2>/dev/null)" =~ ${uuid_re} ]] || {
    call_error="the login succeeded but left no token SecretID in its sink file"
    rm -f "${sink}"
    return 1
  }
  consul_call "${addr}" "acl token read" -self -format=json "-token-file=${sink}" || return 1
  missing="$(links_missing "${kind}" <"${work}/out")" || missing="an answer that is not a token"
  [[ -z "${missing}" ]] && return 0
  message="the ${kind} token lacks ${missing} (a binding rule names it but it does not exist yet?)"
  consul_call "${addr}" logout "-token-file=${sink}" ||
    echo "consul-login: could not log out the incomplete ${kind} token: ${call_error}" >&2
  rm -f "${sink}"
  call_error="${message}"
  return 1
}

# links_missing KIND < TOKEN_JSON: prints what the token read back lacks of what KIND must carry
# (`consul acl token read -format=json`: api.ACLToken's Roles[].Name, ServiceIdentities[].ServiceName);
# fails on anything that is not a token. The SecretID in the answer is never printed.
links_missing() {
  python3 -c '
import json, sys
kind, role, service = sys.argv[1:]
token = json.load(sys.stdin)
roles = {r.get("Name") for r in token.get("Roles") or []}
services = {s.get("ServiceName") for s in token.get("ServiceIdentities") or []}
missing = [] if role in roles else ["role " + role]
if kind == "service" and service not in services:
    missing.append("the service identity " + service)
print(" and ".join(missing))
' "$1" "${roles[$1]}" "${service}"
}

# logout_file FILE WHAT: destroys the token in FILE, best effort, one server after the other: the
# agent is already stopped, and a token that cannot be destroyed now must not stop the others.
logout_file() {
  local file="$1" what="$2" addr
  for addr in "${addrs[@]}"; do
    consul_call "${addr}" logout "-token-file=${file}" && return 0
  done
  echo "consul-login: could not log out the ${what} token (${addrs[*]}): ${call_error}" >&2
  return 1
}

logout() {
  local file kept=""
  shopt -s nullglob
  # At shutdown each call gets less time: the unit's stop must end within TimeoutStopSec.
  call_timeout=$((call_timeout < 10 ? call_timeout : 10))
  for file in "${token_dir}"/*.token; do
    logout_file "${file}" "$(basename "${file}" .token)" || kept=yes
  done
  rm -f "${token_dir}"/*.token
  if [[ -n "${kept}" ]]; then
    # tokens.hcl stays: the next boot's login destroys what it lists once it has new tokens.
    echo "consul-login: logged out, but kept ${config_dir}/tokens.hcl for the next boot to retry"
  else
    # Without its tokens.hcl, an agent started by hand cannot use tokens that no longer exist.
    rm -f "${config_dir}/tokens.hcl"
    echo "consul-login: logged out"
  fi
}

# One run at a time: a login and a logout (or two logins) that overlapped could destroy each other's
# tokens or interleave their renames. Waiting is bounded like everything else here.
mkdir -p "${lock_file%/*}"
exec 9>>"${lock_file}"
flock -w "${deadline_seconds}" 9 || die "another consul-login held ${lock_file} for ${deadline_seconds}s"

# The work dir holds the fresh tokens until they are all there. It sits next to TOKEN_DIR (tmpfs
# under /run), so that tokens never touch a disk, and is private (mktemp -d makes it 0700).
mkdir -p "${token_dir%/*}"
work="$(mktemp -d "${token_dir%/*}/.consul-login.XXXXXX")"
staged=()
committed=""
# Whatever way this ends, no token copy and no half-written file stays behind.
# A run that fails after some logins destroys the tokens it made: they are in no file any later run
# reads, and tokens from a login never expire (the methods set no MaxTokenTTL).
cleanup() {
  local status=$? file
  if ((status != 0)) && [[ -z "${committed}" ]]; then
    for file in "${work}"/*.token; do
      if [[ -s "${file}" ]]; then logout_file "${file}" "unused $(basename "${file}" .token)"; fi
    done
  fi
  rm -rf "${work}"
  if ((${#staged[@]} > 0)); then rm -f "${staged[@]}"; fi
}
trap cleanup EXIT

if [[ "${1:-}" == "logout" ]]; then
  logout
  exit 0
fi
[[ -z "${1:-}" ]] || die "usage: consul-login [logout]"

service="${MESH_SERVICE:-}"
[[ "${service}" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]] || die "MESH_SERVICE is not a DNS label"
# read_pairs SETTING ARRAY: SETTING's KIND=VALUE pairs, exactly one per token kind, into ARRAY.
read_pairs() {
  local setting="$1" pair kind pairs
  local -n into="$2"
  read -r -a pairs <<<"${!setting:-}"
  for pair in "${pairs[@]}"; do
    kind="${pair%%=*}"
    [[ "${pair}" == *=?* && " ${token_kinds[*]} " == *" ${kind} "* && -z "${into[${kind}]:-}" ]] ||
      die "${setting}: ${pair} is not one of agent=, service=, dns= NAME (each once)"
    into["${kind}"]="${pair#*=}"
  done
  for kind in "${token_kinds[@]}"; do
    [[ -n "${into[${kind}]:-}" ]] || die "${setting} names nothing for ${kind}"
  done
}
declare -A methods=() roles=()
read_pairs LOGIN_METHODS methods
read_pairs LOGIN_ROLES roles
[[ -n "${LOGIN_SERVER_ID:-}" ]] || die "LOGIN_SERVER_ID is empty"

deadline=$((SECONDS + deadline_seconds))

# 1. The instance id and region, through IMDSv2. The metadata service can lag behind the network at
# boot. Every answer is checked for its exact form: the id becomes part of an HCL file, the region a
# command-line flag.
imds_get() {
  curl -fsS --noproxy '*' --connect-timeout 2 --max-time 5 -H "X-aws-ec2-metadata-token: ${imds_token}" \
    "${imds}/latest/meta-data/$1" 2>"${work}/err"
}
imds_attempt=1
while true; do
  if imds_token="$(curl -fsS --noproxy '*' --connect-timeout 2 --max-time 5 -X PUT \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "${imds}/latest/api/token" 2>"${work}/err")" &&
    instance_id="$(imds_get instance-id)" && region="$(imds_get placement/region)"; then
    break
  fi
  if ((SECONDS >= deadline)); then
    die "no instance id and region from the metadata service at ${imds} after ${imds_attempt} attempts" \
      "in ${SECONDS}s; last error: $(last_line "${work}/err")"
  fi
  echo "consul-login: metadata service at ${imds} failed (attempt ${imds_attempt}):" \
    "$(last_line "${work}/err"); retrying in ${retry_seconds}s" >&2
  imds_attempt=$((imds_attempt + 1))
  sleep "${retry_seconds}"
done
[[ "${instance_id}" =~ ^i-[0-9a-f]{8,17}$ ]] ||
  die "the metadata service at ${imds} answered something that is not an instance id; refusing it"
[[ "${region}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]{1,2}$ ]] ||
  die "the metadata service at ${imds} answered something that is not an AWS region; refusing it"
node="${service}-${instance_id}"

# The tokens a previous boot left in tokens.hcl (a crash skips ExecStop), destroyed once the new ones
# are in place. Only exact SecretIDs are taken from the file.
uuid_re='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
old_tokens=()
if [[ -s "${config_dir}/tokens.hcl" ]]; then
  while read -r old; do
    [[ "${old}" =~ ${uuid_re} ]] && old_tokens+=("${old}")
  done < <(sed -n 's/^ *[a-z_]* *= *"\([0-9a-f-]*\)" *$/\1/p' "${config_dir}/tokens.hcl")
fi

# 2. One login per token, each read back and checked.
declare -A tokens=()
for kind in "${token_kinds[@]}"; do
  sink="${work}/${kind}.token"
  retry "login to ${methods[${kind}]}" login_checked "${kind}" "${sink}"
  tokens["${kind}"]="$(<"${sink}")"
done

# 3. The gossip key, readable with the agent token only.
gossip_key=""
if [[ -n "${GOSSIP_KEY_PATH:-}" ]]; then
  retry "reading the gossip key ${GOSSIP_KEY_PATH}" consul_call "kv get" "-token-file=${work}/agent.token" \
    "${GOSSIP_KEY_PATH}"
  gossip_key="$(<"${work}/out")"
  # Consul wants base64 of a 16, 24 or 32-byte key; checking the exact form also makes the value
  # safe to write into HCL. The value itself is never printed.
  [[ "${gossip_key}" =~ ^([A-Za-z0-9+/]{22}==|[A-Za-z0-9+/]{32}|[A-Za-z0-9+/]{43}=)$ ]] ||
    die "the value at ${GOSSIP_KEY_PATH} is not a gossip key (base64 of 16, 24 or 32 bytes)"
fi

# 4. Everything is known: stage each file next to its final place (same file system, so the mv
# below is an atomic rename), with its owner and mode set before it becomes visible.
# The directory is 0751: each process reaches its own token file by name; no one else lists them.
install -d -m 0751 -o root -g root "${token_dir}"
declare -A final=()
stage() {
  local dest="$1" mode="$2" group="$3" content="$4" tmp
  tmp="$(mktemp "${dest%/*}/.${dest##*/}.XXXXXX")"
  staged+=("${tmp}")
  chown "root:${group}" "${tmp}"
  chmod "${mode}" "${tmp}"
  printf '%s\n' "${content}" >"${tmp}"
  final["${tmp}"]="${dest}"
}
stage "${token_dir}/dns.token" 0600 root "${tokens[dns]}"
# Envoy reads its token through CONSUL_HTTP_TOKEN_FILE, as the envoy group.
stage "${token_dir}/service.token" 0640 "${envoy_group}" "${tokens[service]}"
if [[ -n "${gossip_key}" ]]; then
  stage "${config_dir}/gossip.hcl" 0640 "${consul_group}" "encrypt = \"${gossip_key}\""
fi
stage "${config_dir}/node.hcl" 0640 "${consul_group}" "node_name = \"${node}\""
stage "${config_dir}/tokens.hcl" 0640 "${consul_group}" "# Written by consul-login at boot; destroyed by its logout.
acl {
  tokens {
    agent                            = \"${tokens[agent]}\"
    dns                              = \"${tokens[dns]}\"
    config_file_service_registration = \"${tokens[service]}\"
  }
}"

# The agent reads its own token through CONSUL_HTTP_TOKEN_FILE too, for the calls it makes with an
# api.DefaultConfig() client (netutil.IsDualStack: hashicorp/consul agent/xds listeners), which
# never see acl.tokens.agent. It is staged last and so renamed last: this boot's login is complete
# once it exists, and consul.service waits for it (tokens.hcl alone may be a previous boot's, whose
# tokens this run destroys below).
stage "${token_dir}/agent.token" 0640 "${consul_group}" "${tokens[agent]}"

for tmp in "${staged[@]}"; do
  mv -f "${tmp}" "${final[${tmp}]}"
done
staged=()
committed=yes
echo "consul-login: node ${node} logged in (agent, service, dns tokens written)"

# 5. The previous boot's tokens, now replaced: destroyed, best effort.
for old in "${old_tokens[@]}"; do
  if [[ " ${tokens[*]} " != *" ${old} "* ]]; then
    printf '%s\n' "${old}" >"${work}/old.token"
    logout_file "${work}/old.token" "previous boot's" || true
  fi
done
