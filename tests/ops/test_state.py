"""Table tests of the pure `assess`: one row per situation, time passed in."""

from __future__ import annotations

import pytest

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from ops.facts import observe
from ops.state import InstanceInfo, RunFacts, Settings, assess
from tests.ops.test_fakes import T0, beat, make_run

RID = "mistral-20270115-080000"
S = Settings()


def md(created_ago=600, phase="training", heartbeat_s=30.0, instance_id=None):
    return p.Metadata(run_id=RID, created=T0 - created_ago, phase=phase, heartbeat_s=heartbeat_s,
                      instance_id=instance_id)


def hb(age=5, step=100, progress_age=10, phase="training", alive=True, heartbeat_s=30.0):
    return p.Heartbeat(ts=T0 - age, seq=7, agent_pid=1, trainer_alive=alive, heartbeat_s=heartbeat_s, phase=phase,
                       last_progress_ts=None if progress_age is None else T0 - progress_age, last_step=step)


def err(cause="cuda_oom"):
    return p.ErrorMarker(ts=T0 - 30, cause=cause, remediation="x", summary=f"{cause}: it broke", phase="training")


def done():
    return p.CompleteMarker(ts=T0 - 20, duration_s=3600, final_metrics={"loss": 0.9})


def inst(state, code=None, at=T0 - 120):
    return InstanceInfo("i-0123456789abcdef0", state, reason_code=code, transition_at=at)


# (id, facts kwargs, settings, expected state, expected `since` or None for "don't check", text in reason)
ROWS = [
    ("empty-folder", {}, S, "launching", None, "no metadata"),
    ("just-launched", dict(metadata=md(created_ago=60)), S, "launching", T0 - 60, "waiting for the first heartbeat"),
    ("never-heartbeat", dict(metadata=md(created_ago=1200)), S, "agent_silent", T0 - 1200 + 900, "never started"),
    ("healthy", dict(metadata=md(), heartbeat=hb()), S, "healthy", T0 - 5, "fresh"),
    ("healthy-at-interval", dict(metadata=md(), heartbeat=hb(age=30)), S, "healthy", None, "fresh"),
    ("late", dict(metadata=md(), heartbeat=hb(age=45)), S, "late", T0 - 45 + 30, "grace"),
    ("late-at-grace-edge", dict(metadata=md(), heartbeat=hb(age=90)), S, "late", None, "grace"),
    ("silent-just-past", dict(metadata=md(), heartbeat=hb(age=91)), S, "agent_silent", T0 - 91 + 90, "no heartbeat"),
    ("silent-hours", dict(metadata=md(), heartbeat=hb(age=7200)), S, "agent_silent", T0 - 7200 + 90, "2h 00m"),
    ("run-own-heartbeat-interval", dict(metadata=md(heartbeat_s=10), heartbeat=hb(age=75, heartbeat_s=10)), S,
     "agent_silent", T0 - 75 + 70, "every 10s"),
    ("settings-override-interval", dict(metadata=md(), heartbeat=hb(age=75)), Settings(heartbeat_s=10),
     "agent_silent", None, "no heartbeat"),
    ("hung-training", dict(metadata=md(), heartbeat=hb(progress_age=960)), S, "hung", T0 - 960 + 900, "step 100"),
    ("slow-but-ok", dict(metadata=md(), heartbeat=hb(progress_age=840)), S, "healthy", None, "fresh"),
    ("model-download-long", dict(metadata=md(phase="loading_model"),
                                 heartbeat=hb(step=None, progress_age=1800, phase="loading_model")), S,
     "healthy", None, "fresh"),
    ("data-prep-stuck", dict(metadata=md(phase="preparing_data"),
                             heartbeat=hb(step=None, progress_age=3700, phase="preparing_data")), S,
     "hung", T0 - 3700 + 3600, "before the first step"),
    ("first-step-pending", dict(metadata=md(), heartbeat=hb(step=None, progress_age=1800)), S, "healthy", None, ""),
    ("no-progress-ts-uses-created", dict(metadata=md(created_ago=4000, phase="setup"),
                                         heartbeat=hb(step=None, progress_age=None, phase="setup")), S,
     "hung", T0 - 4000 + 3600, "phase setup"),
    ("trainer-gone", dict(metadata=md(), heartbeat=hb(alive=False, progress_age=1000)), S, "hung", None,
     "trainer process is gone"),
    ("hung-beats-late", dict(metadata=md(), heartbeat=hb(age=50, progress_age=1000)), S, "hung", None, ""),
    ("failed", dict(metadata=md(), heartbeat=hb(), has_error=True, error=err()), S, "failed", T0 - 30,
     "cuda_oom: it broke"),
    ("stopped-marker", dict(metadata=md(), has_error=True, error=err("stopped_by_user")), S,
     "stopped_by_user", T0 - 30, ""),
    ("completed", dict(metadata=md(), heartbeat=hb(age=500), has_complete=True, complete=done()), S,
     "completed", T0 - 20, "verified"),
    ("both-markers-corrupt", dict(metadata=md(), has_error=True, error=err(), has_complete=True,
                                  complete=done()), S, "corrupt", T0 - 20, "both _error and _complete"),
    ("error-unreadable", dict(metadata=md(), has_error=True), S, "failed", None, "cannot be read"),
    ("instance-stopped", dict(metadata=md(instance_id="i-0123456789abcdef0"), heartbeat=hb(age=300),
                              instance=inst("stopped", "Client.UserInitiatedShutdown")), S, "instance_gone",
     T0 - 120, "was stopped by a user"),
    ("spot-terminated", dict(metadata=md(), heartbeat=hb(age=10),
                             instance=inst("terminated", "Server.SpotInstanceTermination")), S, "instance_gone",
     None, "terminated by spot interruption at"),
    ("instance-unknown-to-ec2", dict(metadata=md(), heartbeat=hb(age=300), instance=inst("not-found", at=None)),
     S, "instance_gone", None, "no longer exists"),
    ("instance-running-agent-dead", dict(metadata=md(), heartbeat=hb(age=300), instance=inst("running")), S,
     "agent_silent", None, "no heartbeat"),
    ("markers-beat-instance", dict(metadata=md(), has_complete=True, complete=done(), instance=inst("stopped")), S,
     "completed", None, ""),
    ("clock-skew-small", dict(metadata=md(), heartbeat=hb(age=-60)), S, "healthy", None, "ahead"),
    ("clock-skew-large", dict(metadata=md(), heartbeat=hb(age=-3600)), S, "agent_silent", None, "in the future"),
    ("heartbeat-not-json", dict(metadata=md(), heartbeat_problem="not JSON"), S, "agent_silent", None,
     "unreadable"),
    ("stop-requested-agent-gone", dict(metadata=md(), heartbeat=hb(age=600), stop_requested=True), S,
     "stopped_by_user", None, "stop was requested"),
    ("stop-before-first-beat", dict(metadata=md(created_ago=2000), stop_requested=True), S, "stopped_by_user",
     None, ""),
    ("stopping-not-hung", dict(metadata=md(), heartbeat=hb(progress_age=2000), stop_requested=True), S,
     "healthy", None, ""),
    ("scaled-settings", dict(metadata=md(), heartbeat=hb(age=2, heartbeat_s=0.3, progress_age=1)), Settings().scaled(0.01), "agent_silent", None,
     "grace 0s"),
]


@pytest.mark.parametrize("name,kw,settings,state,since,text", ROWS, ids=[r[0] for r in ROWS])
def test_assess_table(name, kw, settings, state, since, text):
    st = assess(RunFacts(RID, **kw), T0, settings)
    assert st.state == state, st.reason
    if since is not None:
        assert st.since == pytest.approx(since)
    assert text in st.reason


def test_table_is_large_enough():
    assert len(ROWS) >= 25


def test_clock_skew_is_reported():
    st = assess(RunFacts(RID, metadata=md(), heartbeat=hb(age=-60)), T0, S)
    assert st.clock_skew_s == pytest.approx(60)


def test_heartbeat_not_json_in_store(local_store):
    """A heartbeat.json that is not JSON is read as a problem, not a crash, and the run is silent."""
    rs = RunStore(local_store)
    rid = make_run(rs)
    local_store.put(rs.k(rid, p.HEARTBEAT), b"{this is not json")
    obs = observe(rs, rid, T0, S)
    assert obs.facts.heartbeat is None and "not JSON" in obs.facts.heartbeat_problem
    assert assess(obs.facts, T0, S).state == "agent_silent"


def test_observe_reads_markers_and_caches_metadata(local_store):
    rs = RunStore(local_store)
    rid = make_run(rs, instance_id="i-0123456789abcdef0", region="eu-west-1")
    obs = observe(rs, rid, T0, S)
    assert obs.cache["instance_id"] == "i-0123456789abcdef0" and obs.cache["region"] == "eu-west-1"
    assert not obs.facts.has_error and not obs.facts.has_complete
    beat(rs, rid, T0 - 500)
    stale = observe(rs, rid, T0, S)
    assert assess(stale.facts, T0, S).state == "agent_silent"
