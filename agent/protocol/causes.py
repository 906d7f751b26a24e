"""Why did the trainer die? A pure, table-driven classifier from log tail, exit status and host facts.

`classify()` returns (cause, remediation, summary). Causes are stable snake_case ids that ops/
turns into alert texts; `REMEDIATION` holds the one line a tired on-call engineer can act on.
Rules are tried in table order, so the more specific evidence wins (a CUDA OOM message beats
the generic "killed" that follows it). Host facts the agent gathers:

- `stop_requested` (control/stop was seen), `agent_interrupted` (SIGTERM to the agent),
  `trainer_lost` (trainer gone while the agent was down, no exit status recoverable);
- `kernel_oom_lines` (kernel log lines about the OOM killer), `oom_kill_delta` (cgroup count);
- `last_loss` (from progress), `disk_free_bytes` (workdir volume);
- `artifact_missing` (what the agent did not find of the final artifacts the run declared).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

REMEDIATION: dict[str, str] = {
    "cuda_oom": "GPU memory ran out: lower train.per_device_batch_size (raise train.grad_accum to keep the "
                "effective batch) or tokenizer.max_seq_length (re-run ctl train prepare), keep "
                "train.gradient_checkpointing on; check with ctl train estimate, then relaunch.",
    "host_oom": "Host RAM ran out (kernel OOM killer): pre-tokenize with ctl train prepare (streams in bounded "
                "RAM), lower prepare.num_proc / prepare.batch_size, or use an instance with more RAM; then relaunch.",
    "nan_loss": "Loss became NaN/inf: lower train.learning_rate, keep train.max_grad_norm (e.g. 0.3), prefer bf16 over fp16, "
                "check the data for empty or garbage rows, resume from the last good checkpoint.",
    "disk_full": "Disk full: free space on /mnt/training (old checkpoints, HF cache) or grow the data volume, "
                 "lower train.save_total_limit, then relaunch.",
    "s3_access_denied": "S3 refused the request: check the instance profile's policy covers the bucket and prefix "
                        "(s3:GetObject, PutObject, ListBucket) and that the bucket name in the config is right.",
    "no_credentials": "No usable AWS credentials on the box: attach the instance profile (terraform apply) or "
                      "refresh expired credentials; never copy keys onto the box.",
    "missing_module": "A Python module is missing or broken on the box: rerun setup (ctl launch reinstalls "
                      "'.[train]' into the venv) and check the module named in the summary.",
    "command_not_found": "The trainer command could not be run (exit 126/127): check [trainer] command's first "
                         "word is installed in the box's venv or on its PATH (ctl launch's preflight lists it), "
                         "or use an absolute path; a script needs its execute bit (chmod +x); then relaunch.",
    "path_missing": "A file or folder the trainer needs is missing: check the model, dataset and output paths in "
                    "the config and that staging copied them to /mnt/training.",
    "artifact_missing": "The trainer exited 0 but a declared final artifact is not there: check the paths in "
                        "[trainer] artifacts / --artifact (relative to TRAINCTL_OUTPUT_DIR, or absolute) match where "
                        "the script saves (trainer.save_model(...)); the log shows what it wrote; relaunch.",
    "nccl_error": "NCCL/distributed communication failed: on a single-GPU g5 run without torchrun; otherwise rerun "
                  "with NCCL_DEBUG=INFO and check driver and NCCL versions match.",
    "cuda_driver_error": "GPU or driver fault: run nvidia-smi on the box; stop/start the instance to move to new "
                         "hardware, and check the AMI's driver matches the torch CUDA build.",
    "stopped_by_user": "Stopped on request (ctl stop). Nothing to fix; relaunch when wanted.",
    "trainer_lost": "The trainer vanished while the agent was down and left no exit status (box reboot or "
                    "kill -9 of the process group?): check the instance, then relaunch.",
    "interrupted": "The agent was told to shut down (reboot, spot interruption, systemctl stop): relaunch; "
                   "training resumes from the last saved checkpoint.",
    "runtime_cap": "The run reached its runtime cap and was stopped gracefully (its newest checkpoint is stored): "
                   "if it needs longer, raise max_runtime under [trainer] in run.toml (or --set "
                   "trainer.max_runtime=12h) and continue it with ctl launch ... --resume <run-id>; if it "
                   "looped, read the log first.",
    "cost_cap": "The run reached its spend cap and was stopped gracefully (its newest checkpoint is stored): if "
                "it is worth more, raise max_cost (USD) under [trainer] in run.toml (or --set "
                "trainer.max_cost=50) and continue it with ctl launch ... --resume <run-id>.",
    "unknown": "Unrecognised failure: read the last log lines in _error (ctl tail <run-id> --from-start), fix, relaunch.",
}


@dataclass(frozen=True)
class Rule:
    """One row of the table: a cause and how to recognise it."""

    cause: str
    patterns: tuple[str, ...] = ()
    check: Callable[[int | None, str | None, dict], str | None] | None = None  # returns a summary or None

    def __post_init__(self):
        object.__setattr__(self, "_rx", re.compile("|".join(self.patterns), re.I) if self.patterns else None)


def _killed(exit_code, sig) -> bool:
    return sig in ("SIGKILL", "9") or exit_code in (137, -9)


def _facts_flag(name, text):
    return lambda code, sig, facts: text if facts.get(name) else None


def _host_oom(code, sig, facts):
    if facts.get("oom_kill_delta", 0) > 0:
        return f"killed by the OOM killer (cgroup oom_kill count +{facts['oom_kill_delta']})"
    lines = facts.get("kernel_oom_lines") or []
    if lines and (_killed(code, sig) or code is None):
        return f"killed by the kernel OOM killer: {lines[-1].strip()[:200]}"
    return None


def _nan_loss(code, sig, facts):
    loss = facts.get("last_loss")
    if isinstance(loss, float) and (math.isnan(loss) or math.isinf(loss)):
        return f"last reported loss was {loss}"
    return None


def _disk_facts(code, sig, facts):
    free = facts.get("disk_free_bytes")
    if free is not None and free < facts.get("disk_low_bytes", 64 * 2**20) and code not in (0, None):
        return f"workdir volume has only {free // 2**20} MiB free"
    return None


def _artifact_missing(code, sig, facts):
    """The agent found a declared final artifact absent after a successful exit (its words, in the fact)."""
    what = facts.get("artifact_missing")
    return f"exit {code} but {what}" if what else None


def _not_runnable(code, sig, facts):
    """Exit 126 (found, not executable) or 127 (not found), the shell's and the agent's wrapper's codes."""
    if code == 127:
        return "trainer command not found (exit 127)"
    if code == 126:
        return "trainer command is not executable (exit 126)"
    return None


RULES: tuple[Rule, ...] = (
    Rule("stopped_by_user", check=_facts_flag("stop_requested", "stopped on request (control/stop)")),
    Rule("trainer_lost", check=_facts_flag("trainer_lost", "trainer lost while the agent was down")),
    Rule("interrupted", check=_facts_flag("agent_interrupted", "agent received SIGTERM and stopped the trainer")),
    Rule("artifact_missing", check=_artifact_missing),
    # Before the log rules: 126/127 mean the command never ran, so its log cannot outvote the exit code.
    Rule("command_not_found", check=_not_runnable),
    Rule("cuda_oom", (r"CUDA out of memory", r"torch\.(?:cuda\.)?OutOfMemoryError", r"CUDA error: out of memory",
                      r"CUBLAS_STATUS_ALLOC_FAILED", r"cudaErrorMemoryAllocation", r"out of memory on device",
                      r"HIP out of memory")),
    Rule("host_oom", (r"Out of memory: Killed process", r"oom-kill:", r"oom_reaper", r"\bMemoryError\b",
                      r"Cannot allocate memory", r"subprocesses has abruptly died", r"std::bad_alloc",
                      r"memory cgroup out of memory"), check=_host_oom),
    Rule("disk_full", (r"No space left on device", r"\bENOSPC\b", r"\[Errno 28\]", r"Disk quota exceeded",
                       r"not enough free disk space"), check=_disk_facts),
    Rule("nan_loss", (r"loss[\"']?\s*[:=]\s*[\"']?(?:nan|-?inf)\b", r"loss is (?:nan|inf)", r"nan or inf",
                      r"non-finite loss", r"Detected (?:nan|inf)", r"anomaly.*returned nan"), check=_nan_loss),
    Rule("no_credentials", (r"NoCredentialsError", r"Unable to locate credentials", r"ExpiredToken",
                            r"security token included in the request is (?:expired|invalid)",
                            r"InvalidClientTokenId", r"credentials? (?:have|has) expired")),
    Rule("s3_access_denied", (r"AccessDenied", r"\(403\).*(?:Object|Bucket|S3)", r"(?:Object|Bucket|S3).*\(403\)",
                              r"InvalidAccessKeyId", r"SignatureDoesNotMatch", r"AllAccessDisabled",
                              r"403 Forbidden.*s3", r"HeadObject operation: Forbidden")),
    Rule("missing_module", (r"ModuleNotFoundError", r"No module named", r"ImportError", r"cannot import name",
                            r"undefined symbol:", r"requires the .* library but it was not found")),
    Rule("nccl_error", (r"\bNCCL error\b", r"ncclSystemError", r"ncclInternalError", r"ncclUnhandledCudaError",
                        r"ncclRemoteError", r"NCCL WARN", r"ProcessGroupNCCL", r"collective operation timeout")),
    Rule("cuda_driver_error", (r"CUDA driver version is insufficient", r"no CUDA-capable device",
                               r"Found no NVIDIA driver", r"NVIDIA-SMI has failed", r"cudaErrorNoDevice",
                               r"CUDA error: (?:unknown error|an illegal memory access|uncorrectable ECC)",
                               r"\bXid\b", r"CUDA Setup failed", r"libcudart\.so.*not found",
                               r"compiled without GPU support", r"CUDA initialization", r"cudaErrorLaunchFailure",
                               r"GPU has fallen off the bus", r"NVIDIA driver on your system is too old",
                               r"No CUDA GPUs are available")),
    Rule("command_not_found", (r"^trainctl: cannot start the trainer", r"command not found", r": not found$")),
    Rule("path_missing", (r"FileNotFoundError", r"No such file or directory", r"does not appear to have a file named",
                          r"is not a local folder and is not a valid model identifier", r"HFValidationError",
                          r"Repository Not Found", r"Can't load (?:tokenizer|config|the model)", r"NoSuchKey",
                          r"NoSuchBucket", r"Unable to find '.*'")),
)


def classify(log_tail: list[str], exit_code: int | None, signal: str | None,
             host_facts: dict) -> tuple[str, str, str]:
    """(cause, remediation, one-line summary) for a trainer that ended without success."""
    facts = host_facts or {}
    lines = [ln.rstrip("\r\n") for ln in log_tail]
    # Kernel OOM lines only explain a trainer that was killed, not one that exited by itself.
    killed = _killed(exit_code, signal) or (exit_code is None and signal is None)
    kernel = [ln.rstrip("\n") for ln in facts.get("kernel_oom_lines") or []] if killed else []
    for rule in RULES:
        if rule.check:
            summary = rule.check(exit_code, signal, facts)
            if summary:
                return rule.cause, REMEDIATION[rule.cause], summary
        if rule._rx is not None:
            # The last matching line is usually the exception; earlier ones are often warnings.
            for line in reversed(lines + kernel if rule.cause == "host_oom" else lines):
                if rule._rx.search(line):
                    return rule.cause, REMEDIATION[rule.cause], line.strip()[:300]
    return "unknown", REMEDIATION["unknown"], _fallback_summary(lines, exit_code, signal)


def _fallback_summary(lines: list[str], exit_code: int | None, signal: str | None) -> str:
    if signal:
        how = f"killed by {signal}"
        if signal in ("SIGKILL", "9"):
            how += " (not the kernel OOM killer as far as the kernel log shows; check dmesg)"
    elif exit_code is not None:
        how = f"exited with code {exit_code}"
    else:
        how = "ended with no exit status"
    last = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return f"{how}; last line: {last[:200]}" if last else how
