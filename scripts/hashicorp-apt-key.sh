#!/bin/sh
# Trusts HashiCorp's apt repository under exactly one key: the one whose fingerprint is pinned here.
#
# Runs as cloud-init's bootcmd (every boot, before apt is configured and packages are installed),
# so it is POSIX sh and inline in the user data. The key is fetched over HTTPS from HashiCorp
# rather than embedded: 3 KB of user data saved (EC2 allows 16,384 bytes), and no keyserver at boot
# (keyservers were a classic cause of failed boots). Whatever the answer holds, only the key with
# the pinned fingerprint is exported into the keyring apt uses (signed-by in the source line), so a
# tampered or extended answer trusts nothing else; a wrong one fails here, with its reason, and the
# apt install after it fails too. A keyring that already holds the key is kept (later boots).
# gpg is on every Ubuntu cloud image: cloud-init itself uses it for apt keys (cloudinit/gpg.py).
# Overridden by tests only: HASHICORP_KEY_URL, HASHICORP_KEYRING, HASHICORP_KEY_ATTEMPTS,
# HASHICORP_KEY_RETRY_SECONDS.
set -eu

fingerprint=798AEC654E5C15428C8E42EEAA16FCBCA621E701
url="${HASHICORP_KEY_URL:-https://apt.releases.hashicorp.com/gpg}"
keyring="${HASHICORP_KEYRING:-/etc/apt/keyrings/hashicorp-archive-keyring.gpg}"
attempts="${HASHICORP_KEY_ATTEMPTS:-30}"
retry_seconds="${HASHICORP_KEY_RETRY_SECONDS:-5}"

# The fingerprints of the primary keys in a key file: the fpr record right after each pub record.
primaries() {
  gpg --batch --show-keys --with-colons "$1" 2>/dev/null |
    awk -F: '$1 == "pub" { want = 1; next } want && $1 == "fpr" { print $10; want = 0 }'
}

if [ -s "${keyring}" ] && [ "$(primaries "${keyring}")" = "${fingerprint}" ]; then
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
i=1
until curl -fsSL --connect-timeout 5 --max-time 20 -o "${work}/answer" "${url}"; do
  if [ "${i}" -ge "${attempts}" ]; then
    echo "hashicorp-apt-key: ${url} did not answer after ${i} attempts" >&2
    exit 1
  fi
  i=$((i + 1))
  sleep "${retry_seconds}"
done

# Only the pinned key leaves the scratch keyring; an answer without it exports nothing.
export GNUPGHOME="${work}/gnupg"
mkdir -m 0700 "${GNUPGHOME}"
gpg --batch --quiet --import "${work}/answer" 2>/dev/null || true
gpg --batch --export "${fingerprint}" >"${work}/keyring" 2>/dev/null || true
if [ "$(primaries "${work}/keyring")" != "${fingerprint}" ]; then
  echo "hashicorp-apt-key: ${url} did not serve the key ${fingerprint}; refusing to trust it" >&2
  exit 1
fi
mkdir -p "${keyring%/*}"
install -m 0644 "${work}/keyring" "${keyring}.new"
mv -f "${keyring}.new" "${keyring}"
echo "hashicorp-apt-key: trusting ${fingerprint} for apt.releases.hashicorp.com"
