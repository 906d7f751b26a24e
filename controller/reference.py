"""The config reference in the docs, generated from the schemas so it cannot drift.

`python -m controller.reference > docs/config-reference.md` and `python -m controller.reference
runbook > docs/runbook.md`; a test fails when a file and its source disagree. Help texts come from field metadata (run.toml) or the trailing comment
on the field's line; limits (choices, ranges) from the metadata `train.schema_walk.setting` gives
every schema.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys

_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def _comments(cls) -> dict[str, str]:
    try:
        lines = inspect.getsourcelines(cls)[0]
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for line in lines if (m := _COMMENT.match(line))}


def _type_name(t) -> str:
    return str(t).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _fmt_default(v) -> str:
    if isinstance(v, str):
        return f'`"{v}"`'
    if isinstance(v, bool):
        return f"`{str(v).lower()}`"
    if isinstance(v, list | tuple):
        return "`[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in v) + "]`"
    if isinstance(v, dict):
        return "`{}`" if not v else f"`{v}`"
    return f"`{v}`"


def rows(cls, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) for every leaf key of a config dataclass, tables flattened."""
    out, comments = [], _comments(cls)
    for f in dataclasses.fields(cls):
        default = _default(f)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(default):
            out.extend(rows(type(default), key + "."))
            continue
        if isinstance(default, list) and not default and "list[" in str(f.type) and \
                not str(f.type).endswith("[str]"):
            item = _item_class(cls, f)
            if item is not None:
                out.extend(rows(item, f"[[{key}]]."))
                continue
        meta = f.metadata or {}
        help_text = meta.get("help") or comments.get(f.name, "")
        extra = []
        if meta.get("choices"):
            extra.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
        lo, hi = meta.get("min"), meta.get("max")
        if lo is not None and hi is not None:
            extra.append(f"range {lo}..{hi}")
        elif lo is not None or hi is not None:
            extra.append(f">= {lo}" if lo is not None else f"<= {hi}")
        desc = "; ".join(x for x in [help_text, *extra] if x)
        out.append((key, _type_name(f.type), _fmt_default(default), desc))
    return out


def _item_class(cls, f):
    hints = inspect.get_annotations(cls, eval_str=True)
    args = getattr(hints.get(f.name), "__args__", ())
    return args[0] if args and dataclasses.is_dataclass(args[0]) else None


def table(title: str, intro: str, cls) -> str:
    lines = [f"## {title}", "", intro, "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k}` | {t} | {d} | {h.replace('|', '/')} |" for k, t, d, h in rows(cls)]
    return "\n".join(lines) + "\n"


def render() -> str:
    """The whole reference page."""
    from controller.config import RunConfig
    from train.schemas import DataConfig, TrainConfig

    parts = [
        "# Config reference\n\nGenerated from the schemas by `python -m controller.reference`; "
        "do not edit by hand. Unknown keys, wrong types and out-of-range values are refused with one "
        "line each before anything runs.\n",
        table("run.toml (`ctl launch`)", "Flags override the file (`--set section.key=value`); the resolved "
              "config is recorded in the run's `metadata.json`.", RunConfig),
        table("data.toml (`ctl train prepare`)", "Sources are read in the order listed: the last is loaded "
              "last.", DataConfig),
        table("train.toml (`ctl train sft`)", "`--set key=value` overrides the file; the resolved config is "
              "printed at start and saved beside the adapter.", TrainConfig),
    ]
    return "\n".join(parts)


# What each cause means, in the words an on-call engineer needs; the fix comes from the classifier.
CAUSE_MEANING = {
    "cuda_oom": "The trainer ran out of GPU memory (PyTorch `CUDA out of memory`, cuBLAS alloc failures).",
    "host_oom": "The kernel's OOM killer (or the cgroup) killed the trainer: host RAM, not GPU memory.",
    "nan_loss": "The loss became NaN or inf; the trainer stopped rather than train on garbage.",
    "disk_full": "A write failed with no space left on the device (checkpoints, caches, logs).",
    "s3_access_denied": "S3 answered AccessDenied / 403 to the trainer or the agent.",
    "no_credentials": "boto3 found no AWS credentials, or they expired.",
    "missing_module": "Python could not import a module (ModuleNotFoundError, ImportError, broken wheel).",
    "command_not_found": "The trainer command could not be started: its first word is not on the box's PATH "
                         "or venv (exit 127, `No such file or directory` from exec), or it is not executable (126).",
    "path_missing": "A model, dataset or output path the trainer was given does not exist.",
    "artifact_missing": "The trainer succeeded but a final artifact the run declared (`[trainer] artifacts`, "
                        "`--artifact`) was not where it was declared, so the run is not complete.",
    "nccl_error": "Distributed communication (NCCL / torch.distributed) failed.",
    "cuda_driver_error": "The GPU or its driver faulted (Xid, illegal memory access, driver/runtime mismatch).",
    "stopped_by_user": "Someone ran `ctl stop`; the agent stopped the trainer gracefully.",
    "trainer_lost": "The trainer disappeared while the agent was down and left no exit status.",
    "interrupted": "The agent was told to shut down (spot interruption, reboot, systemctl stop).",
    "runtime_cap": "The run reached `[trainer] max_runtime`; the agent stopped the trainer gracefully (checkpoint "
                   "first). The summary gives the runtime reached.",
    "cost_cap": "The run's cost (the box's hourly price times its runtime) reached `[trainer] max_cost`; the agent "
                "stopped the trainer gracefully (checkpoint first). The summary gives the dollars reached.",
    "unknown": "None of the rules matched; the last log lines in the alert are the evidence.",
}

WATCHER_STATES = {
    "late": "The heartbeat is older than heartbeat_s but still inside the grace period. No alert yet.",
    "agent_silent": "No heartbeat for heartbeat_s + grace: the agent or the box is down.",
    "hung": "The agent is alive but the trainer has made no step for its own deadline (learned from its step times, "
            "never above progress_timeout; evaluation and checkpoint saving get their own allowances; longer in setup "
            "phases), or, when no progress can be read from its output, has printed nothing for log_silence "
            "(`--log-silence`, default 15m). The alert's evidence says which.",
    "instance_gone": "EC2 says the instance is stopped, terminated or spot-reclaimed; mutes agent_silent and hung.",
    "interrupted": "The run ended with cause `interrupted` (spot reclaim, reboot): its checkpoint is in the store.",
    "corrupt": "Both `_error` and `_complete` exist, which the agent never writes: something else wrote a marker.",
}


def render_runbook() -> str:
    """The alert runbook: each cause and watcher state, what it means, what to do."""
    from agent.protocol.causes import REMEDIATION
    from ops.alerts.message import MessageFacts, watcher_remediation

    lines = ["# Alert runbook", "",
             "Generated by `python -m controller.reference runbook`; do not edit by hand. Every alert names a "
             "cause (from the agent's classifier, in `_error`) or a watcher state, and carries the fix below.", "",
             "## Failure causes (`_error`)", "", "| cause | what it means | what to do |", "| --- | --- | --- |"]
    for cause, fix in REMEDIATION.items():
        lines.append(f"| `{cause}` | {CAUSE_MEANING.get(cause, '')} | {fix.replace('|', '/')} |")
    lines += ["", "## Watcher states", "", "| state | what it means | what to do |", "| --- | --- | --- |"]
    facts = MessageFacts(run_id="<run-id>")
    for state, meaning in WATCHER_STATES.items():
        fix = watcher_remediation(state, "<run-id>", facts) or "Nothing yet; the watcher keeps looking."
        lines.append(f"| `{state}` | {meaning} | {fix.replace('|', '/')} |")
    lines += ["", "## Idle instances", "",
              "A running instance tagged `ManagedBy=trainctl` with no active run for `--orphan-after` (default 30m) "
              "alerts once with its hourly cost and the command to stop it: `aws ec2 stop-instances "
              "--instance-ids <id> --region <region>`. The box's own `ctl autostop` normally stops it first."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_runbook() if sys.argv[1:] == ["runbook"] else render())
