"""Uploads to the box over the real sshd: racing launches writing the same cached path, and refusals."""

from __future__ import annotations

import threading

import pytest

from agent.protocol.errors import TrainctlError
from controller.launch.hostkeys import PinStore
from controller.launch.remote import SshBox
from tests.fixtures.box import shared_folder


def _box(sshd, tmp_path) -> SshBox:
    box = SshBox("sshd-fixture", ssh_config=str(sshd.ssh_config), pins=PinStore(tmp_path / "known_hosts"),
                 say=lambda *_: None)
    box.wait_ready(30, poll_s=0.2)
    return box


def test_racing_uploads_to_one_path_each_land_whole(sshd, tmp_path):
    # Two launches of one box upload the same cached wheel at once: neither may fail, and the file
    # left is one whole upload, never a mix of the two or a truncated one.
    folder = shared_folder(tmp_path / "cache")
    target = f"{folder}/trainctl.whl"
    payloads = [bytes([65 + i]) * 3_000_000 for i in range(2)]
    boxes = [_box(sshd, tmp_path) for _ in payloads]
    errors: list[BaseException] = []
    start = threading.Barrier(len(boxes))

    def upload(box: SshBox, data: bytes) -> None:
        start.wait()
        try:
            for _ in range(3):
                box.put_bytes(data, target)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=pair) for pair in zip(boxes, payloads, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for box in boxes:
        box.close()
    assert not errors, errors
    assert (folder / "trainctl.whl").read_bytes() in payloads
    assert [p.name for p in folder.iterdir()] == ["trainctl.whl"]  # no part file left behind


def test_upload_into_a_missing_folder_is_one_line_and_leaves_nothing(sshd, tmp_path):
    box = _box(sshd, tmp_path)
    try:
        with pytest.raises(TrainctlError) as err:
            box.put_bytes(b"x", f"{tmp_path}/no-such-folder/agent.env", 0o600)
    finally:
        box.close()
    msg = str(err.value)
    assert "\n" not in msg and "no-such-folder/agent.env" in msg and "launch again" in msg
    assert not (tmp_path / "no-such-folder").exists()
