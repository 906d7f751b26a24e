"""The compare-and-set loop (ops/cas.py) the alert ledger and the orphan scan share: racing
writers, in real threads against the local folder store and moto's S3, all get their change in."""

from __future__ import annotations

import json
import threading

import pytest

from agent.protocol.errors import StoreError
from agent.protocol.runstore import RunStore
from ops import cas
from ops.alerts import ledger as L
from ops.orphans import report as O
from ops.orphans.scan import OrphanScan
from tests.ops.test_fakes import T0, make_run


@pytest.fixture(params=["local", "s3"])
def rs(request):
    """A RunStore over the local folder store, then over moto's S3."""
    store = request.getfixturevalue("local_store" if request.param == "local" else "s3_store")
    return RunStore(store)


def _race(n: int, work) -> list[BaseException]:
    """Run `work(i)` in `n` threads started together; the exceptions they raised."""
    errors: list[BaseException] = []

    def run(i):
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("existing", [False, True], ids=["create-only", "replace"])
def test_two_ledger_writers_that_read_the_same_version_both_land(rs, existing):
    """Both writers read the same version before either writes (a barrier inside the change), so
    one of them must lose the first write, re-read and apply its change to the winner's ledger."""
    rid = make_run(rs)
    if existing:
        L.update(rs, rid, lambda led: setattr(led, "facts", {"seeded": True}) or True)
    both_read = threading.Barrier(2)
    calls = {0: 0, 1: 0}

    def writer(i):
        def change(led: L.Ledger) -> bool:
            calls[i] += 1
            if calls[i] == 1:
                both_read.wait(timeout=30)  # the other writer has read this same version too
            led.sent.append({"id": f"writer-{i}"})
            return True

        L.update(rs, rid, change)

    assert _race(2, writer) == []
    led = L.load(rs, rid).ledger
    assert sorted(e["id"] for e in led.sent) == ["writer-0", "writer-1"]
    assert sorted(calls.values()) == [1, 2]  # the loser re-read and changed the winner's ledger
    if existing:
        assert led.facts == {"seeded": True}  # the earlier change survives both


def test_many_increments_from_racing_threads_are_none_lost(rs):
    """Two threads, twenty increments each, on one JSON object: every increment is in the result."""
    key = "_cas-test/counter.json"
    cell = cas.Cell(lambda: rs.store.get_versioned(key),
                    lambda data, etag: rs.store.put_if_absent(key, data) if etag is None
                    else rs.store.put_if_match(key, data, etag))
    per_thread = 20

    def decode(raw):
        return json.loads(raw) if raw is not None else {"n": 0, "by": []}

    def bump(i):
        def change(d):
            d["n"] += 1
            d["by"].append(i)
            return d

        for _ in range(per_thread):
            # A thread can lose at most as many races in a row as the other one writes.
            cas.update(cell, decode, change, lambda d: json.dumps(d).encode(), attempts=per_thread + 1)

    assert _race(2, bump) == []
    final = decode(rs.store.get(key))
    assert final["n"] == 2 * per_thread and sorted(final["by"]) == [0] * per_thread + [1] * per_thread


def test_nothing_to_write_returns_the_stored_value_untouched(local_store):
    rs = RunStore(local_store)
    rid = make_run(rs)
    L.update(rs, rid, lambda led: setattr(led, "snoozed_by", "alice") or True)

    def change(led):
        led.snoozed_by = "mallory"  # changed in place, then "nothing to write"
        return False

    led, wrote = L.update(rs, rid, change)
    assert not wrote and led.snoozed_by == "alice" and L.load(rs, rid).ledger.snoozed_by == "alice"


def test_a_writer_that_keeps_losing_gives_up_with_a_store_error(local_store):
    """Every write loses (another writer moves the object each time): a StoreError after `attempts`."""
    rs = RunStore(local_store)
    rid = make_run(rs)
    L.update(rs, rid, lambda led: True)
    reads = []

    def change(led):
        reads.append(1)
        # Another watcher writes between this read and our write, every time.
        L.update(rs, rid, lambda other: other.sent.append({"id": f"other-{len(reads)}"}) or True)
        return True

    with pytest.raises(StoreError, match=f"ledger of {rid}: lost 3 compare-and-set races in a row"):
        L.update(rs, rid, change, attempts=3)
    assert len(reads) == 3 and len(L.load(rs, rid).ledger.sent) == 3  # the other writer's changes all landed


def test_orphan_outcome_is_recorded_through_the_same_loop_after_a_lost_race(rs):
    """The orphan scan's record of a delivered alert lands although another write moved the record
    between the scan's read and its write (it re-reads and records on the new version)."""
    from ops.ec2 import TaggedInstance

    inst = TaggedInstance("i-0123456789abcdef0", "us-east-1", "g5.2xlarge", T0 - 3600, "box")
    rec = O.new_record(inst, T0)
    rec.lease = {"owner": "me", "until": T0 + 120}
    assert rs.write_orphan(inst.region, inst.instance_id, rec.to_bytes(), None)
    real_get = rs.read_orphan_versioned
    moved = []

    def get_then_someone_writes(region, iid):
        v = real_get(region, iid)
        if not moved:  # the first read goes stale at once: a bump of `attempts` by someone else
            other = O.OrphanRecord.from_bytes(v.data)
            other.last_error = "someone else was here"
            assert rs.write_orphan(region, iid, other.to_bytes(), v.etag)
            moved.append(True)
        return v

    rs.read_orphan_versioned = get_then_someone_writes
    scan = OrphanScan(rs, ec2=None, notifier=None, owner="me", lease_s=120)
    scan._record((inst.region, inst.instance_id), T0 + 5, True, "slack", None)
    got = O.OrphanRecord.from_bytes(real_get(inst.region, inst.instance_id).data)
    assert moved and got.alerted_at == T0 + 5 and got.via == "slack" and got.lease is None
