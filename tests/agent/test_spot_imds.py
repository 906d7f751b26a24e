"""Spot notices: parsing, the IMDSv2 client against a loopback stand-in, the watch turning itself
off when IMDS does not answer, and the store side of resuming (attempt claims, log numbering)."""

from __future__ import annotations

import socket

import pytest

from agent.daemon.imds import ImdsClient, ImdsUnreachable, SpotNotice, on_ec2, parse_instance_action, resolve_endpoint
from agent.daemon.spot import SpotWatch, newest_checkpoint
from agent.protocol import records as p
from agent.protocol.attempts import archive_error, check_resumable, newest_stored_checkpoint, next_log_seq
from agent.protocol.errors import ConfigError, TrainctlError
from agent.protocol.runstore import RunStore
from tests.fixtures.imds import ImdsStandIn

RUN = "spot-20260101-000000"


@pytest.fixture
def imds():
    s = ImdsStandIn()
    yield s
    s.close()


def test_parse_instance_action():
    assert parse_instance_action(b'{"action": "terminate", "time": "2026-11-22T01:02:03Z"}') == \
        SpotNotice("terminate", "2026-11-22T01:02:03Z")
    assert parse_instance_action('{"action": "stop"}') == SpotNotice("stop", "")
    for junk in (b"", b"<html>502</html>", b"[]", b'{"action": ""}', b'{"time": "x"}', None):
        assert parse_instance_action(junk) is None


def test_endpoint_setting(tmp_path):
    assert resolve_endpoint("off") is None and resolve_endpoint("") is None
    assert resolve_endpoint("http://127.0.0.1:9") == "http://127.0.0.1:9"
    dmi = tmp_path / "dmi"
    dmi.mkdir()
    assert not on_ec2(dmi, tmp_path / "uuid")
    (dmi / "board_asset_tag").write_text("i-0123456789abcdef0\n")
    assert on_ec2(dmi, tmp_path / "uuid")
    (tmp_path / "uuid").write_text("ec2e1916-9099-7caf-fd21-012345abcdef")
    assert on_ec2(tmp_path / "none", tmp_path / "uuid")


def test_client_gets_a_token_first_then_the_notice(imds):
    c = ImdsClient(imds.endpoint)
    assert c.instance_action() is None
    assert imds.requests[:2] == [("PUT", "/latest/api/token", 200), ("GET", "/latest/meta-data/spot/instance-action", 404)]
    imds.revoke_tokens()  # an expired token: one 401, a new token, the answer
    imds.interrupt("stop", "2026-11-22T01:02:03Z")
    assert c.instance_action() == SpotNotice("stop", "2026-11-22T01:02:03Z")
    assert [r[2] for r in imds.requests[2:]] == [401, 200, 200]


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_watch_turns_itself_off_once_when_imds_does_not_answer(caplog):
    w = SpotWatch(_closed_port(), poll_s=0.01, budget_s=1, timeout_s=0.5)
    with caplog.at_level("DEBUG", logger="trainctl.agent"):
        for t in range(20):
            assert w.poll(float(t)) is None
    assert w.client is None
    assert len([r for r in caplog.records if "spot interruption watch off" in r.message]) == 1
    with pytest.raises(ImdsUnreachable):
        ImdsClient(_closed_port(), 0.5).token()


def test_watch_polls_at_its_interval_and_keeps_the_notice(imds):
    w = SpotWatch(imds.endpoint, poll_s=10, budget_s=1)
    assert w.poll(100.0) is None and w.poll(105.0) is None  # the second is inside the interval: no request
    assert len([r for r in imds.requests if r[0] == "GET"]) == 1
    imds.interrupt()
    assert w.poll(111.0) == SpotNotice("terminate", "2026-11-22T01:02:03Z")
    imds.notice = None
    assert w.poll(200.0) is not None  # a notice is acted on once and never forgotten


def test_newest_checkpoint_skips_incomplete_folders(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    for n, whole in ((2, True), (4, True), (6, False)):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        if whole:
            (d / "trainer_state.pt").write_bytes(b"x")
    (tmp_path / "checkpoint-9.partial").mkdir()
    assert newest_checkpoint(tmp_path) == (4, tmp_path / "checkpoint-4")


def _error(rs: RunStore, summary: str) -> None:
    assert rs.write_error(RUN, p.ErrorMarker(ts=1.0, cause="interrupted", remediation="resume", summary=summary))


def test_archive_claims_each_marker_once(local_store):
    rs = RunStore(local_store)
    rs.write_metadata(p.Metadata(run_id=RUN, created=1.0))
    with pytest.raises(ConfigError, match="still running"):
        check_resumable(rs, RUN)
    _error(rs, "first")
    assert check_resumable(rs, RUN).summary == "first"
    assert archive_error(rs, RUN) == 1
    assert rs.read_error(RUN) is None
    with pytest.raises(TrainctlError, match="another `ctl launch --resume`"):
        archive_error(rs, RUN)  # the loser of a race finds the marker gone
    _error(rs, "second")
    local_store.put(rs.k(RUN, p.ERROR), local_store.get(rs.k(RUN, "attempts/1/_error")))
    with pytest.raises(TrainctlError, match="claimed it at the same time"):
        archive_error(rs, RUN)  # a racer that lists after the winner's claim sees its marker archived
    local_store.delete(rs.k(RUN, p.ERROR))
    _error(rs, "second")
    assert archive_error(rs, RUN) == 2
    assert RunStore(local_store).store.get(rs.k(RUN, "attempts/2/_error")) is not None


def test_log_numbering_and_stored_checkpoint_choice(local_store):
    rs = RunStore(local_store)
    assert next_log_seq(rs, RUN) == 1
    for seq in (1, 2, 3):
        rs.put_log_chunk(RUN, seq, b"x\n")
    assert next_log_seq(rs, RUN) == 4
    assert newest_stored_checkpoint(rs, RUN) is None
    for n in (3, 5):
        for f in ("adapter_model.safetensors", "trainer_state.pt"):
            local_store.put(rs.artifact_key(RUN, f"checkpoint-{n}/{f}"), b"w")
    local_store.put(rs.artifact_key(RUN, "checkpoint-7/adapter_model.safetensors"), b"half")  # upload cut short
    got = newest_stored_checkpoint(rs, RUN)
    assert (got.step, got.name, len(got.keys)) == (5, "checkpoint-5", 2)
    assert newest_stored_checkpoint(rs, RUN, preferred="s3://b/p/x/artifacts/checkpoint-3/").step == 3


def test_resume_resets_the_watchers_state_for_the_new_attempt(local_store):
    from agent.protocol.attempts import reset_watch_state

    rs = RunStore(local_store)
    local_store.put(rs.k(RUN, p.ALERTS), b'{"state": "failed"}')
    local_store.put(p.INDEX_DONE + RUN, b"{}")
    reset_watch_state(rs, RUN, 1)
    assert local_store.get(rs.k(RUN, "attempts/1/_alerts.json")) == b'{"state": "failed"}'
    assert not local_store.exists(rs.k(RUN, p.ALERTS)) and not local_store.exists(p.INDEX_DONE + RUN)
    reset_watch_state(rs, RUN, 2)  # nothing to move: no error
    assert not local_store.exists(rs.k(RUN, "attempts/2/_alerts.json"))


def test_a_claim_whose_agent_never_started_is_undone(local_store):
    from agent.protocol.attempts import restore_error

    rs = RunStore(local_store)
    rs.write_metadata(p.Metadata(run_id=RUN, created=1.0))
    _error(rs, "first")
    local_store.put(rs.k(RUN, p.ALERTS), b"ledger")
    n = archive_error(rs, RUN)
    from agent.protocol.attempts import reset_watch_state

    reset_watch_state(rs, RUN, n)
    assert restore_error(rs, RUN, n)
    assert rs.read_error(RUN).summary == "first" and local_store.get(rs.k(RUN, p.ALERTS)) == b"ledger"
    assert not list(local_store.list(rs.k(RUN, "attempts/")))
    assert not restore_error(rs, RUN, n)  # nothing archived any more
    assert archive_error(rs, RUN) == 1  # and it can be claimed again
