"""A thin wrapper over the terraform CLI: runs it, reads `output -json` and `show -json` of a plan.

It never opens a state file: everything it learns comes through terraform's own machine-readable
commands, so it keeps working with any backend the user configures.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol.errors import TrainctlError

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
ERROR_TAIL_LINES = 40


class TerraformError(TrainctlError):
    """terraform is missing or one of its commands failed; the message is terraform's own words."""


def _clean(text: str) -> str:
    lines = [ln.rstrip() for ln in _ANSI.sub("", text).splitlines()]
    while lines and not lines[0].strip():
        lines.pop(0)
    return "\n".join(lines[-ERROR_TAIL_LINES:]).strip()


@dataclass
class Terraform:
    """terraform in one working directory. `echo` receives streamed output of long commands."""

    workdir: Path
    binary: str = "terraform"
    env: dict[str, str] | None = None
    echo: Callable[[str], None] | None = None
    timeout_s: float = 3600.0
    var_files: list[Path] = field(default_factory=list)

    def __post_init__(self):
        self.workdir = Path(self.workdir)
        found = shutil.which(self.binary)
        if not found:
            raise TerraformError(
                f"terraform not found (looked for {self.binary!r} on PATH): install Terraform >= 1.9 "
                "from https://developer.hashicorp.com/terraform/install, or pass its path with --terraform")
        self.binary = found

    def _env(self) -> dict[str, str]:
        env = dict(self.env if self.env is not None else os.environ)
        env.setdefault("TF_IN_AUTOMATION", "1")
        env["TF_INPUT"] = "0"
        return env

    def run(self, *args: str, stream: bool = False, json_out: bool = False) -> str:
        """Run `terraform <args>` in the workdir; return stdout, or raise TerraformError with stderr."""
        cmd = [self.binary, *args]
        try:
            proc = subprocess.Popen(cmd, cwd=self.workdir, env=self._env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise TerraformError(f"could not run {self.binary}: {exc}") from None
        if stream and self.echo:
            out, err = self._stream(proc, json_out)
        else:
            try:
                out, err = proc.communicate(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise TerraformError(f"terraform {args[0]} did not finish within {self.timeout_s:.0f}s") from None
        if proc.returncode != 0:
            detail = (diagnostics(out) if json_out else "") or _clean(err) or _clean(out) or "(no output)"
            raise TerraformError(f"terraform {args[0]} failed (exit {proc.returncode}):\n{detail}")
        return out

    def _stream(self, proc: subprocess.Popen, json_out: bool = False) -> tuple[str, str]:
        """Echo stdout line by line (apply/destroy take minutes) while a thread drains stderr.

        With `json_out` each event is shown by its human `@message` (errors come at the end).
        """
        err_parts: list[str] = []
        drain = threading.Thread(target=lambda: err_parts.append(proc.stderr.read()), daemon=True)
        drain.start()
        out_lines = []
        for line in proc.stdout:
            out_lines.append(line)
            if not json_out:
                self.echo(line.rstrip("\n"))
                continue
            for ev in _events(line):
                if ev.get("type") not in ("version", "diagnostic", "outputs"):
                    self.echo(str(ev.get("@message", "")))
        proc.wait()
        drain.join()
        return "".join(out_lines), "".join(err_parts)

    def _var_args(self) -> list[str]:
        return [f"-var-file={p}" for p in self.var_files]

    def init(self) -> None:
        """`terraform init`: providers and backend (quiet unless it fails)."""
        self.run("init", "-input=false", "-no-color")

    def plan(self, plan_file: str = "tfplan", destroy: bool = False) -> list[tuple[str, str]]:
        """Write a plan file; return (action, address) per resource it changes.

        `plan -json` streams machine-readable events, which spares a `show -json` (whose schema
        load costs ~10 s with the aws provider).
        """
        args = ["plan", "-input=false", "-no-color", "-json", f"-out={plan_file}", *self._var_args()]
        if destroy:
            args.append("-destroy")
        return plan_changes(self.run(*args, json_out=True))

    def apply(self, plan_file: str = "tfplan") -> None:
        """Apply a saved plan, streaming terraform's progress lines to `echo`."""
        self.run("apply", "-input=false", "-no-color", "-auto-approve", plan_file, stream=True)

    def plan_and_apply(self) -> list[tuple[str, str]]:
        """`apply -auto-approve` in one run (no separate plan and refresh); returns what it changed."""
        args = ["apply", "-input=false", "-no-color", "-json", "-auto-approve", *self._var_args()]
        return plan_changes(self.run(*args, stream=True, json_out=True))

    def destroy(self) -> None:
        """Destroy everything still in state, streaming progress."""
        self.run("destroy", "-input=false", "-no-color", "-auto-approve", *self._var_args(), stream=True)

    def outputs(self) -> dict:
        """Output values by name (`terraform output -json`), without the type wrappers."""
        raw = json.loads(self.run("output", "-json", "-no-color") or "{}")
        return {name: o.get("value") for name, o in raw.items()}

    def state_list(self) -> list[str]:
        """Resource addresses in state (`terraform state list`)."""
        return [ln for ln in self.run("state", "list", "-no-color").splitlines() if ln.strip()]

    def state_rm(self, addresses: list[str]) -> None:
        """Forget resources without destroying them (`terraform state rm`)."""
        if addresses:
            self.run("state", "rm", "-no-color", *addresses)


def _events(json_lines: str):
    for line in json_lines.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                yield json.loads(line)
            except ValueError:
                continue


def plan_changes(json_lines: str) -> list[tuple[str, str]]:
    """(action, address) from `plan -json` output: create, update, replace or delete."""
    out = []
    for ev in _events(json_lines):
        if ev.get("type") != "planned_change":
            continue
        change = ev.get("change") or {}
        action = change.get("action")
        if action in ("create", "update", "replace", "delete"):
            out.append((action, change.get("resource", {}).get("addr", "?")))
    return out


def diagnostics(text: str) -> str:
    """Terraform's error diagnostics in `-json` output, as it would print them ("" when none)."""
    blocks = []
    for ev in _events(text):
        d = ev.get("diagnostic")
        if ev.get("type") == "diagnostic" and d and d.get("severity") == "error":
            where = d.get("range", {}).get("filename")
            head = f"Error: {d.get('summary', '').strip()}" + (f" ({where})" if where else "")
            blocks.append("\n".join(x for x in (head, (d.get("detail") or "").strip()) if x))
    return "\n\n".join(blocks)


def summarize(changes: list[tuple[str, str]]) -> str:
    """`Plan: 3 to add, 1 to change, 0 to destroy` plus one line per resource."""
    sym = {"create": "+", "update": "~", "replace": "-/+", "delete": "-"}
    n = {k: sum(1 for a, _ in changes if a == k) for k in sym}
    head = (f"Plan: {n['create'] + n['replace']} to add, {n['update']} to change, "
            f"{n['delete'] + n['replace']} to destroy.")
    return "\n".join([head, *(f"  {sym[a]:>3} {addr}" for a, addr in changes)])
