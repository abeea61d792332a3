#!/bin/bash
# consul-server-login [logout]
#
# Gives this Consul server's agent its ACL token, obtained from Consul's aws-iam auth method with the
# instance role: no token is ever in the user data. Installed as /usr/local/sbin/consul-server-login
# and run by consul-server-login.service after consul.service.
#
# The server starts without an agent token; Pulumi bootstraps the ACLs over the API later and only
# then creates the auth method, so the login is retried (one line per failure) until the deadline.
# The SecretID goes to $CONSUL_CONFIG_DIR/tokens.hcl (0640 root:consul, read at every start) and to
# $TOKEN_DIR/agent.token (0600, tmpfs: a fresh boot logs in again), then the agent is reloaded with
# SIGHUP (no ACL needed, unlike `consul reload`). The token is never printed.
#
# `consul-server-login logout` (the unit's ExecStop) destroys the token and removes both files.
#
# Every call (login, logout, reload) has a timeout: a server that accepts the connection and stalls
# costs one attempt, not the boot. After LOGIN_DEADLINE_SECONDS the script exits 1 and systemd starts
# it again after a growing delay (consul-server-login.service: Restart=on-failure): it never gives up.
#
# Read from the unit's EnvironmentFile (/etc/consul.d/login.env):
#   LOGIN_METHOD, LOGIN_SERVER_ID                  the auth method and its ServerIDHeaderValue
#   AWS_REGION                                     the region the login signs its STS request for
#   CONSUL_HTTP_ADDR, CONSUL_CACERT, CONSUL_TLS_SERVER_NAME   how the consul CLI reaches this server
#   LOGIN_DEADLINE_SECONDS (3600), LOGIN_RETRY_SECONDS (10)
# Read by tests: CONSUL_BIN, CONSUL_CONFIG_DIR, TOKEN_DIR, CONSUL_GROUP, RELOAD_COMMAND,
#   LOGIN_CALL_TIMEOUT_SECONDS (30).
set -euo pipefail

consul="${CONSUL_BIN:-/usr/bin/consul}"
config_dir="${CONSUL_CONFIG_DIR:-/etc/consul.d}"
token_dir="${TOKEN_DIR:-/run/consul-login}"
group="${CONSUL_GROUP:-consul}"
reload_command="${RELOAD_COMMAND:-systemctl reload consul.service}"
deadline="${LOGIN_DEADLINE_SECONDS:-3600}"
retry_seconds="${LOGIN_RETRY_SECONDS:-10}"
call_timeout="${LOGIN_CALL_TIMEOUT_SECONDS:-30}"
tokens_hcl="${config_dir}/tokens.hcl"
token_file="${token_dir}/agent.token"
uuid_re='^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'

log() { echo "consul-server-login: $*" >&2; }

[[ "${call_timeout}" =~ ^[1-9][0-9]*$ ]] || { log "LOGIN_CALL_TIMEOUT_SECONDS=${call_timeout} is not a positive whole number"; exit 2; }

# bounded COMMAND...: runs it with a timeout (SIGTERM, then SIGKILL 5 s later), stdin closed, stdout
# and stderr together on stdout; exit status 124 when it did not finish in time.
bounded() {
  timeout --kill-after=5 "${call_timeout}" "$@" </dev/null 2>&1
}

# why STATUS OUTPUT: the last line of a failed call's output, or what happened to it.
why() {
  if (($1 == 124 || $1 == 137)); then
    echo "no answer within ${call_timeout}s"
  elif [[ -n "$2" ]]; then
    tail -n 1 <<<"$2"
  else
    echo "exit status $1 and no message"
  fi
}

# Destroys the token in the file named by $1, best effort: the server may be stopping or gone.
logout_token() {
  local output rc=0
  output="$(bounded "${consul}" logout "-token-file=$1")" || rc=$?
  if ((rc != 0)); then
    log "logout failed (ignored): $(why "${rc}" "${output}")"
  fi
}

if [[ "${1:-}" == "logout" ]]; then
  if [[ -s "${token_file}" ]]; then
    logout_token "${token_file}"
  fi
  rm -f -- "${tokens_hcl}" "${token_file}"
  exit 0
fi
[[ $# -eq 0 ]] || { log "usage: consul-server-login [logout]"; exit 2; }

if [[ -e "${tokens_hcl}" && -s "${token_file}" ]]; then
  log "already logged in since this boot; nothing to do"
  exit 0
fi

: "${LOGIN_METHOD:?consul-server-login: LOGIN_METHOD is not set (see /etc/consul.d/login.env)}"
: "${LOGIN_SERVER_ID:?consul-server-login: LOGIN_SERVER_ID is not set (see /etc/consul.d/login.env)}"
# hashicorp/consul command/login/aws.go stops with "AWS region not found" without -aws-region,
# AWS_REGION or a shared config, and the AWS SDK does not read the region from instance metadata.
: "${AWS_REGION:?consul-server-login: AWS_REGION is not set (see /etc/consul.d/login.env)}"
[[ "${AWS_REGION}" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || { log "AWS_REGION=${AWS_REGION} is not an AWS region"; exit 2; }
[[ "${deadline}" =~ ^[0-9]+$ ]] || { log "LOGIN_DEADLINE_SECONDS=${deadline} is not a whole number"; exit 2; }
[[ "${retry_seconds}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { log "LOGIN_RETRY_SECONDS=${retry_seconds} is not a number"; exit 2; }

umask 077
mkdir -p -- "${token_dir}"
chmod 0700 -- "${token_dir}"
sink="$(mktemp "${token_dir}/.login.XXXXXX")"
old_token_file="" tmp=""
cleanup() { rm -f -- "${sink}" ${old_token_file:+"${old_token_file}"} ${tmp:+"${tmp}"}; }
trap cleanup EXIT

# The token a previous boot left in tokens.hcl (a crash skips ExecStop): destroyed once replaced.
if [[ -s "${tokens_hcl}" ]]; then
  old_token="$(sed -n 's/.*agent *= *"\([0-9a-fA-F-]*\)".*/\1/p' "${tokens_hcl}" | head -n 1)"
  if [[ "${old_token}" =~ ${uuid_re} ]]; then
    old_token_file="$(mktemp "${token_dir}/.old.XXXXXX")"
    printf '%s\n' "${old_token}" >"${old_token_file}"
  fi
  unset old_token
fi

start="${SECONDS}"
attempt=0
token=""
while :; do
  attempt=$((attempt + 1))
  : >"${sink}"
  rc=0
  output="$(bounded "${consul}" login -type=aws-iam "-method=${LOGIN_METHOD}" -aws-auto-bearer-token \
    -aws-include-entity "-aws-region=${AWS_REGION}" "-aws-server-id-header-value=${LOGIN_SERVER_ID}" \
    "-token-sink-file=${sink}")" || rc=$?
  if ((rc == 0)); then
    token="$(tr -d '[:space:]' <"${sink}")"
    if [[ "${token}" =~ ${uuid_re} ]]; then
      break
    fi
    token=""
    log "login with ${LOGIN_METHOD} (attempt ${attempt}): the SecretID written is not a UUID; retrying"
  else
    log "login with ${LOGIN_METHOD} (attempt ${attempt}): $(why "${rc}" "${output}"); retrying"
  fi
  if ((SECONDS - start >= deadline)); then
    log "no token from ${LOGIN_METHOD} after ${deadline}s; the agent keeps running without one"
    exit 1
  fi
  sleep "${retry_seconds}"
done

# tokens.hcl: atomically, group-readable by the agent.
tmp="$(mktemp "${config_dir}/.tokens.hcl.XXXXXX")"
printf 'acl {\n  tokens {\n    agent = "%s"\n  }\n}\n' "${token}" >"${tmp}"
chown "root:${group}" -- "${tmp}"
chmod 0640 -- "${tmp}"
mv -f -- "${tmp}" "${tokens_hcl}"
# agent.token: root only, for logout.
printf '%s\n' "${token}" >"${sink}"
chmod 0600 -- "${sink}"
mv -f -- "${sink}" "${token_file}"
unset token

read -ra reload <<<"${reload_command}"
rc=0
output="$(bounded "${reload[@]}")" || rc=$?
if ((rc != 0)); then
  log "logged in with ${LOGIN_METHOD}, but '${reload_command}' failed ($(why "${rc}" "${output}")):" \
    "the agent uses the token from its next start"
  exit 1
fi
log "logged in with ${LOGIN_METHOD} (attempt ${attempt}); agent token written to ${tokens_hcl} and reloaded"

if [[ -n "${old_token_file}" ]]; then
  if ! cmp -s -- "${old_token_file}" "${token_file}"; then
    logout_token "${old_token_file}"
  fi
fi
