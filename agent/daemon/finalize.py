"""The end of a run: deliver the rest of the log, decide complete-or-error, write exactly one marker.

Order matters for readers: logs, latest, progress, history and a last heartbeat go first, the
marker after them, and the metadata phase last, so nobody sees "completed" without `_complete`.
A store outage here is ridden out with backoff up to `finalize_timeout_s`; if it lasts longer the
agent exits non-zero with the spool intact, and a restarted agent finishes the job.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from agent.daemon import hostfacts
from agent.daemon.artifacts import ArtifactError, sync_artifact
from agent.daemon.backoff import Backoff
from agent.daemon.caps import stored_checkpoint
from agent.daemon.curve import write_loss_curve
from agent.daemon.progress import finite_or_str
from agent.daemon.trainer import ExitStatus
from agent.protocol import records as p
from agent.protocol.causes import REMEDIATION, classify
from agent.protocol.errors import StoreError
from agent.protocol.redact import redact

log = logging.getLogger("trainctl.agent")
_PERMANENT = ("s3_access_denied", "no_credentials")
PHASE_OF_CAUSE = {"stopped_by_user": "stopped", "interrupted": "interrupted"}
MIN_BILLED_S = 60.0  # EC2 Linux bills per second with a 60 s minimum (the same rule as ops.pricing)


def error_marker(status: ExitStatus, facts: dict, tail: list[str], *, phase: str | None, duration_s: float | None,
                 last_step: int | None, last_loss: float | None, summary: str | None = None,
                 cause: str | None = None, tail_lines: int = 50) -> p.ErrorMarker:
    """The `_error` record: classified cause (unless given), remediation, redacted last lines."""
    if cause is None:
        cause, remediation, found = classify(tail, status.exit_code, status.signal, facts)
        summary = summary or found
    else:
        remediation = REMEDIATION[cause]
    return p.ErrorMarker(
        ts=time.time(), cause=cause, remediation=remediation, summary=redact(summary or ""),
        exit_code=status.exit_code, signal=status.signal, phase=phase, duration_s=duration_s,
        last_step=last_step, last_loss=finite_or_str(last_loss), log_tail=[redact(x) for x in tail[-tail_lines:]])


def complete_marker(duration_s: float, final_metrics: dict, artifacts: list[dict]) -> p.CompleteMarker:
    """The `_complete` record; call only once every final artifact is verified in the store. Its
    reason says how many were verified, or that the run declared none (nothing to vouch for)."""
    n = len(artifacts)
    said = f"{n} artifact{'s' if n != 1 else ''} verified" if n else "no artifacts declared, none verified"
    return p.CompleteMarker(ts=time.time(), duration_s=duration_s, final_metrics=final_metrics, artifacts=artifacts,
                            artifacts_verified=n, reason=f"training finished; {said}")


def artifact_name(path: str) -> str:
    """The store name of a final output the run declared by path (`out/adapter/` -> `adapter`)."""
    base = Path(path.rstrip("/")).name
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("._-")[:100]
    return name or "output"


def final_artifacts(agent) -> dict[str, tuple[str, bool]]:
    """{name: (path, declared by path)}: what the trainer declared final (a later declaration wins),
    then what the run declared (`[trainer] artifacts`, `--artifact`)."""
    finals = {d.name: (d.path, False) for d in agent.progress.declared if d.final}
    for path in agent.s.artifacts:
        name = artifact_name(path)
        if name in finals and finals[name][0] != path:
            name = f"{name}-{len(finals)}"
        finals[name] = (path, True)
    return finals


def terminal_phase(marker: p.ErrorMarker | p.CompleteMarker) -> str:
    """The metadata phase that goes with a marker."""
    if isinstance(marker, p.CompleteMarker):
        return "completed"
    return PHASE_OF_CAUSE.get(marker.cause, "failed")


def gather_facts(agent, status: ExitStatus) -> dict:
    """Host facts for the classifier, looked up only when they can matter (OOM evidence on SIGKILL)."""
    st = agent.state
    facts = {"stop_requested": st.stop_seen, "agent_interrupted": st.interrupted and not st.stop_seen,
             "trainer_lost": status.lost, "last_loss": agent.progress.last_loss}
    facts["disk_free_bytes"] = hostfacts.host_stats(agent.wd.root).get("disk_free_bytes")
    if status.signal == "SIGKILL" or status.exit_code == 137 or status.lost:
        count = hostfacts.oom_kill_count()
        if count is not None and st.oom_kill_base is not None:
            facts["oom_kill_delta"] = count - st.oom_kill_base
        pids = {x for x in (st.wrapper_pid, agent.trainer.trainer_pid if agent.trainer else None,
                            agent.wd.read_pid(agent.wd.trainer_pid)) if x}
        facts["kernel_oom_lines"] = hostfacts.kernel_oom_lines(pids, since=st.started_ts)
    return facts


def decide(agent, status: ExitStatus, facts: dict, duration: float | None):
    """`_complete` if the trainer succeeded and every final artifact is verified, else `_error`."""
    tail = agent.oom.tail(200)  # after an OOM restart, only the last attempt's lines
    common = {"phase": agent.progress.phase, "duration_s": duration, "last_step": agent.progress.last_step,
              "last_loss": agent.progress.last_loss}
    if agent.spot.notice is not None and not status.ok:  # a trainer that finished anyway completes
        return agent.spot.interrupted_marker(agent, status, facts, tail, common)
    if (cap := agent.state.cap) is not None:  # stopped at a cap: its cause, even if the trainer then exited 0
        note, where = stored_checkpoint(agent)
        marker = error_marker(status, facts, tail, cause=cap["cause"], summary=f"{cap['summary']}; {note}", **common)
        marker.checkpoint = where
        return marker
    if not status.ok or facts["stop_requested"] or facts["agent_interrupted"]:
        return error_marker(status, facts, tail, **common)
    finals = final_artifacts(agent)
    verified = []
    apart = tuple(agent.stored_apart())
    for name, (path, _by_run) in finals.items():
        try:
            verified.append(sync_artifact(agent.rs, agent.run_id, agent.wd.output, name, path, True,
                                          apart).to_dict())
        except ArtifactError as exc:
            cause = "artifact_missing" if exc.absent else "path_missing" if exc.missing else "unknown"
            return error_marker(status, facts, tail, cause=cause, summary=f"exit 0 but {exc}", **common)
        except StoreError as exc:
            cause, _, _ = classify([str(exc)], None, None, {})
            if cause not in _PERMANENT:
                raise  # transient: the caller retries
            return error_marker(status, facts, tail, cause=cause, summary=f"artifact upload refused: {exc}", **common)
    others = [u.to_dict() for n, u in agent.artifacts.uploaded.items() if n not in finals]
    return complete_marker(duration or 0.0, agent.progress.final_metrics(), verified + others)


def finalize(agent, status: ExitStatus) -> int:
    """Deliver everything and the marker. 0 when a marker is in the store, 1 when the store never came back."""
    s = agent.s
    # Told to shut down (reboot, systemctl stop): do not outstay the service manager's patience; a
    # restarted agent recovers the exit status and delivers the rest.
    timeout = min(s.finalize_timeout_s, s.shutdown_timeout_s) if agent.state.interrupted else s.finalize_timeout_s
    deadline = time.monotonic() + timeout
    agent.progress.read_new()
    agent.output.finish()
    if agent.ckpts is not None:  # the trainer has ended: what it left is as complete as it gets
        agent.ckpts.scan(time.time(), final=status.ok)
    started = agent.state.started_ts
    duration = round(time.time() - started, 3) if started else None
    facts = gather_facts(agent, status)
    if agent.trainer is not None:
        left = agent.trainer.reap_stragglers()
        if left:
            log.warning("killed %d process(es) the trainer left behind: %s", len(left), left)
    backoff = Backoff(max_s=s.retry_max_s)
    marker, step = None, "log shipping"
    while True:
        now = time.monotonic()
        try:
            step = "log shipping"
            while agent.shipper.backlog() or agent.state.log.pending:
                agent.shipper.ship(now, final=True, max_chunks=64)
            agent.shipper.refresh_latest(now, force=True)
            step = "progress"
            if agent.progress.metrics or agent.progress.phase:
                agent.rs.write_progress(agent.run_id, agent.progress.record(time.time()))
                agent.rs.write_history(agent.run_id, agent.progress.history_points())
            write_loss_curve(agent)  # best effort, once: never holds up the marker
            step = "heartbeat"
            agent.heartbeat(alive=False, why=p.Heartbeat.WHY_FINAL)
            agent.sampler.flush()  # the samples' last stretch (this heartbeat's included), before the marker
            if marker is None:
                step = "artifacts"
                agent.wait_artifacts(max(0.0, deadline - time.monotonic()))  # incl. ones declared at the end
                marker = oom_story(agent, price(decide(agent, status, facts, duration), s, duration))
            step = "marker"
            _write_marker(agent, marker)
            step = "metadata"
            agent.write_metadata(terminal_phase(marker))
            _record_stats(agent)
            return 0
        except (StoreError, OSError) as exc:  # OSError: e.g. the workdir volume is full for the state file
            if time.monotonic() >= deadline:
                log.error("gave up delivering the end of run %s after %.0fs (%s): %s (the spool in %s is intact; "
                          "rerun the agent to finish)", agent.run_id, timeout, step, exc, agent.wd.root)
                return 1
            delay = backoff.failed(now, str(exc))
            log.warning("%s: store unreachable while finishing (retry in %.1fs): %s", step, delay, exc)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))


def price(marker, settings, duration_s: float | None):
    """Put the run's cost on its marker: the controller's hourly price (`--hourly-usd`, spot or
    on-demand as `--price-basis` says) times the agent's runtime, billed as EC2 bills Linux (per
    second, 60 s minimum, as ops.pricing). Unpriced (no price given, e.g. a local run): left None."""
    if settings.hourly_usd is None or duration_s is None:
        return marker
    marker.cost_usd = round(settings.hourly_usd * max(MIN_BILLED_S, duration_s) / 3600.0, 2)
    marker.price_basis = settings.price_basis or "on-demand"
    return marker


def oom_story(agent, marker):
    """After OOM restarts, the marker says so: `_error` lists the attempts, `_complete` says it recovered."""
    attempts = agent.state.oom_attempts
    if not attempts:
        return marker
    story = p.attempts_text(attempts)
    if isinstance(marker, p.CompleteMarker):
        marker.oom_attempts = attempts  # the watcher's one "recovered from OOM" notice reads it
        marker.reason = f"{marker.reason}; recovered from OOM: {story}"
    else:
        marker.summary = f"{marker.summary}; OOM retries: {story}"
    return marker


def _record_stats(agent) -> None:
    if agent.stats is None:
        return
    agent.state.stats = agent.stats.to_dict()
    agent.save_state()
    log.info("store requests this session: %d PUTs, %d bytes", agent.state.stats["puts"], agent.state.stats["put_bytes"])


def _write_marker(agent, marker) -> None:
    if isinstance(marker, p.CompleteMarker):
        wrote = agent.rs.write_complete(agent.run_id, marker)
        what = "_complete"
    else:
        wrote = agent.rs.write_error(agent.run_id, marker)
        what = f"_error ({marker.cause}: {marker.summary})"
    log.info("%s %s", "wrote" if wrote else "a marker already existed; did not write", what)
