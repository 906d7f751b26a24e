"""Command planning from facts: table tests, no server."""

from __future__ import annotations

import pytest

from controller.box.stage import stage_targets, to_fetch
from controller.box.start import render_unit
from controller.config import resolve
from controller.launch import plan
from controller.launch.facts import Facts
from controller.launch.preflight import preflight

GPU_BOX = dict(uid=1000, user="ubuntu", python=[3, 11, 9], gpus=["NVIDIA A10G, 23028 MiB"], nvidia_smi=True,
               has_flock=True, data_root_exists=True, data_root_mounted=True, data_root_writable=True,
               free_bytes=250 * 10**9, store_reachable=True,
               seed={"version": [3, 11, 9], "prefix": "/opt/conda/envs/pytorch", "site": ["/opt/conda/sp"],
                     "base_prefix": "/opt/conda/envs/pytorch"},
               block_devices=[{"name": "nvme0n1", "path": "/dev/nvme0n1", "type": "disk",
                               "children": [{"name": "nvme0n1p1", "mountpoint": "/"}]}])
DATA_DISK = {"name": "nvme1n1", "path": "/dev/nvme1n1", "type": "disk", "fstype": "ext4", "mountpoint": None,
             "size": 300 * 2**30}
ZRAM = {"name": "zram0", "path": "/dev/zram0", "type": "disk", "fstype": None, "mountpoint": None, "size": 0,
        "probe": "blank"}


def cfg(**sections):
    raw = {"name": "m", "trainer": {"config": "train.toml"}}
    for k, v in sections.items():
        raw[k] = v
    return resolve(raw)


def facts(**over):
    return Facts.from_dict({**GPU_BOX, **over})


def whats(problems):
    return [p.what for p in problems]


@pytest.mark.parametrize("over, cfg_over, expect_problems, expect_steps", [
    ({}, {}, [], []),
    ({"gpus": [], "nvidia_smi": False}, {}, ["no GPU visible (nvidia-smi is not installed)"], []),
    ({"gpus": []}, {}, ["no GPU visible (nvidia-smi shows no GPU)"], []),
    ({"gpus": []}, {"box": {"require_gpu": False}}, [], []),
    ({"python": [3, 8, 10]}, {}, ["python3 on the box is 3.8.10, need >= 3.10"], []),
    ({"python": []}, {}, ["python3 is not installed on the box"], []),
    ({"free_bytes": 10 * 10**9}, {}, ["only 10.0 GB free under /mnt/training, the run needs 50 GB"], []),
    ({"store_reachable": False, "store_error": "timed out"}, {},
     ["the run store is not reachable from the box (timed out)"], []),
    ({"data_root_mounted": False, "block_devices": GPU_BOX["block_devices"] + [DATA_DISK, ZRAM]}, {}, [],
     ["mount /dev/nvme1n1 at /mnt/training"]),
    ({"data_root_mounted": False, "block_devices": [{**DATA_DISK, "fstype": None, "probe": "blank"}]}, {}, [],
     ["format blank volume /dev/nvme1n1 (ext4)", "mount /dev/nvme1n1 at /mnt/training"]),
    ({"data_root_mounted": False, "block_devices": [{**DATA_DISK, "fstype": None, "probe": "unreadable"}]}, {},
     ["/dev/nvme1n1 has no filesystem but is not blank (unreadable); refusing to format it"], []),
    ({"data_root_mounted": False, "block_devices": [{**DATA_DISK, "fstype": None, "probe": "signature"}]}, {},
     ["/dev/nvme1n1 has no filesystem but is not blank (signature); refusing to format it"], []),
    ({"data_root_mounted": False, "block_devices": [{**DATA_DISK, "fstype": None, "pttype": "gpt"}]}, {},
     ["/dev/nvme1n1 has no filesystem but is not blank (partition table gpt); refusing to format it"], []),
    ({"data_root_mounted": False, "block_devices": [{**DATA_DISK, "fstype": None}]}, {},
     ["/dev/nvme1n1 has no filesystem but is not blank (not probed); refusing to format it"], []),
    ({"data_root_mounted": False, "block_devices": GPU_BOX["block_devices"]}, {},
     ["no data volume is mounted at /mnt/training and no unmounted volume is attached"], []),
    ({"data_root_mounted": False, "block_devices": [DATA_DISK, {**DATA_DISK, "name": "xvdf", "path": "/dev/xvdf"}]},
     {}, ["several unmounted volumes are attached (/dev/nvme1n1, /dev/xvdf); not guessing which to use"], []),
    ({"data_root_mounted": False, "block_devices": [DATA_DISK, {**DATA_DISK, "name": "xvdf", "path": "/dev/xvdf"}]},
     {"box": {"volume_device": "/dev/xvdf"}}, [], ["mount /dev/xvdf at /mnt/training"]),
    ({"data_root_mounted": False}, {"box": {"require_mount": False}}, [], []),
])
def test_preflight_table(over, cfg_over, expect_problems, expect_steps):
    problems, steps = preflight(facts(**over), cfg(**cfg_over), box_needs_sudo=True)
    assert whats(problems) == expect_problems
    assert [s.name for s in steps] == expect_steps
    for p in problems:
        assert p.fix  # every failure comes with its fix
    for s in steps:
        assert s.script.startswith("sudo -n ")  # privileged as a non-root user


@pytest.mark.parametrize("found, trainer, setup, expect", [
    (False, {"command": ["acelerate", "launch", "t.py"]}, {"mode": "current"},
     ["the trainer command 'acelerate' is not on the box (not on PATH, not in the venv, not beside setup.python)"]),
    (False, {"command": ["/opt/train.sh"]}, {"mode": "current"},
     ["the trainer command '/opt/train.sh' is not on the box (not on PATH, not in the venv, not beside setup.python)"]),
    (True, {"command": ["accelerate", "launch", "t.py"]}, {"mode": "current"}, []),
    (False, {"command": ["python", "t.py"]}, {"mode": "venv"}, []),  # the venv setup is about to make it
    (False, {"command": ["accelerate"]}, {"mode": "venv", "commands": ["pip install accelerate"]}, []),
    (False, {"config": "train.toml"}, {"mode": "current"}, []),  # ctl train sft: the launch installs it
])
def test_preflight_checks_the_trainer_command_exists_on_the_box(found, trainer, setup, expect):
    problems, _ = preflight(facts(trainer_found=found), cfg(trainer=trainer, setup=setup), box_needs_sudo=False)
    assert whats(problems) == expect
    assert all("[trainer] command" in p.fix for p in problems)


def test_preflight_lists_every_failure_in_one_pass():
    f = facts(gpus=[], python=[3, 9, 0], free_bytes=0, store_reachable=False, has_flock=False)
    problems, _ = preflight(f, cfg(), box_needs_sudo=False)
    assert len(problems) == 5


def test_mount_steps_as_root_have_no_sudo():
    f = facts(uid=0, data_root_mounted=False, block_devices=[{**DATA_DISK, "fstype": None, "probe": "blank"}])
    _, steps = preflight(f, cfg(), box_needs_sudo=False)
    assert steps[0].script == "mkfs.ext4 -q -L trainctl-data /dev/nvme1n1"
    assert "sudo" not in steps[1].script


WHEEL = plan.Wheel(path="/tmp/trainctl-0.1.0-py3-none-any.whl", filename="trainctl-0.1.0-py3-none-any.whl",
                   key="abc123", requires=("boto3>=1.35", "torch>=2.4; extra == 'train'"))


def layout(c, wheel=WHEEL):
    return plan.Layout(c.box.data_root, plan.plan_hash(plan.install_plan(c, wheel)), wheel.key, wheel.filename)


@pytest.mark.parametrize("over, cached", [
    ({"wheel_uploaded": False, "venv_ready": False, "venv_wheel": ""}, [False, False, False, False]),
    ({"wheel_uploaded": True, "venv_ready": True, "venv_wheel": "abc123"}, [False, True, True, True]),
    ({"wheel_uploaded": True, "venv_ready": True, "venv_wheel": "old"}, [False, True, True, False]),
    ({"wheel_uploaded": True, "venv_ready": False, "venv_wheel": "abc123"}, [False, True, False, False]),
])
def test_setup_steps_cached_from_facts(over, cached):
    c = cfg()
    steps = plan.setup_steps(facts(**over), c, layout(c), WHEEL, "ubuntu", box_needs_sudo=True)
    assert [s.cached for s in steps] == cached
    assert steps[0].script.startswith("sudo -n mkdir -p /mnt/training/trainctl ")
    assert "chown ubuntu" in steps[0].script
    assert steps[1].upload == (WHEEL.path, "/mnt/training/trainctl/wheels/abc123/" + WHEEL.filename)


def test_every_folder_a_launch_writes_is_made_for_the_login_user():
    c = cfg(stage={"model": "s3://b/models/mistral-7b/", "data": "s3://b/data/chat"})
    script = plan.setup_steps(facts(), c, layout(c), WHEEL, "ubuntu", box_needs_sudo=True)[0].script
    made, owned = script.split(" && ")
    for folder in ("/mnt/training/trainctl/runs", "/mnt/training/models", "/mnt/training/models/mistral-7b",
                   "/mnt/training/datasets", "/mnt/training/datasets/chat"):
        assert f" {folder} " in f"{made} " and f" {folder} " in f"{owned} "
    assert made.startswith("sudo -n mkdir -p ") and owned.startswith("sudo -n chown ubuntu ")
    as_root = plan.setup_steps(facts(uid=0), c, layout(c), WHEEL, "root", box_needs_sudo=False)[0].script
    assert as_root.startswith("mkdir -p ") and "sudo" not in as_root and "chown" not in as_root


def test_follow_up_commands_carry_every_store_option():
    from controller.launch.run import follow_options

    assert follow_options("s3://b/runs", "", "") == "--store s3://b/runs"
    assert follow_options("s3://b/runs", "http://127.0.0.1:5000", "eu-west-1") == \
        "--store s3://b/runs --endpoint-url http://127.0.0.1:5000 --store-region eu-west-1"


def test_venv_script_reuses_seed_packages_and_is_locked():
    c = cfg(setup={"python": "/opt/conda/envs/pytorch/bin/python", "commands": ["pip install flash-attn"]})
    lay = layout(c)
    venv = plan.setup_steps(facts(), c, lay, WHEEL, "ubuntu", False)[2].script
    assert "flock -w 1800 9" in venv and f"[ -e {lay.venv}/.trainctl-ready ]" in venv
    assert "-m venv --system-site-packages" in venv
    assert "trainctl[agent,train] @ file:///mnt/training/trainctl/wheels/abc123/" in venv
    assert "pip install flash-attn" in venv
    assert "trainctl-seed.pth" not in venv  # the seed is a base install: --system-site-packages suffices
    venv_seed = facts(seed={**GPU_BOX["seed"], "prefix": "/work/.venv", "site": ["/work/.venv/sp"]})
    assert "trainctl-seed.pth" in plan.setup_steps(venv_seed, c, lay, WHEEL, "ubuntu", False)[2].script


def test_plan_hash_keys_the_venv_not_the_wheel():
    c = cfg()
    h = plan.plan_hash(plan.install_plan(c, WHEEL))
    other_wheel = plan.Wheel(WHEEL.path, WHEEL.filename, "def456", WHEEL.requires)
    assert plan.plan_hash(plan.install_plan(c, other_wheel)) == h  # a code change reinstalls only the wheel
    assert plan.plan_hash(plan.install_plan(cfg(setup={"extras": ["agent"]}), WHEEL)) != h
    new_dep = plan.Wheel(WHEEL.path, WHEEL.filename, "abc123", (*WHEEL.requires, "rich>=13"))
    assert plan.plan_hash(plan.install_plan(c, new_dep)) != h


@pytest.mark.parametrize("active, decision", [
    (None, "start"),
    ({"run_id": "a-20250101-000000", "pid": 5, "alive": False}, "start"),
    ({"run_id": "a-20250101-000000", "pid": 5, "alive": True}, "already_running"),
    ({"run_id": "b-20250101-000000", "pid": 5, "alive": True}, "busy"),
])
def test_start_decision(active, decision):
    assert plan.start_decision(active, "a-20250101-000000") == decision


def test_an_agent_finishing_a_marked_run_does_not_hold_the_box():
    active = {"run_id": "b-20250101-000000", "pid": 5, "alive": True}
    assert plan.start_decision(active, "a-20250101-000000", active_finished=True) == "start"
    same = {"run_id": "a-20250101-000000", "pid": 5, "alive": True}
    assert plan.start_decision(same, "a-20250101-000000", active_finished=True) == "already_running"


def test_agent_argv_follows_the_agent_contract():
    c = cfg(agent={"heartbeat_s": 15, "log_flush_s": 1}, trainer={"config": "t.toml", "set": ["lr=1e-4"]})
    lay = layout(c)
    argv = plan.agent_argv(c, lay, "m-20250101-000000", "s3://b/runs", "http://127.0.0.1:5000")
    sep = argv.index("--")
    head, trainer = argv[:sep], argv[sep + 1:]
    assert head[:3] == [f"{lay.venv}/bin/ctl", "agent", "run"]
    for flag, val in [("--run-id", "m-20250101-000000"), ("--store", "s3://b/runs"), ("--heartbeat-s", "15"),
                      ("--log-flush-s", "1"), ("--endpoint-url", "http://127.0.0.1:5000"),
                      ("--workdir", "/mnt/training/trainctl/runs/m-20250101-000000")]:
        assert head[head.index(flag) + 1] == val
    assert trainer == [f"{lay.venv}/bin/ctl", "train", "sft", "--config",
                       "/mnt/training/trainctl/runs/m-20250101-000000/train.toml", "--set", "lr=1e-4"]


def test_systemd_unit_renders_from_template():
    unit = render_unit("m-20250101-000000", ["/v/bin/ctl", "agent", "run", "--", "python", "-c", "print('a b')"],
                       "ubuntu", "/mnt/training/trainctl/runs/m", "/mnt/training/trainctl/runs/m/agent.env")
    assert "Restart=on-failure" in unit and "User=ubuntu" in unit and "$" not in unit.replace("$(", "")
    assert "ExecStart=/v/bin/ctl agent run -- python -c 'print('\"'\"'a b'\"'\"')'" in unit
    assert "EnvironmentFile=-/mnt/training/trainctl/runs/m/agent.env" in unit
    assert "RestartPreventExitStatus=2" in unit


@pytest.mark.parametrize("manifest, sizes, expect", [
    ({}, {}, ["a.bin", "b/c.json"]),
    ({"a.bin": [10, "e1"], "b/c.json": [5, "e2"]}, {"a.bin": 10, "b/c.json": 5}, []),
    ({"a.bin": [10, "e0"], "b/c.json": [5, "e2"]}, {"a.bin": 10, "b/c.json": 5}, ["a.bin"]),  # object changed
    ({"a.bin": [10, "e1"], "b/c.json": [5, "e2"]}, {"a.bin": 3, "b/c.json": 5}, ["a.bin"]),  # truncated locally
    ({"a.bin": [10, "e1"], "b/c.json": [5, "e2"]}, {"b/c.json": 5}, ["a.bin"]),  # deleted locally
])
def test_stage_manifest_compare(manifest, sizes, expect):
    remote = {"a.bin": (10, "e1"), "b/c.json": (5, "e2")}
    assert to_fetch(remote, manifest, sizes) == expect


def test_stage_targets():
    t = stage_targets("s3://b/models/mistral-7b/", "", "/mnt/training")
    assert t == [{"name": "model", "src": "s3://b/models/mistral-7b/", "dest": "/mnt/training/models/mistral-7b"}]


def test_built_commands_parse_with_the_real_agent_and_trainer_clis():
    """The seeds' monitor was started with a flag it did not take: parse ours with the real parsers."""
    from trainctl.cli import main

    c = cfg(agent={"heartbeat_s": 15}, trainer={"config": "t.toml", "set": ["train.learning_rate=1e-4"]})
    lay = layout(c)
    argv = plan.agent_argv(c, lay, "m-20250101-000000", "s3://b/runs", "http://127.0.0.1:5000")
    run = main.commands["agent"].commands["run"]
    ctx = run.make_context("run", argv[3:])
    assert ctx.params["run_id"] == "m-20250101-000000" and ctx.params["heartbeat_s"] == 15.0
    assert ctx.params["endpoint_url"] == "http://127.0.0.1:5000"
    trainer = list(ctx.params["command"])
    assert trainer == plan.trainer_argv(c, lay, lay.workdir("m-20250101-000000"))
    sft = main.commands["train"].commands["sft"]
    tctx = sft.make_context("sft", trainer[3:])
    assert tctx.params["config_path"].endswith("/train.toml")
    assert list(tctx.params["overrides"]) == ["train.learning_rate=1e-4"]


@pytest.mark.parametrize("pip, fast", [("24.0", True), ("22.3.1", True), ("21.2.4", False), (None, False)])
def test_venv_without_pip_when_the_seed_pip_can_target_it(pip, fast):
    c = cfg()
    lay = layout(c)
    f = facts(seed={**GPU_BOX["seed"], "pip": pip})
    steps = plan.setup_steps(f, c, lay, WHEEL, "ubuntu", False)
    venv, wheel = steps[2].script, steps[3].script
    assert ("--without-pip" in venv) is fast
    target = "python3 -m pip --python " + lay.venv + "/bin/python install" if fast else \
        lay.venv + "/bin/python -m pip install"
    assert target in venv and target in wheel


def test_memory_estimate_command_for_the_default_trainer_on_a_gpu_box():
    c = cfg(trainer={"config": "t.toml", "set": ["train.per_device_batch_size=2"]})
    lay = layout(c)
    gpus = ["NVIDIA A10G, 23028 MiB", "NVIDIA A10G, 22000 MiB"]
    argv = plan.estimate_argv(c, lay, "/w", gpus)
    assert argv[1:] == ["train", "estimate", "--config", "/w/train.toml", "--gpu-mem", "22000MiB", "--json",
                        "--set", "train.per_device_batch_size=2"]
    assert plan.estimate_argv(c, lay, "/w", []) is None  # no GPU: nothing to estimate against
    assert plan.estimate_argv(cfg(trainer={"command": ["python", "t.py"]}), lay, "/w", gpus) is None
    from trainctl.cli import main

    ctx = main.commands["train"].commands["estimate"].make_context("estimate", argv[3:])
    assert ctx.params["gpu_mem"] == "22000MiB" and ctx.params["as_json"]


def test_check_memory_runs_the_real_estimate(tmp_path):
    import sys

    from agent.protocol.errors import TrainctlError
    from controller.launch.remote import LocalBox
    from controller.launch.runenv import check_memory

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "report.json").write_text('{"max_seq_length": 512}')
    (tmp_path / "train.toml").write_text(f'[model]\npath = "mistral-7b"\n[data]\npath = "{tmp_path / "data"}"\n')
    c = cfg(trainer={"config": str(tmp_path / "train.toml")})
    lay = plan.Layout("/unused", "h", mode="current", python=sys.executable)
    said = []
    check_memory(LocalBox(), plan.estimate_argv(c, lay, str(tmp_path), ["NVIDIA A10G, 23028 MiB"]), said.append)
    assert said and said[0].startswith("memory estimate: fits")
    with pytest.raises(TrainctlError, match="does not fit the GPU"):
        check_memory(LocalBox(), plan.estimate_argv(c, lay, str(tmp_path), ["Tiny GPU, 2000 MiB"]), said.append)


@pytest.mark.parametrize("trainer, stage, path, expect", [
    ({"config": "train.toml"}, {}, "/mnt/training/models/m", "/mnt/training/models/m"),  # ours, already on the box
    ({"config": "train.toml"}, {"model": "s3://b/models/m"}, "/mnt/training/models/m", ""),  # staged: checked in S3
    ({"config": "train.toml"}, {"model": "s3://b/models/m"}, "/opt/other", "/opt/other"),  # staged elsewhere
    ({"config": "train.toml"}, {}, "models/m", ""),  # relative: the run's workdir, judged by sft
    ({"command": ["python", "train.py"]}, {}, "/mnt/training/models/m", ""),  # a user's trainer: its own business
])
def test_the_model_folder_preflight_lists_on_the_box(trainer, stage, path, expect):
    from controller.launch.preflight import box_model_dir

    assert box_model_dir(cfg(trainer=trainer, stage=stage), path) == expect


WHOLE = ["config.json", "model.safetensors", "tokenizer.json"]


@pytest.mark.parametrize("over, expect", [
    ({"model_files": WHOLE}, None),
    ({"model_files": ["config.json", "tokenizer.json"]}, "model.path /m on the box has no model weights"),
    ({"model_files": ["config.json", "model.safetensors"]}, "model.path /m on the box has no tokenizer"),
    ({"model_files": ["tokenizer.json"]}, "model.path /m on the box has no config.json"),
    ({"model_files": [], "model_dir_exists": False}, "model.path /m does not exist on the box"),
    ({"model_files": [], "model_error": "Permission denied"}, "model.path /m cannot be read on the box"),
    ({"model_files": ["config.json", "model.safetensors.index.json", "tokenizer.json"],
      "model_missing_shards": ["model-00002-of-00002.safetensors"]}, "lacks 1 weight shard(s)"),
])
def test_a_model_folder_on_the_box_is_judged_by_the_rules_sft_applies(over, expect):
    problems, _ = preflight(facts(**over), cfg(), box_needs_sudo=False, model_dir="/m")
    if expect is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expect in problems[0].what and problems[0].fix
        assert "\n" not in problems[0].what


def test_no_model_folder_asked_no_model_problem():
    problems, _ = preflight(facts(model_files=None, model_dir_exists=False), cfg(), box_needs_sudo=False)
    assert problems == []
