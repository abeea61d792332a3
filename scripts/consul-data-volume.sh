#!/bin/bash
# consul-data-volume
#
# Mounts this Consul server's own EBS data volume as /var/lib/consul (Consul's data_dir), so the
# server's Raft data outlives its instance. Installed as /usr/local/sbin/consul-data-volume and run
# by consul-data.service, before consul.service, at every boot.
#
# The volume is found by its identity, never by elimination (which takes the root disk when the
# root is a whole disk, on LVM, or when findmnt answers nothing):
#   - Nitro (NVMe): the EBS volume id is the disk's NVMe serial number, without the dash, and udev
#     links it as /dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol<hex> (AWS, Amazon EBS user
#     guide, "Map Amazon EBS volumes to NVMe device names"; systemd's 60-persistent-storage.rules
#     names NVMe disks nvme-<model>_<serial>);
#   - Xen: the device name of the attachment (/dev/sdf), which the kernel may call /dev/xvdf (AWS,
#     EC2 user guide, "Device names on Linux instances").
# Pulumi attaches the volume once the instance runs, so it may not be there yet: it is waited for,
# up to CONSUL_DATA_WAIT_SECONDS. Then it must be a whole disk with no partitions, no LVM or other
# holders and nothing mounted from it (anything else is not a volume this script prepared: refused,
# never formatted). It is formatted only when it carries no signature at all (blkid -p exits 2), and
# mounted only when it holds ext4: a volume that already holds a server's data (after a replacement)
# is mounted as it is.
#
# Read from the unit's EnvironmentFile (/etc/consul.d/data-volume.env):
#   DATA_VOLUME_ID   the EBS volume id (vol-<8 or 17 hex digits>)
#   DATA_DEVICE      the attachment's device name (/dev/sd[b-z])
# Read by tests: CONSUL_DATA_MOUNT, CONSUL_DATA_DEV_DIR (/dev), CONSUL_DATA_WAIT_SECONDS (600),
#   CONSUL_DATA_POLL_SECONDS (5), CONSUL_DATA_OWNER (consul:consul).
set -euo pipefail

mount_point="${CONSUL_DATA_MOUNT:-/var/lib/consul}"
dev_dir="${CONSUL_DATA_DEV_DIR:-/dev}"
wait_seconds="${CONSUL_DATA_WAIT_SECONDS:-600}"
poll_seconds="${CONSUL_DATA_POLL_SECONDS:-5}"
owner="${CONSUL_DATA_OWNER:-consul:consul}"
label="consul-data"

die() {
  echo "consul-data-volume: $*; consul stays stopped" >&2
  exit 1
}

volume_id="${DATA_VOLUME_ID:-}"
attachment="${DATA_DEVICE:-}"
# EC2 volume ids: vol- and 8 (older) or 17 hex digits.
[[ "${volume_id}" =~ ^vol-([0-9a-f]{8}|[0-9a-f]{17})$ ]] ||
  die "DATA_VOLUME_ID='${volume_id}' is not an EBS volume id (see /etc/consul.d/data-volume.env)"
[[ "${attachment}" =~ ^/dev/sd([b-z])$ ]] ||
  die "DATA_DEVICE='${attachment}' is not a device name /dev/sd[b-z] (see /etc/consul.d/data-volume.env)"
letter="${BASH_REMATCH[1]}"
[[ "${wait_seconds}" =~ ^[0-9]+$ ]] || die "CONSUL_DATA_WAIT_SECONDS=${wait_seconds} is not a whole number"
[[ "${poll_seconds}" =~ ^[1-9][0-9]*$ ]] || die "CONSUL_DATA_POLL_SECONDS=${poll_seconds} is not a positive whole number"

# The NVMe serial of an EBS volume is its id without the dash: vol-0abc... -> vol0abc...
nvme_link="${dev_dir}/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol${volume_id#vol-}"
xen_names=("${dev_dir}/xvd${letter}" "${dev_dir}/sd${letter}")

# The volume's device, once it is attached; nothing before.
volume_device() {
  if [[ -e "${nvme_link}" ]]; then
    readlink -f -- "${nvme_link}"
    return
  fi
  local name
  for name in "${xen_names[@]}"; do
    if [[ -e "${name}" ]]; then
      readlink -f -- "${name}"
      return
    fi
  done
}

waited=0
device="$(volume_device)"
while [[ -z "${device}" ]]; do
  if ((waited >= wait_seconds)); then
    die "volume ${volume_id} is not attached after ${wait_seconds}s (looked for ${nvme_link}" \
      "and ${xen_names[*]}): check the attachment ${attachment} in EC2"
  fi
  sleep "${poll_seconds}"
  waited=$((waited + poll_seconds))
  device="$(volume_device)"
done
echo "consul-data-volume: volume ${volume_id} is ${device}"

# A whole disk, alone: lsblk lists the device and everything built on it (partitions, LVM volumes,
# RAID members...), each with all its mount points (MOUNTPOINTS: a device can be mounted at several
# places; raw output joins them with \x0a). One line, a disk, mounted nowhere or only here.
type="$(lsblk -dno TYPE -- "${device}")" || die "lsblk cannot read ${device}"
[[ "${type}" == "disk" ]] || die "${device} (volume ${volume_id}) is a '${type}', not a whole disk"
tree="$(lsblk -nrpo NAME,MOUNTPOINTS -- "${device}")" || die "lsblk cannot list ${device}"
if [[ -z "${tree}" || "$(wc -l <<<"${tree}")" -ne 1 ]]; then
  die "${device} (volume ${volume_id}) has partitions or holders ($(tr '\n' ' ' <<<"${tree}")): not" \
    "a volume this script prepared, so it is neither formatted nor mounted"
fi
read -r _ mounted_on <<<"${tree}"
if [[ -n "${mounted_on}" && "${mounted_on}" != "${mount_point}" ]]; then
  die "${device} (volume ${volume_id}) is mounted on ${mounted_on}: it is in use, not the data volume"
fi

# blkid -p exits 2 when the device has no signature of any kind: only then is it new and empty.
signature=0
fstype="$(blkid -p -o value -s TYPE -- "${device}")" || signature=$?
if ((signature == 2)); then
  echo "consul-data-volume: formatting the new, empty volume ${volume_id} (${device})"
  mkfs.ext4 -q -L "${label}" -- "${device}"
elif ((signature != 0)); then
  die "cannot read ${device} (blkid exit ${signature}); not formatting it"
elif [[ "${fstype}" != "ext4" ]]; then
  die "${device} (volume ${volume_id}) holds '${fstype:-an unknown signature}', not ext4: not mounting and not formatting it"
fi

mkdir -p -- "${mount_point}"
if mountpoint -q -- "${mount_point}"; then
  source="$(findmnt -nvo SOURCE --mountpoint "${mount_point}" || true)"
  [[ "${source}" == "${device}" ]] || die "${mount_point} is already mounted from '${source}', not ${device}"
else
  mount -t ext4 -o noatime -- "${device}" "${mount_point}"
fi
chown -- "${owner}" "${mount_point}"
chmod 0750 -- "${mount_point}"
echo "consul-data-volume: volume ${volume_id} (${device}) mounted on ${mount_point}"
