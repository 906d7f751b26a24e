"""The alert a human reads: Block Kit blocks plus a plain-text fallback with the same content.

Built from slack_sdk.models.blocks so Block Kit's limits are checked here, not by Slack at
3 a.m. Every free text (reasons, summaries, log lines) goes through the agent's redactor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from agent.protocol import records as p
from agent.protocol.durations import fmt_duration
from agent.protocol.frames import last_frame
from agent.protocol.redact import redact
from ops import state as S
from ops.pricing import fmt_cost, hourly_price, run_cost
from ops.state import InstanceInfo

LOG_LINES = 15
LOG_CHARS = 2000  # well under the 3000-char section limit, with room for the fences
FIELD_CHARS = 1900

LABELS = {S.AGENT_SILENT: "Agent silent", S.HUNG: "Training hung", S.INSTANCE_GONE: "Instance gone",
          S.FAILED: "Training FAILED", S.COMPLETED: "Training completed", S.STOPPED_BY_USER: "Stopped by user",
          S.CORRUPT: "Run corrupt (both markers)", S.INTERRUPTED: "Run interrupted"}
EMOJI = {S.AGENT_SILENT: "🔇", S.HUNG: "🧊", S.INSTANCE_GONE: "💀", S.FAILED: "🔥", S.COMPLETED: "✅",
         S.STOPPED_BY_USER: "🛑", S.CORRUPT: "⚠️", S.INTERRUPTED: "⏸️"}


def watcher_remediation(state: str, run_id: str, facts: MessageFacts) -> str | None:
    """The watcher's own "Action required" for states the agent cannot classify."""
    pid = (facts.metadata.trainer_pid if facts.metadata else None) or "<trainer-pid>"
    inst = facts.instance
    if state == S.HUNG:
        return (f"Check GPU util (`nvidia-smi`), then `py-spy dump --pid {pid}` to see where the trainer is stuck; "
                f"`ctl stop {run_id}` if it does not move.")
    if state == S.AGENT_SILENT:
        return (f"Check the instance is up (`ctl status {run_id}`), then ssh in and look at the agent process and "
                "its log; if the box is gone, relaunch (training resumes from the last checkpoint).")
    if state == S.INSTANCE_GONE:
        if inst and inst.spot_interrupted:
            return "Spot capacity was reclaimed: relaunch (resumes from the last checkpoint), or use on-demand."
        if inst and inst.state in ("stopped", "stopping"):
            return f"Start it again (`aws ec2 start-instances --instance-ids {inst.instance_id}`) or relaunch."
        return "The instance is gone: relaunch; training resumes from the last saved checkpoint."
    if state == S.INTERRUPTED:
        step = facts.error.last_step if facts.error else None
        at = f" (it continues at step {step})" if step is not None else ""
        return (f"Resume it on another box from the stored checkpoint: "
                f"`ctl launch --existing <new-instance> --resume {run_id}`{at}; use on-demand capacity if spot "
                "keeps being reclaimed.")
    if state == S.CORRUPT:
        return "Both _error and _complete exist: treat the artifacts as unverified, read both markers, relaunch."
    return None


@dataclass
class MessageFacts:
    """What the sender read for the message body (only read when something is sent)."""

    run_id: str
    metadata: p.Metadata | None = None
    progress: p.Progress | None = None
    error: p.ErrorMarker | None = None
    complete: p.CompleteMarker | None = None
    instance: InstanceInfo | None = None
    log_tail: list[str] = field(default_factory=list)
    console_url: str | None = None
    store_url: str = ""
    loss_curve: str | None = None  # where the agent stored the run's loss-curve PNG, if it did


@dataclass
class Message:
    """A rendered alert: `text` is the fallback (and the terminal output), `blocks` the Block Kit body."""

    text: str
    blocks: list[dict]
    header: str
    fields: dict[str, str]


def _cap(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _header(msg: dict) -> str:
    state, kind = msg.get("was_state") or msg["state"], msg["kind"]
    label = LABELS.get(state, state)
    if kind == "resolved":
        return f"🟢 Resolved: {label.lower()} for {fmt_duration(msg.get('lasted_s') or 0)}"
    if kind == "repeat":
        return f"🔁 Still {label.lower()} ({fmt_duration(msg.get('lasted_s') or 0)})"
    if kind == "warning":  # ops.warnings: its own label and colour, never a state's
        again = f" (still, {fmt_duration(msg.get('lasted_s') or 0)})" if msg.get("repeat") else ""
        return f"🟡 Warning: {msg.get('warning')}{again}"
    if kind == "warning_resolved":
        return f"🟢 Warning cleared: {msg.get('warning')} after {fmt_duration(msg.get('lasted_s') or 0)}"
    if kind == "notice":  # ops.alerts.policy.notice_oom: the reason's first clause is the news
        news = (msg.get("reason") or "").split(" (")[0]
        return f"🩹 {news[:1].upper()}{news[1:]}"
    if state == S.FAILED and msg.get("cause"):
        return f"🔥 Training FAILED: {msg['cause']}"
    if state == S.INTERRUPTED and "spot reclaim at" in (msg.get("reason") or ""):
        return f"{EMOJI[state]} {label} by a spot reclaim"
    return f"{EMOJI.get(state, '❗')} {label}"


def _duration(msg: dict, f: MessageFacts) -> str | None:
    for marker in (f.complete, f.error):
        if marker and marker.duration_s is not None:
            return fmt_duration(marker.duration_s)
    if f.metadata:
        return fmt_duration(msg["created"] - f.metadata.created)
    return None


def cost_text(msg: dict, f: MessageFacts) -> str | None:
    """What the run cost: the agent's figure on its marker, else the price table times its duration."""
    if (m := f.complete or f.error) and m.cost_usd is not None:
        return fmt_cost(m.cost_usd) + (f" ({m.price_basis} price)" if m.price_basis else "")
    itype = (f.metadata.instance_type if f.metadata else None) or (f.instance.instance_type if f.instance else None)
    dur = next((m.duration_s for m in (f.complete, f.error) if m and m.duration_s is not None), None)
    if dur is None and f.metadata:
        dur = msg["created"] - f.metadata.created
    usd = run_cost(itype, dur)
    if usd is None:
        return None
    return f"{fmt_cost(usd)} ({itype}, {fmt_duration(dur)} at {fmt_cost(hourly_price(itype))}/h)"


def _step_loss(f: MessageFacts) -> str | None:
    if f.complete and f.complete.final_metrics.get("loss") is not None:
        return f"final loss {p.fmt_metric(f.complete.final_metrics['loss'])}"
    step = f.progress.step if f.progress else (f.error.last_step if f.error else None)
    loss = f.progress.loss if f.progress else (f.error.last_loss if f.error else None)
    if step is None and loss is None:
        return None
    total = f"/{f.progress.total_steps}" if f.progress and f.progress.total_steps else ""
    return f"step {step if step is not None else '?'}{total}" + (f", loss {p.fmt_metric(loss)}" if loss is not None else "")


def _phase(f: MessageFacts) -> str | None:
    """The run's phase as its marker decides: `completed` once `_complete` is there (the trainer's
    last progress line may still say `saving`), the phase it failed in for `_error`, else the latest."""
    if f.complete:
        return "completed"
    return (f.error.phase if f.error else None) or (f.progress.phase if f.progress else None) or (
        f.metadata.phase if f.metadata else None)


def remediation_for(msg: dict, f: MessageFacts) -> str | None:
    state = msg.get("was_state") or msg["state"]
    if msg["kind"] in ("resolved", "notice", "warning", "warning_resolved") or state == S.COMPLETED:
        return None
    if state in (S.FAILED, S.STOPPED_BY_USER):
        from agent.protocol.causes import REMEDIATION

        return (f.error.remediation if f.error and f.error.remediation else None) or REMEDIATION.get(
            msg.get("cause") or "unknown", REMEDIATION["unknown"])
    return watcher_remediation(state, f.run_id, f)


def build(msg: dict, f: MessageFacts) -> Message:
    """Render an outbox message (from the ledger) with the facts read for it."""
    run = f.run_id
    header = _cap(redact(_header(msg)), 150)
    status = "WARNING" if msg["kind"].startswith("warning") else msg["state"].upper().replace("_", " ")
    fields: dict[str, str] = {"Run ID": f"`{run}`", "Status": status}
    reason = msg.get("reason") or ""
    if msg["kind"] == "resolved":
        reason = f"recovered after {fmt_duration(msg.get('lasted_s') or 0)} ({reason})"
    fields["Reason"] = reason
    if msg.get("evidence"):
        fields["Evidence"] = msg["evidence"]
    inst = f.instance
    iid = inst.instance_id if inst else (f.metadata.instance_id if f.metadata else None)
    if iid:
        fields["Instance"] = f"{iid} ({inst.state})" if inst else iid
    if phase := _phase(f):
        fields["Phase"] = phase
    if d := _duration(msg, f):
        fields["Duration"] = d
    if sl := _step_loss(f):
        fields["Step/Loss"] = sl
    if f.complete and f.complete.artifacts:
        fields["Artifacts"] = ", ".join(a.get("uri", a.get("name", "?")) for a in f.complete.artifacts[:3])
    if msg["state"] in S.TERMINAL_STATES and (cost := cost_text(msg, f)):
        fields["Cost"] = cost
    if msg["state"] in S.TERMINAL_STATES and f.loss_curve:  # a webhook links to the picture
        fields["Loss curve"] = f.loss_curve
    fields = {k: _cap(redact(str(v)), FIELD_CHARS) for k, v in fields.items()}
    action = remediation_for(msg, f)
    action = _cap(redact(action), 2900) if action else None
    # A tqdm bar's carriage-return frames read as a terminal shows them: the last frame of each line.
    tail = [redact(last_frame(line.rstrip("\n"))) for line in f.log_tail[-LOG_LINES:]]
    log_text = _cap("\n".join(tail), LOG_CHARS) if tail else ""
    tail_cmd = f"ctl tail {run} --store {f.store_url}" if f.store_url else f"ctl tail {run}"

    blocks = [HeaderBlock(text=header),
              SectionBlock(fields=[MarkdownTextObject(text=f"*{k}:*\n{v}") for k, v in list(fields.items())[:10]])]
    if action:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f"🔧 *Action required:* {action}")))
    if log_text:
        blocks.append(SectionBlock(text=MarkdownTextObject(text=f"*Last log lines:*\n```{log_text}```")))
    if f.console_url:
        blocks.append(ActionsBlock(elements=[ButtonElement(text="📊 S3 logs", url=f.console_url,
                                                           action_id="s3_console")]))
    blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Follow the log: `{tail_cmd}`")]))

    lines = [header] + [f"{k}: {v}" for k, v in fields.items()]
    if action:
        lines.append(f"🔧 Action required: {action}")
    if log_text:
        lines += ["Last log lines:", log_text]
    if f.console_url:
        lines.append(f"📊 S3 logs: {f.console_url}")
    lines.append(f"Follow the log: {tail_cmd}")
    return Message(text="\n".join(lines), blocks=[b.to_dict() for b in blocks], header=header, fields=fields)
