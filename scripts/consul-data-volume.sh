#!/bin/bash
# consul-data-volume
#
# Mounts this Consul server's own EBS data volume as /var/lib/consul (Consul's data_dir), so the
# server's Raft data outlives its instance. Installed as /usr/local/sbin/consul-data-volume and run
# by consul-data.service, before consul.service, at every boot.
#
# Pulumi attaches the volume (device /dev/sdf, an NVMe disk on Nitro instances) once the instance
# runs, so it may not be there yet: wait for it. The user data names no volume (its id would change
# the user data, and so replace the server, whenever the volume changed), so the volume is found as
# the disk labelled consul-data, else the one EBS disk that is not the root disk. It is formatted
# only when it carries no filesystem signature at all: a volume that already holds a server's data
# (after a replacement) is mounted as it is.
#
#   CONSUL_DATA_MOUNT, CONSUL_DATA_WAIT_SECONDS, CONSUL_DATA_POLL_SECONDS  for tests
set -euo pipefail

mount_point="${CONSUL_DATA_MOUNT:-/var/lib/consul}"
wait_seconds="${CONSUL_DATA_WAIT_SECONDS:-600}"
poll_seconds="${CONSUL_DATA_POLL_SECONDS:-5}"
label="consul-data"
# lsblk's MODEL of an EBS volume; instance-store disks ("Amazon EC2 NVMe Instance Storage") never match.
ebs_model="Amazon Elastic Block Store"

data_disk() {
  local labelled root
  labelled="$(blkid -L "${label}" 2>/dev/null || true)"
  if [[ -n "${labelled}" ]]; then
    echo "${labelled}"
    return
  fi
  root="/dev/$(lsblk -ndo PKNAME "$(findmnt -nvo SOURCE /)")"
  lsblk -dnpo NAME,TYPE,MODEL | awk -v root="${root}" -v model="${ebs_model}" '
    $2 == "disk" && $1 != root && index($0, model) { print $1; exit }'
}

waited=0
device="$(data_disk)"
while [[ -z "${device}" ]]; do
  if ((waited >= wait_seconds)); then
    echo "consul-data-volume: no data volume attached after ${wait_seconds}s; consul stays stopped" >&2
    exit 1
  fi
  sleep "${poll_seconds}"
  waited=$((waited + poll_seconds))
  device="$(data_disk)"
done

# blkid -p exits 2 when the device has no signature of any kind: only then is it new and empty.
signature=0
blkid -p "${device}" >/dev/null 2>&1 || signature=$?
if ((signature == 2)); then
  echo "consul-data-volume: formatting the new, empty volume ${device}"
  mkfs.ext4 -q -L "${label}" "${device}"
elif ((signature != 0)); then
  echo "consul-data-volume: cannot read ${device} (blkid exit ${signature}); not formatting it" >&2
  exit 1
fi
mkdir -p "${mount_point}"
if ! mountpoint -q "${mount_point}"; then
  mount -o noatime "${device}" "${mount_point}"
fi
chown consul:consul "${mount_point}"
chmod 0750 "${mount_point}"
echo "consul-data-volume: ${device} mounted on ${mount_point}"
