"""Alert policy sequences (pure): transitions, resolve, repeat backoff, inhibition, snooze, backfill."""

from __future__ import annotations

import pytest

from ops.alerts.ledger import Ledger, claim_outbox, record_result
from ops.alerts.policy import decide
from ops.state import RunState, Settings

S = Settings()
T = 1_800_000_000.0


def st(state, since=T, reason="r"):
    return RunState(state, reason, since=since)


def kinds(led):
    return [(m["kind"], m["state"]) for m in led.outbox]


def test_terminal_state_alerts_once_over_many_sweeps():
    led = Ledger("r-20270101-000000")
    for i in range(100):
        decide(led, st("failed"), T + i * 30, S)
    assert kinds(led) == [("final", "failed")] and led.closed


def test_healthy_and_late_send_nothing():
    led = Ledger("r-20270101-000000")
    for i, s in enumerate(["launching", "healthy", "late", "healthy", "late"]):
        decide(led, st(s), T + i, S)
    assert led.outbox == [] and led.incident is None


def test_silent_then_recovered_sends_alert_then_resolved_with_duration():
    led = Ledger("r-20270101-000000")
    decide(led, st("agent_silent", since=T - 30), T, S)
    decide(led, st("agent_silent", since=T - 30), T + 60, S)
    decide(led, st("late"), T + 120, S)  # heartbeat back, but still inside grace: incident stays open
    assert led.incident is not None
    decide(led, st("healthy"), T + 600, S)
    assert kinds(led) == [("alert", "agent_silent"), ("resolved", "healthy")]
    resolved = led.outbox[1]
    assert resolved["was_state"] == "agent_silent" and resolved["lasted_s"] == pytest.approx(630)
    assert led.incident is None


def test_repeats_back_off_1h_4h_then_daily():
    led = Ledger("r-20270101-000000")
    t = T
    while t < T + 4 * 86400:
        decide(led, st("hung", since=T), t, S)
        t += 300  # a 5-minute sweep; every backoff step is a multiple of it
    times = [m["created"] for m in led.outbox]
    assert [m["kind"] for m in led.outbox][:2] == ["alert", "repeat"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps[:4] == [3600, 14400, 86400, 86400]
    assert [m.get("repeat") for m in led.outbox[1:4]] == [1, 2, 3]


def test_new_bad_state_is_a_new_alert():
    led = Ledger("r-20270101-000000")
    decide(led, st("hung"), T, S)
    decide(led, st("agent_silent"), T + 60, S)
    assert kinds(led) == [("alert", "hung"), ("alert", "agent_silent")]


def test_instance_gone_inhibits_silent_and_hung_until_recovery():
    led = Ledger("r-20270101-000000")
    decide(led, st("agent_silent"), T, S)
    decide(led, st("instance_gone", reason="instance i-1 was stopped"), T + 30, S)  # the explanation: sent
    for i, s in enumerate(["agent_silent", "hung", "agent_silent", "late"]):
        decide(led, st(s), T + 60 + i * 30, S)
    assert kinds(led) == [("alert", "agent_silent"), ("alert", "instance_gone")]
    assert led.incident["state"] == "instance_gone"
    decide(led, st("agent_silent"), T + 3700, S)  # still muted, but the instance_gone incident repeats
    assert kinds(led)[-1] == ("repeat", "instance_gone") and "stopped" in led.outbox[-1]["reason"]
    decide(led, st("healthy"), T + 4000, S)
    assert kinds(led)[-1] == ("resolved", "healthy") and led.outbox[-1]["was_state"] == "instance_gone"


def test_snooze_mutes_alert_and_repeats_but_not_the_outcome():
    led = Ledger("r-20270101-000000", snooze_until=T + 4 * 3600)
    for i in range(0, 4 * 3600, 300):
        decide(led, st("hung"), T + i, S)
    assert led.outbox == [] and led.incident["alerted"] is False
    decide(led, st("hung"), T + 4 * 3600 + 1, S)  # snooze over, still hung: the alert goes out now
    assert kinds(led) == [("alert", "hung")]
    led.snooze_until = T + 10 * 3600
    decide(led, st("hung"), T + 6 * 3600, S)  # repeat due, but snoozed again
    assert len(led.outbox) == 1
    decide(led, st("completed"), T + 7 * 3600, S)
    assert kinds(led)[-1] == ("final", "completed")


def test_muted_incident_resolves_silently():
    led = Ledger("r-20270101-000000", snooze_until=T + 3600)
    decide(led, st("agent_silent"), T, S)
    decide(led, st("healthy"), T + 60, S)
    assert led.outbox == [] and led.incident is None


def test_backfill_records_old_news_without_sending():
    led = Ledger("r-20270101-000000")
    decide(led, st("completed", since=T - 3 * 86400), T, S, first_sight=True)
    assert led.outbox == [] and led.closed and led.sent[-1]["kind"] == "backfill"
    old_silent = Ledger("r-20270101-000000")
    decide(old_silent, st("agent_silent", since=T - 3 * 86400), T, S, first_sight=True)
    assert old_silent.outbox == [] and old_silent.closed
    fresh = Ledger("r-20270101-000000")
    decide(fresh, st("failed", since=T - 60), T, S, first_sight=True)
    assert kinds(fresh) == [("final", "failed")]


def test_leases_keep_a_second_watcher_off_a_claimed_message():
    led = Ledger("r-20270101-000000")
    decide(led, st("failed"), T, S)
    assert len(claim_outbox(led, "a", T, 120)) == 1
    assert claim_outbox(led, "b", T + 10, 120) == []
    assert len(claim_outbox(led, "b", T + 121, 120)) == 1  # a's lease ran out: b takes over
    assert not record_result(led, led.outbox[0]["id"], "a", T + 122, True, "slack-webhook")
    assert record_result(led, led.outbox[0]["id"], "b", T + 122, True, "slack-webhook")
    assert led.outbox == [] and led.sent[-1]["via"] == "slack-webhook" and led.finished


def test_failed_send_is_released_for_the_next_sweep():
    led = Ledger("r-20270101-000000")
    decide(led, st("hung"), T, S)
    [msg] = claim_outbox(led, "a", T, 120)
    record_result(led, msg["id"], "a", T, False, "slack-webhook", "HTTP 500 error")
    assert led.outbox[0]["lease"] is None and led.outbox[0]["attempts"] == 1
    assert len(claim_outbox(led, "a", T + 30, 120)) == 1
