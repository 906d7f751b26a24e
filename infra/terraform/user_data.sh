#!/bin/bash
# Mount the trainctl data volume: format it ONLY when it holds no filesystem and no partition
# table, mount it by UUID with nofail, so a reboot or a re-attach to a new box keeps the data.
#
# Terraform prepends the settings as environment variables:
#   TRAINCTL_DATA_VOLUME_ID  vol-...: on Nitro boxes (every g5) the NVMe serial names the volume
#   TRAINCTL_DATA_DEVICE     the attachment's device name (/dev/sdf); a file image in tests
#   TRAINCTL_MOUNT_POINT     /mnt/training
#   TRAINCTL_OWNER           the login user who gets the mount point (ubuntu)
# Knobs for tests and operators:
#   TRAINCTL_FSTAB           fstab to edit (default /etc/fstab)
#   TRAINCTL_DEVICE_WAIT_S   how long to wait for the volume to be attached (default 600)
#   TRAINCTL_DRY_RUN=1       print what would be done and change nothing
#   TRAINCTL_SKIP_MOUNT=1    format and write fstab, but do not mount (file images in tests)
set -euo pipefail

VOLUME_ID="${TRAINCTL_DATA_VOLUME_ID:-}"
DEVICE_NAME="${TRAINCTL_DATA_DEVICE:-/dev/sdf}"
MOUNT_POINT="${TRAINCTL_MOUNT_POINT:-/mnt/training}"
OWNER="${TRAINCTL_OWNER:-ubuntu}"
FSTAB="${TRAINCTL_FSTAB:-/etc/fstab}"
WAIT_S="${TRAINCTL_DEVICE_WAIT_S:-600}"
DRY_RUN="${TRAINCTL_DRY_RUN:-0}"
SKIP_MOUNT="${TRAINCTL_SKIP_MOUNT:-0}"
FS_LABEL="trainctl-data"

log() { echo "trainctl-data-volume: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
dry() { [ "$DRY_RUN" = "1" ]; }

# The device paths this volume can appear under, most specific first.
candidates() {
    if [ -n "$VOLUME_ID" ]; then
        echo "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${VOLUME_ID//-/}"
    fi
    echo "$DEVICE_NAME"
    case "$DEVICE_NAME" in
        /dev/sd*) echo "/dev/xvd${DEVICE_NAME#/dev/sd}" ;;
    esac
}

find_device() {
    local c
    while read -r c; do
        if [ -b "$c" ] || [ -f "$c" ]; then
            readlink -f "$c"
            return 0
        fi
    done < <(candidates)
    return 1
}

# The attachment is made after the instance starts, so the disk may appear a little later.
wait_for_device() {
    local waited=0 dev
    until dev="$(find_device)"; do
        if [ "$waited" -ge "$WAIT_S" ]; then
            die "data volume ${VOLUME_ID:-$DEVICE_NAME} did not appear within ${WAIT_S}s (is it attached?)"
        fi
        sleep 5
        waited=$((waited + 5))
    done
    echo "$dev"
}

# Prints the filesystem type, "blank" when the device carries no signature at all, and fails
# when blkid cannot tell: an unreadable disk is never treated as blank.
probe() {
    local dev="$1" out rc
    out="$(blkid -p -o export "$dev")" && rc=0 || rc=$?
    case "$rc" in
        0)
            local type
            type="$(sed -n 's/^TYPE=//p' <<<"$out")"
            if [ -z "$type" ]; then
                die "$dev carries a partition table or unknown signature; refusing to format or mount it"
            fi
            echo "$type"
            ;;
        2) echo "blank" ;;
        *) die "blkid could not probe $dev (exit $rc); refusing to touch it" ;;
    esac
}

format_blank() {
    local dev="$1" force=()
    [ -f "$dev" ] && force=(-F) # a file image in tests; never forced on a real disk
    if dry; then
        log "dry-run: would format $dev as ext4 (label $FS_LABEL)"
        return 0
    fi
    log "formatting blank $dev as ext4"
    mkfs.ext4 -q "${force[@]}" -m 0 -L "$FS_LABEL" "$dev"
}

# One fstab line for the mount point, by UUID, nofail so a missing volume never blocks boot.
write_fstab() {
    local uuid="$1" type="$2" line tmp
    line="UUID=${uuid} ${MOUNT_POINT} ${type} defaults,nofail,x-systemd.device-timeout=30s 0 2"
    if dry; then
        log "dry-run: would write fstab line: $line"
        return 0
    fi
    tmp="$(mktemp)"
    if [ -f "$FSTAB" ]; then
        awk -v mp="$MOUNT_POINT" '$2 != mp' "$FSTAB" >"$tmp"
    fi
    echo "$line" >>"$tmp"
    cat "$tmp" >"$FSTAB" # keep the file's owner and mode
    rm -f "$tmp"
}

mount_it() {
    if dry || [ "$SKIP_MOUNT" = "1" ]; then
        log "not mounting $MOUNT_POINT (dry-run or skip-mount)"
        return 0
    fi
    mkdir -p "$MOUNT_POINT"
    if ! mountpoint -q "$MOUNT_POINT"; then
        mount --fstab "$FSTAB" "$MOUNT_POINT"
    fi
    if id -u "$OWNER" >/dev/null 2>&1; then
        chown "$OWNER:" "$MOUNT_POINT"
    fi
}

main() {
    local dev type uuid
    dev="$(wait_for_device)"
    type="$(probe "$dev")"
    if [ "$type" = "blank" ]; then
        format_blank "$dev"
        if dry; then
            log "dry-run: $dev is blank; it would be formatted and mounted at $MOUNT_POINT"
            return 0
        fi
        type="$(probe "$dev")"
    else
        log "$dev already holds $type: keeping its data, not formatting"
    fi
    uuid="$(blkid -p -o value -s UUID "$dev")"
    [ -n "$uuid" ] || die "$dev has no filesystem UUID"
    write_fstab "$uuid" "$type"
    mount_it
    log "data volume $dev ($type, UUID=$uuid) at $MOUNT_POINT"
}

main "$@"
