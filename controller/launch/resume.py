"""`ctl launch --resume <run-id>`: continue an interrupted run on this (or another) box from its
stored checkpoint, under the same run id.

Three steps, in launch order:
1. `plan_resume` (before anything touches the box): the run has an `_error` marker (not
   `_complete`) and a whole checkpoint in `artifacts/checkpoint-<step>/`; the one the marker
   names wins, else the highest step.
2. `fetch_checkpoint` (after setup and staging): files an earlier attempt left in the workdir
   (agent state, spool, progress) are set aside under `attempt-<ts>/`, so the new agent starts
   afresh instead of re-finishing the old attempt; the checkpoint is copied into the workdir's
   `output/`, where the trainer resumes from the highest complete `checkpoint-N`.
3. `claim` (just before the agent starts): the old `_error` moves to `attempts/<n>/_error`
   with a create-only write (agent.protocol.attempts.archive_error), so two racing resumes cannot both
   go on, and the new agent no longer finds a terminal marker; the watcher's ledger moves beside
   it and the run leaves the watcher's done index, so the new attempt is watched afresh.
The run's config comes from the run.toml given to this launch, as for any launch: pass the
same one (the trainer's schedule must match for the saved optimizer state to make sense).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

from agent.protocol import records as p
from agent.protocol.attempts import (
    StoredCheckpoint,
    archive_error,
    check_resumable,
    download_checkpoint,
    newest_stored_checkpoint,
    reset_watch_state,
    restore_error,
)
from agent.protocol.errors import ConfigError
from agent.protocol.runstore import RunStore
from controller.launch.remote import Box, LocalBox


def _say(msg: str) -> None:
    print(msg, flush=True)


@dataclass(frozen=True)
class ResumePlan:
    run_id: str
    marker: p.ErrorMarker
    checkpoint: StoredCheckpoint


def plan_resume(rs: RunStore, run_id: str) -> ResumePlan:
    """Check the run can be resumed and pick its checkpoint; a clear error otherwise."""
    marker = check_resumable(rs, run_id)
    ckpt = newest_stored_checkpoint(rs, run_id, preferred=marker.checkpoint)
    if ckpt is None:
        raise ConfigError(f"run {run_id} ({marker.cause}) has no checkpoint under "
                          f"{rs.artifact_location(run_id)}: resuming would start at step 0; "
                          f"launch a new run instead (omit --resume)")
    return ResumePlan(run_id, marker, ckpt)


def describe(plan: ResumePlan) -> str:
    return (f"resuming {plan.run_id} ({plan.marker.cause}, last step {plan.marker.last_step}) from "
            f"{plan.checkpoint.name} (step {plan.checkpoint.step})")


def set_aside_script(workdir: str, stamp: int) -> str:
    """Shell that moves an earlier attempt's agent files out of the way (pure; no-op on a fresh box)."""
    wd, aside = shlex.quote(workdir), shlex.quote(f"{workdir}/attempt-{stamp}")
    names = " ".join(shlex.quote(n) for n in p.WD_ATTEMPT_FILES)
    return (f"if [ -e {wd}/{p.WD_STATE} ]; then mkdir -p {aside} && for f in {names}; do "
            f"[ -e {wd}/$f ] && mv -f {wd}/$f {aside}/; done; echo set-aside; fi; true")


def fetch_checkpoint(box: Box, rs: RunStore, plan: ResumePlan, workdir: str, boxside, say=_say) -> str:
    """Put the checkpoint into `<workdir>/output/` on the box. `boxside(spec)` runs a box-side stage
    (SSH boxes reach the S3 store themselves). Returns the checkpoint's folder on the box."""
    r = box.check(set_aside_script(workdir, int(time.time())), "setting the earlier attempt's files aside")
    if "set-aside" in r.stdout:
        say(f"resume: the earlier attempt's agent files in {workdir} were moved to {workdir}/attempt-*/")
    ckpt = plan.checkpoint
    output = f"{workdir}/{p.WD_OUTPUT}"
    final = f"{output}/{ckpt.name}"
    if isinstance(box, LocalBox):
        download_checkpoint(rs, ckpt, Path(output))
    else:
        partial = f"{final}.partial"
        boxside({"targets": [{"name": "checkpoint", "src": rs.artifact_location(plan.run_id, f"{ckpt.name}/"), "dest": partial}]})
        q, qp = shlex.quote(final), shlex.quote(partial)
        box.check(f"rm -f {qp}/.trainctl-manifest.json && rm -rf {q} && mv {qp} {q}", "placing the checkpoint")
    say(f"resume: {ckpt.name} copied to {final}")
    return final


def claim(rs: RunStore, plan: ResumePlan, say=_say) -> int:
    """Archive the old `_error` (create-only) so the new agent may write the run; returns the attempt number."""
    n = archive_error(rs, plan.run_id)
    reset_watch_state(rs, plan.run_id, n)
    say(f"resume: attempt {n}'s _error archived as {rs.location(plan.run_id, p.attempt_name(n, p.ERROR))}")
    return n


def resume_plan(rs: RunStore, run_id: str, say=_say) -> ResumePlan:
    """Step 1 for `launch`: the plan, announced."""
    plan = plan_resume(rs, run_id)
    say(describe(plan))
    return plan


def resume_box(box: Box, rs: RunStore, plan: ResumePlan, workdir: str, boxside, say=_say) -> int:
    """Steps 2 and 3 for `launch`, right before the agent starts: checkpoint in place, then the claim."""
    fetch_checkpoint(box, rs, plan, workdir, boxside, say)
    return claim(rs, plan, say)


def unclaim(rs: RunStore, plan: ResumePlan, n: int, say=_say) -> None:
    """Undo `claim` when the agent did not start because the box was busy."""
    if restore_error(rs, plan.run_id, n):
        say(f"resume: {plan.run_id} was not started; its _error is back, resume it again when the box is free")
