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


def test_a_stalled_run_someone_stopped_is_not_hung_for_the_watcher_either(local_store):
    """Fresh heartbeat, stalled progress, stop requested: observe reads control/stop, as `ctl status` does."""
    rs = RunStore(local_store)
    rid = make_run(rs, progress_age=4000)
    assert assess(observe(rs, rid, T0, S).facts, T0, S).state == "hung"
    assert rs.request_stop(rid, requested_by="test")
    facts = observe(rs, rid, T0, S).facts
    assert facts.stop_requested and assess(facts, T0, S).state != "hung"


# -- the adaptive deadline and log silence (issue 12): judged at the heartbeat's own ts -------------

def cad(step_ago=10.0, hung_after=60.0, p50=9.8, phase="training", phase_since_ago=None, eval_s=600.0,
        save_s=300.0, at=T0 - 5, learned=True):
    """A cadence record as the agent publishes it (Cadence.record()), its times counted back from `at`."""
    return {"step_p50_s": p50, "step_p95_s": p50 * 1.2, "gap_p95_s": p50 * 1.2, "hung_after_s": hung_after,
            "eval_allowance_s": eval_s, "save_allowance_s": save_s, "learned": learned, "steps_seen": 120,
            "evals_seen": 1, "saves_seen": 1, "last_step_ts": at - step_ago, "phase": phase,
            "phase_since": None if phase_since_ago is None else at - phase_since_ago}


def live(age=5.0, source="output", log_ago=2.0, cadence=None, step=120, progress_ago=None, phase="training",
         alive=True, gpus=({"index": 0, "util_percent": 0},)):
    """A new agent's heartbeat: progress source, last log byte and cadence; times counted back from its ts."""
    ts = T0 - age
    step_ago = progress_ago if progress_ago is not None else (
        (ts - cadence["last_step_ts"]) if cadence else 10.0)
    return p.Heartbeat(ts=ts, seq=9, agent_pid=1, trainer_alive=alive, phase=phase, last_step=step,
                       last_progress_ts=None if step is None else ts - step_ago,
                       progress_source=source, last_log_ts=None if log_ago is None else ts - log_ago,
                       cadence=cadence, gpus=list(gpus))


MD = md()
HANG_ROWS = [  # (id, heartbeat, settings, state, since or None, text in reason)
    ("warm-up: no cadence yet keeps the configured timeout", live(cadence=None, progress_ago=840), S, "healthy",
     None, "fresh"),
    ("warm-up: past the configured timeout", live(cadence=None, progress_ago=960), S, "hung", T0 - 5 - 960 + 900,
     "no training progress for 16m 00s (step 120"),
    ("warm-up record (not learned) keeps the configured timeout", live(cadence=cad(step_ago=300, learned=False)), S,
     "healthy", None, "fresh"),
    ("cadence: inside its own deadline", live(cadence=cad(step_ago=50)), S, "healthy", None, "fresh"),
    ("cadence: past its own deadline", live(cadence=cad(step_ago=120)), S, "hung", T0 - 5 - 120 + 60,
     "no training progress for 2m 00s (step 120, phase training; hung after 1m 00s from the run's own cadence)"),
    ("cadence: never above the configured timeout", live(cadence=cad(step_ago=1000, hung_after=3000)), S, "hung",
     T0 - 5 - 1000 + 900, "hung after 15m 00s"),
    ("cadence: a shorter configured timeout caps it", live(cadence=cad(step_ago=50)),
     Settings(progress_timeout_s=30), "hung", None, "hung after 30s"),
    ("evaluation: inside its allowance", live(cadence=cad(step_ago=300, phase="evaluating", phase_since_ago=290)),
     S, "healthy", None, "fresh"),
    ("evaluation: past deadline + allowance", live(cadence=cad(step_ago=700, phase="evaluating",
                                                              phase_since_ago=690)), S,
     "hung", T0 - 5 - 690 + 660, "evaluating allowance 10m 00s"),
    ("checkpoint save: inside its own allowance", live(cadence=cad(step_ago=300, phase="saving",
                                                                   phase_since_ago=290)), S, "healthy", None, ""),
    ("checkpoint save: past its own allowance", live(cadence=cad(step_ago=400, phase="saving",
                                                                 phase_since_ago=390)), S,
     "hung", T0 - 5 - 390 + 360, "saving allowance 5m 00s"),
    ("after an evaluation: a step's deadline from its end", live(cadence=cad(step_ago=400, phase="training",
                                                                             phase_since_ago=40)), S,
     "healthy", None, ""),
    ("slow tail: the learned deadline covers the slowest steps seen", live(cadence=cad(step_ago=70, p50=2.0,
                                                                                       hung_after=75)), S,
     "healthy", None, ""),
    ("slow tail: stopped past it", live(cadence=cad(step_ago=80, p50=2.0, hung_after=75)), S, "hung", None,
     "hung after 1m 15s"),
    ("clock skew: watcher ahead, heartbeat late: its age is not idle time", live(age=80, cadence=cad(
        step_ago=30, at=T0 - 80)), S, "late", None, "grace"),
    ("clock skew: watcher ahead, idle at the heartbeat's ts", live(age=80, cadence=cad(step_ago=70, at=T0 - 80)), S,
     "hung", None, "no training progress for 1m 10s"),
    ("clock skew: watcher behind, not hung by the watcher's clock", live(age=-60, cadence=cad(step_ago=30, at=T0 + 60)),
     S, "healthy", None, "agent clock 1m 00s ahead"),
    ("clock skew: watcher behind, hung at the heartbeat's ts", live(age=-60, cadence=cad(step_ago=70, at=T0 + 60)),
     S, "hung", T0 + 60 - 70 + 60, "no training progress for 1m 10s"),
    ("log silence: no progress source, silent past the limit", live(source=None, step=None, log_ago=960), S, "hung",
     T0 - 5 - 960 + 900, "no log output for 16m 00s while the agent is alive"),
    ("log silence: inside the limit", live(source=None, step=None, log_ago=840), S, "healthy", None, ""),
    ("log silence: the trainer is gone", live(source=None, step=None, log_ago=960, alive=False), S, "hung", None,
     "while the agent is alive but the trainer process is gone"),
    ("log silence: its own setting", live(source=None, step=None, log_ago=200), Settings(log_silence_s=180), "hung",
     None, "silent after 3m 00s"),
    ("log silence: a setup phase gets the setup timeout", live(source=None, step=None, log_ago=1800,
                                                               phase="loading_model"), S, "healthy", None, ""),
    ("log silence: a setup phase past the setup timeout", live(source=None, step=None, log_ago=3700,
                                                               phase="loading_model"), S, "hung", None,
     "no log output for 1h 01m"),
    ("no progress source but steady logs: never hung on missing progress", live(source=None, step=None, log_ago=1),
     S, "healthy", None, "fresh"),
    ("no progress source, stop requested: not hung", live(source=None, step=None, log_ago=5000), S, "healthy",
     None, ""),
]


@pytest.mark.parametrize("name,heartbeat,settings,state,since,text", HANG_ROWS, ids=[r[0] for r in HANG_ROWS])
def test_hang_rows(name, heartbeat, settings, state, since, text):
    stop = name.endswith("stop requested: not hung")
    old = md(created_ago=5 * 3600, phase="running")  # launched hours ago: every fixed timeout has passed
    st = assess(RunFacts(RID, metadata=old, heartbeat=heartbeat, stop_requested=stop), T0, settings)
    assert st.state == state, st.reason
    if since is not None:
        assert st.since == pytest.approx(since)
    assert text in st.reason
    assert st.evidence and st.evidence.endswith("(heartbeat)")


def test_evidence_reads_as_the_issue_asks():
    hb_ = live(age=5, log_ago=110, cadence=cad(step_ago=120, hung_after=60, p50=9.8))
    st = assess(RunFacts(RID, metadata=MD, heartbeat=hb_), T0, S)
    assert st.state == "hung"
    assert st.evidence == ("steps every 9.8s, last step 2m 00s ago, hung after 1m 00s, last log line 1m 50s ago, "
                           "GPU util 0% (heartbeat)")
    ev = assess(RunFacts(RID, metadata=MD, heartbeat=live(cadence=cad(step_ago=100, phase="evaluating",
                                                                       phase_since_ago=90))), T0, S).evidence
    assert "hung after 11m 00s (evaluating: +10m 00s)" in ev
    silent = assess(RunFacts(RID, metadata=MD, heartbeat=live(source=None, step=None, log_ago=30, gpus=())), T0, S)
    assert silent.evidence == "no progress source recognised, silent after 15m 00s, last log line 30s ago (heartbeat)"
    assert assess(RunFacts(RID, metadata=MD, heartbeat=hb()), T0, S).evidence == "last progress 5s ago (heartbeat)"


def test_a_record_from_the_real_cadence_is_judged_the_same():
    """The watcher reads the record agent.daemon.cadence publishes, field for field."""
    from agent.daemon.cadence import Cadence, CadenceSettings

    c = Cadence(CadenceSettings(floor_s=2.0))
    for i in range(1, 40):
        c.step(T0 - 400 + i * 2.0, i)  # every 2 s, last step at T0 - 322
    rec = c.record()
    healthy = live(age=0, cadence=rec, progress_ago=T0 - rec["last_step_ts"] - 300)
    assert assess(RunFacts(RID, metadata=MD, heartbeat=p.Heartbeat.from_dict(healthy.to_dict())), T0, S).state == "hung"
    fresh = p.Heartbeat.from_dict({**healthy.to_dict(), "ts": rec["last_step_ts"] + 3})
    st = assess(RunFacts(RID, metadata=MD, heartbeat=fresh), fresh.ts, S)
    assert st.state == "healthy" and "steps every 2s" in st.evidence
