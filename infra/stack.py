"""Provision and destroy one stack: the module copied into ctl's state folder, applied there.

A stack's folder (`$TRAINCTL_HOME/infra/<stack>/`, default ~/.trainctl; agent/protocol/stacks.py) holds the module, the
local Terraform state, the watcher zip, `trainctl.auto.tfvars.json` (what ctl sets: zip path,
endpoints, resources kept by an earlier destroy), `outputs.json` and `kept.json`. The user's own
var files are passed with -var-file, which Terraform ranks above *.auto.tfvars, so they win.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.protocol.atomic import write_atomic
from agent.protocol.errors import ConfigError, TrainctlError
from agent.protocol.stacks import OUTPUTS, stack_dir  # noqa: F401 - stack_dir re-exported: one truth for the folder
from infra.lambda_zip import build_zip
from infra.tf import Terraform, summarize

MODULE_DIR = Path(__file__).parent / "terraform"
MODULE_FILES = ("*.tf", "user_data.sh")
SERVICES = ("ec2", "s3", "iam", "sts", "lambda", "events", "ssm", "logs", "sqs")
GENERATED_VARS = "trainctl.auto.tfvars.json"
KEPT = "kept.json"
RECORD = "provision.json"
# What a default destroy keeps, by the name the module's `kept_on_destroy` output uses.
PRIMARY = {"data_volume": "aws_ebs_volume.data[0]", "store_bucket": "aws_s3_bucket.store[0]",
           "slack_webhook_parameter": "aws_ssm_parameter.slack_webhook[0]"}
KEEP_FLAGS = {"data_volume": "--delete-data-volume", "store_bucket": "--delete-bucket",
              "slack_webhook_parameter": "--delete-webhook-parameter"}


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); fix or delete it") from None


def _write_json(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@dataclass
class Stack:
    """One stack folder and the terraform that runs in it."""

    workdir: Path
    var_files: list[Path] = field(default_factory=list)
    endpoint_url: str | None = None
    terraform_bin: str = "terraform"
    echo: Callable[[str], None] = print

    def __post_init__(self):
        self.workdir = Path(self.workdir).expanduser().resolve()
        self.var_files = [Path(p).expanduser().resolve() for p in self.var_files]
        for p in self.var_files:
            if not p.is_file():
                raise ConfigError(f"var file {p} does not exist (see infra/terraform/example.tfvars)")

    def terraform(self) -> Terraform:
        return Terraform(self.workdir, binary=self.terraform_bin, echo=self.echo, var_files=self.var_files)

    def prepare(self) -> None:
        """Copy the module in, build the watcher zip and write the variables ctl owns."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for pattern in MODULE_FILES:  # all ours: drop files a newer module no longer has
            for old in self.workdir.glob(pattern):
                old.unlink()
            for src in MODULE_DIR.glob(pattern):
                shutil.copy2(src, self.workdir / src.name)
        generated: dict = {"watcher_zip_path": str(build_zip(self.workdir / "watcher.zip"))}
        if self.endpoint_url:
            generated["endpoints"] = {svc: self.endpoint_url for svc in SERVICES}
            if self.endpoint_url.startswith("http://"):
                # A plain-HTTP emulator can never satisfy aws:SecureTransport: the TLS-only policy
                # would lock every caller out of the bucket.
                generated["store_require_tls"] = False
        for item in _read_json(self.workdir / KEPT, {}).values():
            generated.update(item.get("reuse") or {})
        _write_json(self.workdir / GENERATED_VARS, generated)

    def provision(self, confirm: Callable[[str], bool] | None = None) -> dict:
        """init, plan (summary to echo), confirm, apply; save and return the outputs."""
        self.prepare()
        # Recorded before apply: a half-applied stack must still be destroyable with `ctl destroy`.
        _write_json(self.workdir / RECORD, {"var_files": [str(p) for p in self.var_files],
                                             "endpoint_url": self.endpoint_url})
        tf = self.terraform()
        tf.init()
        if confirm is None:  # auto-approved: one apply run, which reports its plan as it goes
            self.echo(summarize(tf.plan_and_apply()))
        else:
            changes = tf.plan("tfplan")
            self.echo(summarize(changes))
            if changes:
                if not confirm("Apply this plan?"):
                    raise TrainctlError("provision cancelled: nothing was changed")
                tf.apply("tfplan")
            (self.workdir / "tfplan").unlink(missing_ok=True)
        outputs = tf.outputs()
        _write_json(self.workdir / OUTPUTS, outputs)
        return outputs

    @classmethod
    def existing(cls, workdir: Path, **kw) -> Stack:
        """A provisioned stack, with the var files and endpoint it was provisioned with."""
        workdir = Path(workdir).expanduser().resolve()
        record = _read_json(workdir / RECORD, None)
        if record is None:
            raise TrainctlError(f"nothing provisioned in {workdir} (no {RECORD}); see `ctl provision --help`")
        var_files = kw.pop("var_files", None) or record.get("var_files") or []
        endpoint_url = kw.pop("endpoint_url", None) or record.get("endpoint_url")
        return cls(workdir, var_files=var_files, endpoint_url=endpoint_url, **kw)

    def destroy_plan(self, delete: set[str]) -> tuple[list[str], dict]:
        """(addresses that would be destroyed, {name: kept item}) with `delete` naming kept items to drop."""
        tf = self.terraform()
        tf.init()
        kept_out = tf.outputs().get("kept_on_destroy") or {}
        self._in_state = tf.state_list()
        # After a failed apply the outputs may not say what to keep: never guess with user data.
        unlisted = {n for n, addr in PRIMARY.items() if addr in self._in_state and n not in kept_out}
        if unlisted - delete:
            raise TrainctlError(
                f"the stack's outputs do not list {', '.join(sorted(unlisted - delete))} as kept (a failed "
                "apply?): run `ctl provision` again to complete the stack, then destroy; or pass "
                f"{' '.join(KEEP_FLAGS[n] for n in sorted(unlisted - delete))} to delete it too")
        unknown = delete - set(kept_out) - unlisted
        if unknown:
            raise ConfigError(f"cannot delete {', '.join(sorted(unknown))}: this stack does not manage it "
                              f"(it keeps: {', '.join(sorted(kept_out)) or 'nothing'})")
        kept = {name: item for name, item in kept_out.items() if name not in delete}
        keep_addrs = {a for item in kept.values() for a in item["addresses"]}
        doomed = [a for a in self._in_state if not a.startswith("data.") and a not in keep_addrs]
        return doomed, kept

    def destroy(self, kept: dict, delete: set[str] = frozenset()) -> None:
        """Forget the kept resources, remember how to re-adopt them, destroy the rest."""
        tf = self.terraform()
        record = {k: v for k, v in _read_json(self.workdir / KEPT, {}).items() if k not in delete}
        record.update(kept)  # written first: a failed destroy still knows what it kept
        _write_json(self.workdir / KEPT, record)
        in_state = set(getattr(self, "_in_state", None) or tf.state_list())
        tf.state_rm([a for item in kept.values() for a in item["addresses"] if a in in_state])
        tf.destroy()
        (self.workdir / OUTPUTS).unlink(missing_ok=True)
