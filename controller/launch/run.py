"""`ctl launch`: resolve target -> connect -> facts/preflight -> setup -> stage -> start -> report.

Orchestration only: each step is a function in steps.py over the launch's state (context.py),
the words the user sees are in report.py. Every step is idempotent, so a launch killed anywhere
can simply be run again.
"""

from __future__ import annotations

import sys

from agent.protocol.errors import ConfigError
from agent.protocol.runid import new_run_id, validate_run_id
from agent.protocol.runstore import RunStore
from agent.protocol.stores import default_store_url, open_store
from controller.config import RunConfig
from controller.launch import plan, steps
from controller.launch.context import Launch, LaunchResult, Target, say
from controller.launch.report import follow_options, print_plan, report
from controller.launch.resume import resume_plan

__all__ = ["LaunchResult", "Target", "follow_options", "launch"]


def resolve(cfg: RunConfig, target: Target, run_id: str | None, resume: bool) -> Launch:
    """The store, the run id (new, relaunched or resumed), the wheel and the box layout; nothing
    touches the box yet. A finished run id is refused unless it is resumed."""
    store_url = cfg.store.url or default_store_url()
    if target.kind != "local" and not store_url.startswith("s3://"):
        raise ConfigError(f"store {store_url!r}: a remote box and this machine must share the store; "
                          f"use an s3:// store (store.url / --store)")
    run_id = validate_run_id(run_id) if run_id else new_run_id(cfg.name)
    rs = RunStore(open_store(store_url, endpoint_url=cfg.store.endpoint_url or None,
                             region=cfg.store.region or None))
    resuming = resume_plan(rs, run_id, say) if resume else None  # controller.launch.resume
    if not resuming and rs.finished(run_id):
        raise ConfigError(f"run {run_id} already finished in {rs.url}: pick a new --run-id (or omit it)")
    if target.kind == "local":
        cfg.setup.mode, cfg.setup.python = "current", sys.executable
    wheel = None
    if cfg.setup.mode == "venv":
        from controller.launch import wheel as wheels

        wheel = wheels.prebuilt(cfg.setup.wheel) if cfg.setup.wheel else wheels.build(say)
    lay = plan.Layout(cfg.box.data_root, plan.plan_hash(plan.install_plan(cfg, wheel)),
                      wheel.key if wheel else "", wheel.filename if wheel else "", cfg.setup.mode, cfg.setup.python)
    return Launch(cfg, target, run_id, rs, lay, wheel=wheel, resuming=resuming)


def launch(cfg: RunConfig, target: Target, run_id: str | None = None, dry_run: bool = False,
           resume: bool = False) -> LaunchResult:
    """Launch (or find already running) a run on the target; returns once the agent is started.

    `dry_run` stops after preflight and prints the steps a launch would run: facts are gathered
    (read-only), nothing is changed on the box or in the store.
    """
    c = resolve(cfg, target, run_id, resume)
    c.lap("prepare")
    c.box, c.info = steps.connect(cfg, target)
    try:
        c.lap("connect")
        setup_steps = steps.inspect(c)
        if setup_steps == "already_running":
            return c.result("already_running")
        if dry_run:
            print_plan(c, setup_steps)
            return c.result("dry_run")
        steps.setup(c, setup_steps)
        c.lap("setup")
        steps.stage(c)
        c.lap("stage")
        res = steps.start(c)
        c.lap("start")
    finally:
        c.box.close()
    return report(res, c)
