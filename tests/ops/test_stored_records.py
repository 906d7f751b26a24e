"""The alert ledger and the orphan record are protocol Records: a stored one is read by the one
known-fields rule in agent.protocol.records (a newer watcher's extra fields dropped), and one that is
not a readable record at all is replaced by compare-and-set instead of blocking alerts."""

from __future__ import annotations

import json

import pytest

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.alerts import ledger as L
from ops.orphans import report as O
from tests.ops.test_fakes import T0, make_run
from tests.ops.test_orphans import AFTER, launch, orphan_posts, watcher


def test_ledger_from_a_newer_watcher_keeps_what_this_one_knows(local_store):
    rs = RunStore(local_store)
    rid = make_run(rs)
    newer = {"run_id": rid, "state": "hung", "snoozed_by": "alice", "schema_version": 2, "field_from_2030": [1]}
    assert rs.write_alerts(rid, json.dumps(newer).encode(), None)
    led = L.load(rs, rid).ledger
    assert (led.run_id, led.state, led.snoozed_by) == (rid, "hung", "alice")
    assert not hasattr(led, "field_from_2030")
    assert json.loads(led.to_bytes())["schema_version"] == L.LEDGER_VERSION


@pytest.mark.parametrize("stored", [b"[]", b"not json", b'{"state": "hung"}'], ids=["array", "text", "no-run-id"])
def test_unreadable_ledger_is_replaced_on_its_etag(local_store, stored):
    rs = RunStore(local_store)
    rid = make_run(rs)
    assert rs.write_alerts(rid, stored, None)
    loaded = L.load(rs, rid)
    assert loaded.ledger == L.Ledger(rid) and loaded.etag is not None
    led, wrote = L.update(rs, rid, lambda led: setattr(led, "snoozed_by", "bob") or True)
    assert wrote and led.snoozed_by == "bob"
    assert L.Ledger.from_bytes(rs.read_alerts_versioned(rid).data).snoozed_by == "bob"


def test_orphan_record_round_trip_keeps_its_own_version_and_iso_twin():
    rec = O.OrphanRecord("i-0123456789abcdef0", "us-east-1", T0, "g5.2xlarge", T0 - 60, "box")
    d = json.loads(rec.to_bytes())
    assert d["schema_version"] == O.RECORD_VERSION and d["idle_since_iso"] == p.iso(T0)
    assert "launch_time_iso" not in d
    assert O.OrphanRecord.from_bytes(json.dumps({**d, "from_a_newer_watcher": 1}).encode()) == rec
    with pytest.raises(p.RecordError, match="orphan record: expected a JSON object"):
        O.OrphanRecord.from_bytes(b"[1]")


def test_idle_box_whose_stored_record_is_not_an_object_starts_a_fresh_stretch(s3_store, slack, moto_server):
    """A record that is JSON but no object (a hand edit, a foreign writer) is replaced, and the box
    is reported once after the idle setting, instead of an error on every sweep."""
    region = "ap-south-1"
    [iid] = launch(moto_server, region)
    rs = RunStore(s3_store)
    assert rs.write_orphan(region, iid, b"[]", None)
    w = watcher(rs, slack, moto_server, region)
    rep = w.sweep(T0)
    assert rep.errors == [] and rep.idle_instances == 1
    assert O.OrphanRecord.from_bytes(rs.store.get(O.record_key(region, iid))).idle_since == T0
    w.sweep(T0 + AFTER)
    w.sweep(T0 + AFTER + 60)
    [body] = orphan_posts(slack)
    assert body["text"].startswith(f"💸 Idle GPU instance {iid}")
