"""Click commands of the controller: launch, tail, status, stop, hosts. A thin layer over the library."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from agent.protocol.errors import ConfigError
from agent.protocol.options import open_run_store
from controller.views.commands import COMMANDS as VIEW_COMMANDS
from controller.views.facts import ec2_enricher


def _local_defaults() -> dict:
    from controller.launch.hostkeys import trainctl_home

    return {"box": {"data_root": str(trainctl_home() / "box"), "require_mount": False, "require_gpu": False,
                    "min_free_gb": 1.0}}


def _check_staged_model(cfg) -> None:
    """The model prefix ctl train sft will load, judged by its file names before the box is touched
    (one listing); a prefix this machine may not list is left to the box's own check."""
    from agent.protocol.errors import StoreError
    from agent.protocol.stores import open_store
    from train.modelfolder import names_problem

    try:
        store = open_store(cfg.stage.model, endpoint_url=cfg.store.endpoint_url or None,
                           region=cfg.store.region or None)
        names = {k for k in store.list("") if "/" not in k}
    except StoreError as exc:
        click.echo(f"model check skipped (the box stages it with its own credentials): {exc}", err=True)
        return
    if why := names_problem(names, cfg.stage.model.rstrip("/") + "/"):
        raise ConfigError(f"stage.model: {why}")


def _merge_defaults(raw: dict, defaults: dict) -> dict:
    out = dict(raw)
    for section, values in defaults.items():
        out[section] = {**values, **(raw.get(section) or {})} if isinstance(raw.get(section, {}), dict) else raw[section]
    return out


@click.command("launch")
@click.option("--existing", "instance_id", metavar="i-XXXX", help="Launch on this EC2 instance (started if stopped).")
@click.option("--host", "host", metavar="USER@HOST[:PORT]", help="Launch on any SSH box.")
@click.option("--local", "local", is_flag=True, help="Launch on this machine with the local-folder store.")
@click.option("--new", "new", is_flag=True, help="Provision the box with Terraform first (as `ctl provision`), then launch on it.")
@click.option("--var-file", "var_files", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="With --new: Terraform variables (see infra/terraform/example.tfvars). Repeatable.")
@click.option("--stack", "stack_name", default="default", show_default=True, help="With --new: the stack to provision.")
@click.option("--yes", "auto_approve", is_flag=True, help="With --new: apply the Terraform plan without asking.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="run.toml (default: ./run.toml when present).")
@click.option("--run-id", default=None, help="Run id (default: <name>-<UTC stamp>).")
@click.option("--resume", "resume_id", default=None, metavar="RUN_ID",
              help="Continue this interrupted run (same id) from its newest stored checkpoint; same run.toml.")
@click.option("--store", "store_url", envvar="TRAINCTL_STORE", default=None, metavar="URL", help="s3://bucket/prefix.")
@click.option("--endpoint-url", envvar="TRAINCTL_S3_ENDPOINT", default=None, metavar="URL", help="S3 endpoint.")
@click.option("--region", default=None, help="AWS region of the instance.")
@click.option("--ec2-endpoint-url", envvar="TRAINCTL_EC2_ENDPOINT", default=None, metavar="URL", help="EC2 endpoint.")
@click.option("--no-start", is_flag=True, help="Fail instead of starting a stopped instance.")
@click.option("--allow-no-gpu", is_flag=True, help="Accept an instance type / box without an NVIDIA GPU.")
@click.option("--ssh-config", envvar="TRAINCTL_SSH_CONFIG", default=None, help="ssh_config file to honour.")
@click.option("--ssh-key", default=None, help="Private key for SSH.")
@click.option("--user", default=None, help="SSH user (default: ssh_config User, else ubuntu).")
@click.option("--data-root", default=None, help="Data folder on the box (default /mnt/training).")
@click.option("--trainer-config", default=None, help="train.toml passed to `ctl train sft`.")
@click.option("--set", "sets", multiple=True, metavar="SECTION.KEY=VALUE", help="Override any run.toml key.")
@click.option("--train-set", "train_sets", multiple=True, metavar="KEY=VALUE", help="Override a train.toml key.")
@click.option("--dry-run", is_flag=True, help="Gather facts, run preflight, print the steps; change nothing.")
@click.option("--follow", "-f", is_flag=True, help="Tail the run after starting it (exit code as `ctl tail`).")
@click.argument("trainer_command", nargs=-1, type=click.UNPROCESSED)
def launch_cmd(instance_id, host, local, new, var_files, stack_name, auto_approve, config_path, run_id, resume_id, store_url, endpoint_url, region, ec2_endpoint_url,
               no_start, allow_no_gpu, ssh_config, ssh_key, user, data_root, trainer_config, sets, train_sets,
               dry_run, follow, trainer_command):
    """Launch a run: `ctl launch --existing i-0abc --config run.toml [-- trainer command...]`."""
    from controller import config as c
    from controller.launch.run import Target, launch

    if sum(bool(x) for x in (instance_id, host, local, new)) > 1:
        raise ConfigError("choose one of --existing, --host, --local and --new")
    if (var_files or auto_approve) and not new:
        raise ConfigError("--var-file and --yes go with --new (provision, then launch)")
    if instance_id:  # the cheapest check first: a malformed id is named before any file is read
        from controller.launch.ec2 import validate_instance_id

        validate_instance_id(instance_id)
    if config_path is None and Path("run.toml").is_file():
        config_path = "run.toml"
    raw = c.load_raw(config_path)
    if local:
        raw = _merge_defaults(raw, _local_defaults())
    flags = {"store.url": store_url, "store.endpoint_url": endpoint_url, "instance.region": region,
             "instance.endpoint_url": ec2_endpoint_url, "instance.start_if_stopped": False if no_start else None,
             "instance.allow_no_gpu": True if allow_no_gpu else None, "box.require_gpu": False if allow_no_gpu else None,
             "ssh.config": ssh_config, "ssh.key": ssh_key, "ssh.user": user, "box.data_root": data_root,
             "trainer.config": trainer_config, "trainer.command": list(trainer_command) or None,
             "instance.id": instance_id}
    if train_sets:
        flags["trainer.set"] = [*(raw.get("trainer", {}) or {}).get("set", []), *train_sets]
    for item in sets:
        k, v = c.parse_override(item)
        flags[k] = v
    cfg = c.resolve(raw, flags, config_path or "defaults")
    if cfg.trainer.config and not Path(cfg.trainer.config).expanduser().is_file():
        raise ConfigError(f"trainer.config {cfg.trainer.config!r} does not exist")
    if cfg.trainer.config and not cfg.trainer.command:
        # The trainer's own schema, here and now: a typo in train.toml must not cost a launch.
        from train.config import load_config
        from train.schemas import TrainConfig

        tcfg = load_config(TrainConfig, str(Path(cfg.trainer.config).expanduser()), cfg.trainer.set, validate=False)
        here = Path(tcfg.model.path).expanduser()
        if local and tcfg.model.path and not cfg.stage.model and (here.is_absolute() or here.exists()):
            # A model on this machine is checked here, as sft would, before the run exists anywhere
            # (a relative path that is not here may be meant for the run's workdir: sft judges that one).
            from train.modelfolder import folder_problem

            if why := folder_problem(tcfg.model.path, weights=True):
                raise ConfigError(f"{cfg.trainer.config}: model.path: {why}")
        if cfg.stage.model:
            _check_staged_model(cfg)
    if new:
        # Validated above before anything touched AWS; now the box exists and the launch targets it.
        from infra.cli import provision_new

        out = provision_new(stack_name, var_files, auto_approve)
        cfg.instance.id = out["instance_id"]
        cfg.instance.region = cfg.instance.region or out.get("region") or ""
        cfg.store.url = cfg.store.url or out.get("store_url") or ""
        if out.get("ssh_user") not in (None, "", "ubuntu"):  # ubuntu is the default: ssh_config's User may say more
            cfg.ssh.user = cfg.ssh.user or out["ssh_user"]
    if local:
        target = Target("local")
    elif host:
        target = Target("host", host)
    elif cfg.instance.id:
        target = Target("existing", cfg.instance.id)
    else:
        raise ConfigError("where to launch? give --existing i-XXXX, --host user@host or --local")
    if resume_id and run_id and run_id != resume_id:
        raise ConfigError(f"--resume {resume_id} continues that run under its own id: drop --run-id {run_id}")
    res = launch(cfg, target, resume_id or run_id, dry_run=dry_run, resume=bool(resume_id))
    if follow and res.status in ("started", "already_running"):
        from controller.views.tail import Tail

        rs = open_run_store(res.store_url, cfg.store.endpoint_url or None, cfg.store.region or None)
        try:
            code = Tail(rs, res.run_id, show_status=sys.stdout.isatty(), ec2=ec2_enricher()).run()
        except KeyboardInterrupt:
            click.echo(f"\nstopped following {res.run_id}; the run goes on (`ctl tail {res.run_id}`)", err=True)
            sys.exit(130)
        sys.exit(code)


@click.group("hosts")
def hosts_group():
    """Host keys ctl pinned on first use (per instance id, or host:port)."""


@hosts_group.command("list")
def hosts_list():
    """Show pinned host keys."""
    from controller.launch.hostkeys import PinStore

    for name, typ, fp in PinStore().names():
        click.echo(f"{name}  {typ}  {fp}")


@hosts_group.command("forget")
@click.argument("name")
def hosts_forget(name):
    """Forget the pinned key of a box (after it was rebuilt)."""
    from controller.launch.hostkeys import PinStore

    if PinStore().forget(name):
        click.echo(f"forgot the host key pinned for {name}; the next launch pins the key it sees")
    else:
        click.echo(f"no host key pinned for {name}")


COMMANDS = [launch_cmd, *VIEW_COMMANDS, hosts_group]
