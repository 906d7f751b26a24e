"""Every interval and limit of the agent, in one place, so tests and benchmarks can scale them down."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AgentSettings:
    """Agent timings (seconds) and limits. Defaults suit a real multi-hour training run."""

    heartbeat_s: float = 30.0
    log_flush_s: float = 2.0
    latest_s: float = 10.0  # logs/training_log_latest.txt at most this often
    progress_s: float = 5.0  # progress.json at most this often
    history_s: float = 60.0  # history.json (loss curve) at most this often (and once more at the end)
    stop_poll_s: float = 10.0  # how often control/stop is checked
    stop_grace_s: float = 30.0  # SIGINT -> SIGTERM
    kill_grace_s: float = 30.0  # SIGTERM -> SIGKILL
    partial_line_s: float = 10.0  # an unterminated line is shipped after waiting this long
    retry_max_s: float = 30.0  # longest backoff between store attempts during an outage
    finalize_timeout_s: float = 3600.0  # how long to keep trying to deliver the final logs and marker
    shutdown_timeout_s: float = 60.0  # the same, when the agent itself was told to stop (SIGTERM)
    tick_s: float = 0.25  # main loop poll interval (trainer exit, signals)
    store_timeout_s: float = 10.0  # connect/read timeout of one store call
    nice: int = 10  # the agent's CPU priority once the trainer runs: the trainer wins any contention
    imds_endpoint: str = "auto"  # spot notices (agent.spot): auto = IMDS when on EC2; off; or a URL
    imds_poll_s: float = 5.0  # how often IMDS is asked for a spot interruption notice
    imds_timeout_s: float = 1.0  # one IMDS request; off EC2 the first failure turns the watch off
    spot_checkpoint_s: float = 90.0  # notice -> SIGKILL if the trainer has not checkpointed and exited
    hourly_usd: float | None = None  # the box's price, from the controller: markers carry the run's cost
    price_basis: str | None = None  # "spot" or "on-demand": which price hourly_usd is
    max_runtime_s: float | None = None  # runtime cap (agent.daemon.caps): stop the trainer gracefully at it
    max_cost_usd: float | None = None  # spend cap in USD at hourly_usd (no price given: not enforced)
    oom_retries: int = 0  # restarts at half the micro-batch after cuda_oom (agent.daemon.oomretry)
    micro_batch: int | None = None  # a user trainer's sizes when it does not report them in its progress file
    grad_accum: int | None = None
    resume_args: tuple[str, ...] = ()  # appended to the command on an OOM restart (a user trainer's resume flag)
    # Any trainer (run.toml [trainer], `ctl agent run` flags): progress, final outputs, checkpoints.
    progress_regex: str | None = None  # named groups step/total/loss/lr, for output outputparse cannot read
    read_output: bool = True  # read progress from the trainer's output when its progress file has none
    artifacts: tuple[str, ...] = ()  # final outputs, relative to the trainer's output dir or absolute
    checkpoints: str | None = None  # the folder of HF-style checkpoint-N folders, uploaded as each completes
    checkpoint_settle_s: float = 30.0  # a checkpoint folder with no trainer state file counts once this still
    checkpoint_scan_s: float = 1.0  # how often the checkpoints folder is listed
    save_scan_s: float = 3.0  # with no checkpoints folder set: how often saves are looked for (agent.daemon.saves)
    # The RAM this run may use when less than the box has (a container limit psutil does not see, a
    # shared box): samples then measure the run itself (agent + trainer RSS) against it.
    ram_total_bytes: int | None = None
