"""Progress read from a trainer's own output, with no edit to the trainer.

Recognised, per frame of output (a frame ends at a newline or a carriage return):
- the log dicts HF Trainer, TRL and axolotl print (`{'loss': 6.63, ...}`, or transformers 5's string
  values `{'loss': '6.63', 'learning_rate': '0.0003333', 'epoch': '0.5273'}`), their eval dicts
  (`eval_loss`) and the final `train_runtime` summary;
- tqdm bars (`29/30 [00:21<00:00, 1.11it/s]`, `s/it`, with or without a description);
- a per-run regex with named groups step / total / loss / lr (and epoch / eval_loss).

This runs on every line a trainer prints, so each frame is screened with `in` tests before any
regex; a bounded frame that looks like a log dict is read by one regex when it is flat (as log
dicts are), and only otherwise by `ast.literal_eval`.
Nothing here raises on garbage: a frame that is not progress gives None. These are pure functions
of one frame; agent.daemon.outputreader.OutputReader feeds a stream of output through them, across
chunk boundaries, and keeps to the training bar.
"""

from __future__ import annotations

import ast
import json
import math
import re
from typing import NamedTuple

MAX_DICT_CHARS = 4096  # a log dict is a few hundred characters; longer frames are not parsed
KNOWN_GROUPS = ("step", "total", "loss", "lr", "epoch", "eval_loss")
# Units a training loop's bar counts in; datasets' "examples", downloads' "B" and the like are not steps.
TRAIN_UNITS = frozenset({"it", "step", "steps", "batch", "batches"})
# Bars whose description says they are not the training loop (HF's own training bar has none).
_OTHER_DESC = re.compile(r"map|filter|load|download|fetch|generat|token|eval|predict|valid|test|sav|upload|shard"
                         r"|extract|convert|merg|resolv|preprocess|packing|calibrat", re.IGNORECASE)

_BAR = re.compile(r"(?P<n>\d+)(?:/(?P<total>\d+))?(?P<bare>[A-Za-z]+)? \[(?P<elapsed>[\d:]+)(?:<[^,\]]*)?, *"
                  r"(?:\?|[\d.]+[kMGT]?) ?(?:(?P<unit>[A-Za-z]+)/s|s/(?P<unit2>[A-Za-z]+))")
_PCT = re.compile(r"\d+%\|")
_BARE_NONFINITE = re.compile(r"(?<=[:\s])(-?(?:nan|inf))(?=\s*[,}])")

_LOSS = ("loss", "train_loss", "train/loss")
_LR = ("learning_rate", "lr", "train/learning_rate", "train/lr")
_EPOCH = ("epoch", "train/epoch")
_STEP = ("step", "global_step", "train/global_step")


class Parsed(NamedTuple):
    """One piece of progress. kind: log (a training log dict), eval, summary (train_runtime), bar
    (a training-looking tqdm bar), other_bar (any other bar: evaluation, data, downloads), regex.
    A named tuple: built for every recognised frame, and cheaper to build than a dataclass."""

    kind: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    lr: float | None = None
    epoch: float | None = None
    eval_loss: float | None = None
    runtime_s: float | None = None  # eval_runtime / train_runtime
    elapsed_s: float | None = None  # a bar's own elapsed time
    desc: str = ""


def num(v) -> float | None:
    """A float from a number or a numeric string ('6.63', 'nan'); None for anything else."""
    if isinstance(v, bool) or not isinstance(v, int | float | str) or (isinstance(v, str) and len(v) > 40):
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _int(v) -> int | None:
    f = num(v)
    return int(f) if f is not None and math.isfinite(f) and f >= 0 and f == int(f) else None


def _first(d: dict, keys: tuple[str, ...]) -> float | None:
    for k in keys:
        if k in d:
            return num(d[k])
    return None


_ATOM = r"""(?:'[^'\\\n]*'|"[^"\\\n]*"|[-+\w.]+)"""
_FLAT_DICT = re.compile(rf"\{{\s*{_ATOM}\s*:\s*{_ATOM}(?:\s*,\s*{_ATOM}\s*:\s*{_ATOM})*\s*,?\s*\}}")
_PAIR = re.compile(rf"({_ATOM})\s*:\s*({_ATOM})")
_WORDS = {"True": True, "False": False, "None": None, "true": True, "false": False, "null": None}


def _flat_value(tok: str):
    if tok[0] in "'\"":
        return tok[1:-1]
    return _WORDS.get(tok, tok)  # a bare number (or nan / inf) stays text: num() reads it


def _literal_dict(text: str) -> dict | None:
    if _FLAT_DICT.fullmatch(text):  # the usual one-level dict of numbers and strings: no parser needed
        return {_flat_value(k): _flat_value(v) for k, v in _PAIR.findall(text)}
    for attempt in (text, _BARE_NONFINITE.sub(r"'\1'", text)):  # `{'loss': nan}` is not a literal
        try:
            d = ast.literal_eval(attempt)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return d if isinstance(d, dict) else None
    try:
        d = json.loads(text)  # JSON's true / false / null
    except ValueError:
        return None
    return d if isinstance(d, dict) else None


def parse_dict(frame: str) -> Parsed | None:
    """A log / eval / summary record from a frame holding a printed dict (a logger prefix is fine)."""
    start = frame.find("{")
    body = frame[start:].rstrip()
    if start < 0 or not body.endswith("}") or len(body) > MAX_DICT_CHARS:
        return None
    d = _literal_dict(body)
    if not d:
        return None
    epoch, step = _first(d, _EPOCH), _int(_first(d, _STEP))
    if "train_runtime" in d:
        return Parsed("summary", step=step, loss=_first(d, ("train_loss",)), epoch=epoch,
                      runtime_s=num(d["train_runtime"]))
    if "eval_loss" in d or "eval/loss" in d:
        return Parsed("eval", step=step, epoch=epoch, eval_loss=_first(d, ("eval_loss", "eval/loss")),
                      runtime_s=_first(d, ("eval_runtime", "eval/runtime")))
    loss, lr = _first(d, _LOSS), _first(d, _LR)
    if loss is None and lr is None:
        return None
    return Parsed("log", step=step, loss=loss, lr=lr, epoch=epoch)


def clock_s(text: str) -> float | None:
    """Seconds from tqdm's `MM:SS` or `H:MM:SS`."""
    parts = text.split(":")
    if not 1 < len(parts) <= 3 or not all(p.isdigit() for p in parts):
        return None
    return float(sum(int(p) * 60**i for i, p in enumerate(reversed(parts))))


def parse_bar(frame: str) -> Parsed | None:
    """A tqdm frame as `bar` (a training loop's) or `other_bar`, with step n, total and elapsed."""
    m, at = None, frame.find(" [")
    while at >= 0 and m is None:  # match only at the token before " [": far cheaper than a search
        m = _BAR.match(frame, max(frame.rfind(" ", 0, at), frame.rfind("|", 0, at)) + 1)
        at = frame.find(" [", at + 2)
    if m is None:
        return None
    unit = m["unit"] or m["unit2"] or ""
    if m["total"] is None and m["bare"] != unit:  # `15it [00:10, 1.5it/s]`: no total, unit after n
        return None
    head = frame[: m.start()]
    pct = _PCT.search(head)
    desc = (head[: pct.start()] if pct else head).strip().rstrip(":").strip()
    other = unit not in TRAIN_UNITS or bool(desc and _OTHER_DESC.search(desc))
    return Parsed("other_bar" if other else "bar", step=int(m["n"]),
                  total=int(m["total"]) if m["total"] else None, elapsed_s=clock_s(m["elapsed"]), desc=desc[:80])


def compile_progress_regex(pattern: str) -> re.Pattern:
    """The run's `progress_regex`, checked: it compiles and names at least one known group."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"progress_regex {pattern!r} does not compile: {exc}") from None
    if not set(rx.groupindex) & set(KNOWN_GROUPS):
        raise ValueError(f"progress_regex {pattern!r} names none of the groups {', '.join(KNOWN_GROUPS)} "
                         "(write them as (?P<step>\\d+))")
    return rx


def parse_regex(frame: str, rx: re.Pattern) -> Parsed | None:
    """A `regex` record from the run's own pattern, or None when it does not match or names nothing."""
    m = rx.search(frame)
    if not m:
        return None
    g = m.groupdict()
    rec = Parsed("regex", step=_int(g.get("step")), total=_int(g.get("total")), loss=num(g.get("loss")),
                 lr=num(g.get("lr")), epoch=num(g.get("epoch")), eval_loss=num(g.get("eval_loss")))
    if rec.step is None and rec.loss is None and rec.lr is None and rec.eval_loss is None:
        return None
    return rec


def parse_line(line: str, rx: re.Pattern | None = None) -> Parsed | None:
    """Progress in one line of output, or None. A line with carriage returns is read by its last
    frame with text in it (what a terminal shows); the run's regex, when given, is tried first."""
    if "\r" in line:
        frames = [f for f in line.split("\r") if f.strip()]
        line = frames[-1] if frames else ""
    if rx is not None:
        rec = parse_regex(line, rx)
        if rec is not None:
            return rec
    if "{" in line and ("loss" in line or "learning_rate" in line or "lr" in line or "train_runtime" in line):
        rec = parse_dict(line)
        if rec is not None:
            return rec
    if "[" in line and ("/s" in line or "s/" in line):
        return parse_bar(line)
    return None
