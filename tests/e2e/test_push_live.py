"""Alerts in seconds through S3 -> SQS (issue 14), every part real: moto's server delivering the
bucket's ObjectCreated notification to a queue, the real agent around a trainer that dies of a CUDA
OOM, and a real `ctl watch` process posting to the Slack stand-in.

With the queue, the watcher's schedule is ten minutes, so only the pushed marker can explain a post
within the test's wait; with the queue off, a short schedule still catches the same failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading

from agent.protocol.runstore import RunStore
from agent.protocol.store_s3 import S3Store
from tests.e2e.fleet import said
from tests.e2e.harness import CTL, REPO, ledger_kinds, wait_for
from tests.fixtures.moto_server import REGION
from tests.ops.test_push import _reader
from tests.ops.test_push_sqs import notify_queue
from tests.trainers.harness import Agents, trainer_cmd

RUN = "oom-20270115-030000"
# What PyTorch prints when a backward pass runs the GPU out of memory (torch 2.x), as the trainer's last words.
OOM_TRACEBACK = """Traceback (most recent call last):
  File "/mnt/training/runs/oom/train.py", line 212, in <module>
    trainer.train()
  File "/opt/venv/lib/python3.11/site-packages/transformers/trainer.py", line 2245, in train
    return inner_training_loop(
  File "/opt/venv/lib/python3.11/site-packages/torch/_tensor.py", line 626, in backward
    torch.autograd.backward(
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 22.19 GiB \
of which 1.05 GiB is free. Including non-PyTorch memory, this process has 21.13 GiB memory in use. Of the \
allocated memory 19.63 GiB is allocated by PyTorch, and 1.02 GiB is reserved by PyTorch but unallocated. If \
reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid \
fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
"""


def _store(moto_server) -> S3Store:
    return S3Store(moto_server.new_bucket(), "training-runs", endpoint_url=moto_server.endpoint, region=REGION)


def _watch(moto_server, store: S3Store, slack, home, *args: str):
    """A real `ctl watch` over `store`, its stderr read into lines; events fire on the lines the test waits for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "TRAINCTL_"))}
    env.update(moto_server.env(), TRAINCTL_HOME=str(home), PYTHONPATH=str(REPO))
    proc = subprocess.Popen([*CTL, "watch", "--no-ec2", "--store", store.url, "--slack-webhook", slack.webhook_url,
                             *args], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    swept, pushed = threading.Event(), threading.Event()
    _reader(proc, lines, swept, "sweep: ", {f"pushed: {RUN}: sent 1": pushed})
    return proc, lines, swept, pushed


def _oom_run(agents: Agents, moto_server, store: S3Store, tmp_path):
    """The real agent around a trainer that prints its progress, then the OOM traceback, and exits 1."""
    return agents.start(RUN, store.url, tmp_path / "wd", trainer_cmd("--lines", "30", "--exit", "1", "--tail",
                                                                     OOM_TRACEBACK),
                        env=moto_server.env(), endpoint=moto_server.endpoint)


def _assert_one_oom_failure(slack, rs: RunStore) -> dict:
    [post] = slack.posts
    assert said(slack) == ["🔥 Training FAILED: cuda_oom"]
    assert "CUDA out of memory" in json.dumps(post["body"], ensure_ascii=False), post["body"]
    assert rs.read_error(RUN).cause == "cuda_oom"
    assert ledger_kinds(rs, RUN) == ["final:failed"]
    return post


def _stop(proc) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def test_an_agents_oom_marker_reaches_slack_through_the_queue_not_the_schedule(agents, moto_server, slack,
                                                                                tmp_path):
    store = _store(moto_server)
    rs = RunStore(store)
    url = notify_queue(moto_server, store)
    proc, lines, swept, pushed = _watch(moto_server, store, slack, tmp_path / "home", "--interval", "600",
                                        "--events", f"sqs://{url.rsplit('/', 1)[1]}")
    try:
        assert swept.wait(60), "".join(lines)  # the one full sweep at start: before the run exists
        assert "markers pushed by QueueEvents" in lines[0] and "sweep: 0 runs" in "".join(lines), "".join(lines)
        agent = _oom_run(agents, moto_server, store, tmp_path)
        assert agents.wait(agent, 120) == 0, Agents.output(agent)
        assert rs.read_error(RUN) is not None, Agents.output(agent)
        slack.wait_for_posts(1, timeout=120)  # well inside the 600 s schedule: only the push can post it
        assert pushed.wait(60), "".join(lines)  # the pushed sweep sent it, then deleted the message
    finally:
        _stop(proc)
    _assert_one_oom_failure(slack, rs)
    assert sum(line.startswith("sweep: ") for line in lines) == 1, "".join(lines)  # no scheduled sweep ran
    attrs = moto_server.client("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["ApproximateNumberOfMessages"] == "0" and attrs["ApproximateNumberOfMessagesNotVisible"] == "0"


def test_with_the_queue_off_the_schedule_still_catches_the_oom(agents, moto_server, slack, tmp_path):
    store = _store(moto_server)  # no bucket notification, no queue, no saved stack
    rs = RunStore(store)
    proc, lines, swept, _ = _watch(moto_server, store, slack, tmp_path / "home", "--interval", "1")
    try:
        assert swept.wait(60), "".join(lines)
        assert "schedule only: no saved stack 'default'" in lines[0], lines[0]
        agent = _oom_run(agents, moto_server, store, tmp_path)
        assert agents.wait(agent, 120) == 0, Agents.output(agent)
        slack.wait_for_posts(1, timeout=120)
        failed_at = len(lines)
        # Two more full sweeps after the post: the finished run is not alerted again.
        wait_for(lambda: sum(line.startswith("sweep: ") for line in lines[failed_at:]) >= 2, timeout=60,
                 what="two more scheduled sweeps")
    finally:
        _stop(proc)
    _assert_one_oom_failure(slack, rs)
    assert not any(line.startswith("pushed: ") for line in lines), "".join(lines)
