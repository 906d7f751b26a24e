"""Fake runs for the ops tests, written through RunStore and the protocol records (never raw JSON).

Also holds the secrets planted in fake logs, so every payload test can assert none leaks.
"""

from __future__ import annotations

from agent.protocol import records as p
from agent.protocol.causes import REMEDIATION
from agent.protocol.runstore import RunStore

T0 = 1_800_000_000.0  # a fixed "now": tests pass time in, they never sleep

SECRETS = ("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "hf_abcdefghijklmnopqrstuvwxyzABCDEF1234", "xoxb-123456789012-abcdefghijkl",
           "testwebhooksecret0001")
SECRET_LINES = [f"export AWS_ACCESS_KEY_ID={SECRETS[0]}", f"aws_secret_access_key = {SECRETS[1]}",
                f"huggingface token {SECRETS[2]}", f"slack bot {SECRETS[3]}"]


def run_id(name: str = "mistral", stamp: str = "20270115-080000") -> str:
    return f"{name}-{stamp}"


def make_run(rs: RunStore, name: str = "mistral", *, now: float = T0, created_ago: float = 600,
             hb_age: float | None = 5, phase: str = "training", step: int | None = 100,
             progress_age: float = 10, instance_id: str | None = None, region: str | None = None,
             trainer_alive: bool = True, heartbeat_s: float = 30.0, loss: float = 1.2345,
             stamp: str = "20270115-080000", log: list[str] | None = None) -> str:
    """A run as the agent leaves it mid-training; returns its id."""
    rid = run_id(name, stamp)
    rs.write_metadata(p.Metadata(run_id=rid, created=now - created_ago, phase=phase, instance_id=instance_id,
                                 instance_type="g5.2xlarge" if instance_id else None, region=region,
                                 heartbeat_s=heartbeat_s, trainer_pid=31337))
    if hb_age is not None:
        beat(rs, rid, now - hb_age, step=step, phase=phase, progress_ts=now - progress_age,
             trainer_alive=trainer_alive, heartbeat_s=heartbeat_s)
    if step is not None:
        rs.write_progress(rid, p.Progress(ts=now - progress_age, step=step, total_steps=1000, loss=loss,
                                          phase=phase, epoch=0.1))
    if log is not None:
        rs.write_latest_log(rid, "\n".join(log) + "\n")
    return rid


def beat(rs: RunStore, rid: str, ts: float, *, step: int | None = 100, phase: str = "training",
         progress_ts: float | None = None, trainer_alive: bool = True, heartbeat_s: float = 30.0,
         seq: int = 1) -> None:
    """One heartbeat at `ts`."""
    rs.write_heartbeat(rid, p.Heartbeat(ts=ts, seq=seq, agent_pid=4242, trainer_alive=trainer_alive,
                                        heartbeat_s=heartbeat_s, trainer_pid=31337, phase=phase,
                                        last_progress_ts=progress_ts if progress_ts is not None else ts,
                                        last_step=step))


def fail(rs: RunStore, rid: str, ts: float, cause: str = "cuda_oom", *, summary: str | None = None,
         log_tail: list[str] | None = None, phase: str = "training") -> None:
    """The agent's `_error` marker."""
    assert rs.write_error(rid, p.ErrorMarker(
        ts=ts, cause=cause, remediation=REMEDIATION[cause], summary=summary or f"{cause} happened",
        exit_code=1, phase=phase, duration_s=2700.0, last_step=420, last_loss=1.75,
        log_tail=log_tail if log_tail is not None else ["step 420 loss 1.75", "RuntimeError: boom"]))


def complete(rs: RunStore, rid: str, ts: float, loss: float = 0.8765) -> None:
    """The agent's `_complete` marker with one verified artifact."""
    uri = rs.store.location(rs.artifact_key(rid, "adapter/"))
    assert rs.write_complete(rid, p.CompleteMarker(
        ts=ts, duration_s=7260.0, final_metrics={"loss": loss, "eval_loss": loss + 0.1},
        artifacts=[{"name": "adapter", "uri": uri, "size": 1234567}], cost_usd=2.42))


def assert_no_secret(obj) -> None:
    text = repr(obj)
    for s in SECRETS:
        assert s not in text, f"secret {s[:6]}... leaked"
