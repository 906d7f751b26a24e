"""The instance user data: shellcheck-clean, and it formats the data volume only when it is blank.

Real mkfs.ext4, blkid and debugfs on file images; where the sandbox allows loop devices, a real
mount by UUID through an fstab, unmounted and mounted again as after a reboot or re-attach.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "terraform" / "user_data.sh"
MP = "/mnt/training"


def run(device, fstab: Path, **extra) -> subprocess.CompletedProcess:
    env = {**os.environ, "TRAINCTL_DATA_DEVICE": str(device), "TRAINCTL_FSTAB": str(fstab),
           "TRAINCTL_MOUNT_POINT": MP, "TRAINCTL_SKIP_MOUNT": "1", "TRAINCTL_DEVICE_WAIT_S": "0",
           "TRAINCTL_DATA_VOLUME_ID": "vol-0123456789abcdef0", **extra}
    return subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def blkid(dev, tag: str) -> str:
    return subprocess.run(["blkid", "-p", "-o", "value", "-s", tag, str(dev)], capture_output=True,
                          text=True).stdout.strip()


def mount_lines(fstab: Path) -> list[str]:
    return [ln for ln in fstab.read_text().splitlines() if len(ln.split()) > 1 and ln.split()[1] == MP]


@pytest.fixture
def image(tmp_path) -> Path:
    img = tmp_path / "data.img"
    with open(img, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    return img


@pytest.fixture
def fstab(tmp_path) -> Path:
    f = tmp_path / "fstab"
    f.write_text("# /etc/fstab\nLABEL=cloudimg-rootfs / ext4 discard,errors=remount-ro 0 1\n")
    return f


def test_user_data_is_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.fail("shellcheck missing: `make sysdeps` installs it (Debian package shellcheck)")
    r = subprocess.run(["shellcheck", "-s", "bash", "-S", "style", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_blank_volume_is_formatted_once_and_its_data_survives_a_second_boot(image, fstab):
    first = run(image, fstab)
    assert first.returncode == 0, first.stderr
    assert blkid(image, "TYPE") == "ext4" and blkid(image, "LABEL") == "trainctl-data"
    uuid = blkid(image, "UUID")
    assert mount_lines(fstab) == [f"UUID={uuid} {MP} ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2"]
    assert "LABEL=cloudimg-rootfs /" in fstab.read_text()  # other mounts untouched

    # Data written between boots (debugfs writes into the image without mounting it).
    payload = image.parent / "payload.txt"
    payload.write_text("epoch 3 checkpoint\n")
    subprocess.run(["debugfs", "-w", "-R", f"write {payload} keep.txt", str(image)], check=True,
                   capture_output=True)

    second = run(image, fstab)
    assert second.returncode == 0, second.stderr
    assert "keeping its data, not formatting" in second.stderr
    assert blkid(image, "UUID") == uuid
    cat = subprocess.run(["debugfs", "-R", "cat keep.txt", str(image)], capture_output=True, text=True)
    assert cat.stdout == "epoch 3 checkpoint\n"
    assert len(mount_lines(fstab)) == 1  # idempotent: no duplicate line


def test_stale_fstab_line_for_the_mount_point_is_replaced(image, fstab):
    fstab.write_text(fstab.read_text() + f"/dev/xvdf {MP} ext4 defaults 0 2\n")
    assert run(image, fstab).returncode == 0
    lines = mount_lines(fstab)
    assert len(lines) == 1 and lines[0].startswith(f"UUID={blkid(image, 'UUID')} ") and "nofail" in lines[0]


def test_dry_run_changes_nothing(image, fstab):
    before = fstab.read_text()
    r = run(image, fstab, TRAINCTL_DRY_RUN="1")
    assert r.returncode == 0, r.stderr
    assert "would format" in r.stderr
    assert subprocess.run(["blkid", "-p", str(image)], capture_output=True).returncode == 2  # still blank
    assert fstab.read_text() == before


def test_dry_run_on_a_formatted_volume_says_it_keeps_it(image, fstab):
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    uuid = blkid(image, "UUID")
    r = run(image, fstab, TRAINCTL_DRY_RUN="1")
    assert r.returncode == 0 and "keeping its data" in r.stderr
    assert f"would write fstab line: UUID={uuid} {MP}" in r.stderr
    assert mount_lines(fstab) == []


def test_partitioned_disk_is_never_formatted(image, fstab):
    # A DOS partition table: one Linux partition from sector 2048, and the 0x55AA boot signature.
    with open(image, "r+b") as f:
        f.seek(446)
        f.write(bytes([0, 0, 0, 0, 0x83, 0, 0, 0]) + (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little"))
        f.seek(510)
        f.write(b"\x55\xaa")
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    r = run(image, fstab)
    assert r.returncode != 0
    assert "partition table" in r.stderr
    assert hashlib.sha256(image.read_bytes()).hexdigest() == digest
    assert mount_lines(fstab) == []


def test_missing_volume_fails_with_a_clear_message(tmp_path, fstab):
    r = run(tmp_path / "not-attached", fstab)
    assert r.returncode != 0
    assert "did not appear within 0s" in r.stderr


@pytest.fixture
def loop_device(image):
    """The image behind a real loop device, where the sandbox allows it (root, /dev/loop*)."""
    r = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no loop devices in this sandbox: {r.stderr.strip()}")
    dev = r.stdout.strip()
    yield dev
    subprocess.run(["losetup", "-d", dev], capture_output=True)


def test_real_mount_by_uuid_survives_unmount_and_remount(loop_device, fstab, tmp_path):
    mp = tmp_path / "mnt"
    env = {"TRAINCTL_MOUNT_POINT": str(mp), "TRAINCTL_SKIP_MOUNT": "0", "TRAINCTL_OWNER": "nobody"}
    try:
        first = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env={
            **os.environ, "TRAINCTL_DATA_DEVICE": loop_device, "TRAINCTL_FSTAB": str(fstab),
            "TRAINCTL_DEVICE_WAIT_S": "0", **env})
        if first.returncode != 0 and "mount" in first.stderr and "permission" in first.stderr.lower():
            pytest.skip(f"mount not permitted here: {first.stderr.strip()}")
        assert first.returncode == 0, first.stderr
        assert subprocess.run(["mountpoint", "-q", str(mp)]).returncode == 0
        (mp / "adapter.bin").write_bytes(b"weights")
        subprocess.run(["umount", str(mp)], check=True)

        again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, env={
            **os.environ, "TRAINCTL_DATA_DEVICE": loop_device, "TRAINCTL_FSTAB": str(fstab),
            "TRAINCTL_DEVICE_WAIT_S": "0", **env})
        assert again.returncode == 0, again.stderr
        assert "not formatting" in again.stderr
        assert (mp / "adapter.bin").read_bytes() == b"weights"
        line = [ln for ln in fstab.read_text().splitlines() if f" {mp} " in ln]
        assert len(line) == 1 and line[0].startswith("UUID=") and "nofail" in line[0]
    finally:
        subprocess.run(["umount", str(mp)], capture_output=True)
