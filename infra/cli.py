"""`ctl provision`, `ctl destroy`, `ctl lambda-zip`: a thin click layer over infra.stack."""

from __future__ import annotations

import os
import shlex
import sys

import click

from agent.protocol.errors import ConfigError
from infra.stack import KEEP_FLAGS

KEEP_WORDS = {"data_volume": "data volume", "store_bucket": "store bucket",
              "slack_webhook_parameter": "Slack webhook parameter"}

stack_option = click.option("--stack", default="default", show_default=True,
                            help="Stack name: its folder is $TRAINCTL_HOME/infra/<stack>.")
workdir_option = click.option("--workdir", type=click.Path(file_okay=False), default=None,
                              help="Use this folder for the module copy and state instead.")
terraform_option = click.option("--terraform", "terraform_bin", envvar="TRAINCTL_TERRAFORM", default="terraform",
                                show_default=True, help="terraform binary (env TRAINCTL_TERRAFORM).")
approve_option = click.option("--auto-approve", "--yes", "auto_approve", is_flag=True,
                              help="Do not ask before changing anything.")


def _confirmer(auto_approve: bool):
    if auto_approve:
        return None
    if not sys.stdin.isatty():
        raise ConfigError("no terminal to ask for confirmation: review the plan and pass --auto-approve")
    return lambda question: click.confirm(question, default=False)


def provision_new(stack: str, var_files, auto_approve: bool) -> dict:
    """`ctl launch --new`: provision (or re-apply, a no-op when nothing changed) and return the outputs."""
    from infra.stack import Stack, stack_dir

    confirm = _confirmer(auto_approve)
    st = Stack(stack_dir(stack, None), var_files=list(var_files), endpoint_url=os.environ.get("TRAINCTL_AWS_ENDPOINT"),
               echo=click.echo)
    click.echo(f"provisioning stack {stack} ({st.workdir})")
    out = st.provision(confirm)
    click.echo(f"provisioned {out['instance_id']}; launching on it")
    return out


def next_command(outputs: dict) -> str:
    """The launch command for a freshly provisioned box."""
    parts = ["ctl", "launch", "--existing", outputs["instance_id"], "--store", outputs["store_url"],
             "--region", outputs["region"]]
    if outputs.get("ssh_user") not in (None, "ubuntu"):  # ubuntu is launch's default
        parts += ["--user", outputs["ssh_user"]]
    return shlex.join([*parts, "--config", "run.toml"])


@click.command("provision")
@click.option("--var-file", "var_files", multiple=True, type=click.Path(dir_okay=False),
              help="Terraform variables (see infra/terraform/example.tfvars). Repeatable.")
@approve_option
@stack_option
@workdir_option
@click.option("--endpoint-url", envvar="TRAINCTL_AWS_ENDPOINT", default=None, metavar="URL",
              help="Send every AWS call to this endpoint (an AWS emulator; env TRAINCTL_AWS_ENDPOINT).")
@terraform_option
def provision_cmd(var_files, auto_approve, stack, workdir, endpoint_url, terraform_bin):
    """Create the g5 box, its data volume, the store and the watcher with Terraform."""
    from infra.stack import Stack, stack_dir

    confirm = _confirmer(auto_approve)
    st = Stack(stack_dir(stack, workdir), var_files=list(var_files), endpoint_url=endpoint_url,
               terraform_bin=terraform_bin, echo=click.echo)
    click.echo(f"stack folder: {st.workdir}")
    out = st.provision(confirm)
    click.echo("")
    click.echo(f"Provisioned (outputs in {st.workdir / 'outputs.json'}):")
    click.echo(f"  instance  {out['instance_id']} in {out['availability_zone']}")
    click.echo(f"  ssh       {out['ssh_user']}@{out['public_ip'] or out['public_dns']}")
    click.echo(f"  volume    {out['data_volume_id']} at {out['mount_point']}")
    click.echo(f"  store     {out['store_url']}")
    if out.get("watcher_function"):
        click.echo(f"  watcher   {out['watcher_function']}: put the Slack webhook in SSM once with")
        click.echo(f"            aws ssm put-parameter --name {out['slack_webhook_parameter']} --type SecureString "
                   "--overwrite --value https://hooks.slack.com/services/...")
    click.echo("Next:")
    click.echo(f"  {next_command(out)}")


@click.command("destroy")
@stack_option
@workdir_option
@click.option("--delete-data-volume", is_flag=True, help="Also delete the data volume and everything on it.")
@click.option("--delete-bucket", is_flag=True, help="Also delete the store bucket (Terraform refuses if not empty).")
@click.option("--delete-webhook-parameter", is_flag=True, help="Also delete the Slack webhook SSM parameter.")
@approve_option
@terraform_option
def destroy_cmd(stack, workdir, delete_data_volume, delete_bucket, delete_webhook_parameter, auto_approve,
                terraform_bin):
    """Destroy the stack, keeping the data volume, the bucket and the webhook parameter unless told."""
    from infra.stack import Stack, stack_dir

    confirm = _confirmer(auto_approve)
    delete = {name for name, flag in (("data_volume", delete_data_volume), ("store_bucket", delete_bucket),
                                      ("slack_webhook_parameter", delete_webhook_parameter)) if flag}
    st = Stack.existing(stack_dir(stack, workdir), terraform_bin=terraform_bin, echo=click.echo)
    doomed, kept = st.destroy_plan(delete)
    click.echo(f"Destroys {len(doomed)} resources in {st.workdir}:")
    for addr in doomed:
        click.echo(f"  - {addr}")
    if kept:
        click.echo("Keeps (the next `ctl provision` of this stack re-adopts them):")
        for name, item in sorted(kept.items()):
            click.echo(f"  = {KEEP_WORDS.get(name, name)} {item['id']}  (delete too with {KEEP_FLAGS.get(name, '?')})")
    if confirm is not None and not confirm("Destroy?"):
        click.echo("cancelled: nothing was destroyed")
        return
    st.destroy(kept, delete)
    kept_txt = ", ".join(f"{KEEP_WORDS.get(n, n)} {i['id']}" for n, i in sorted(kept.items())) or "nothing"
    click.echo(f"Destroyed. Kept: {kept_txt}.")


@click.command("lambda-zip")
@click.option("--output", "-o", type=click.Path(dir_okay=False), default="watcher.zip", show_default=True,
              help="Where to write the zip.")
def lambda_zip_cmd(output):
    """Build the watcher Lambda zip (agent + ops + slack_sdk; boto3 comes with the runtime)."""
    from infra.lambda_zip import HANDLER, build_zip, sha256_b64

    path = build_zip(output)
    click.echo(f"{path}  handler {HANDLER}  sha256 {sha256_b64(path)}")


COMMANDS = (provision_cmd, destroy_cmd, lambda_zip_cmd)
