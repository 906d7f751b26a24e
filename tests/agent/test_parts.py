"""The agent's parts on their own: redaction, log shipping cursor, progress parsing, artifact verification,
the trainer wrapper's exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from agent.daemon.artifacts import ArtifactError, expected_etags, sync_artifact
from agent.daemon.backoff import Backoff
from agent.daemon.logship import LogShipper
from agent.daemon.progress import ProgressTracker
from agent.daemon.workdir import AgentState, LogCursor, Workdir
from agent.protocol.redact import redact, redact_argv, redact_bytes
from agent.protocol.runstore import RunStore

RUN = "unit-20260101-000000"


# -- redaction ---------------------------------------------------------------------------------
@pytest.mark.parametrize("line,secret", [
    ("export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("creds ASIAY34FZKBOKMUTVV7A expire soon", "ASIAY34FZKBOKMUTVV7A"),
    ("aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("{'SecretAccessKey': 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'}", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("AWS_SESSION_TOKEN=IQoJb3JpZ2luX2VjEJr//////////wEaCXVzLWVhc3QtMSJHMEUCIQD", "IQoJb3JpZ2luX2VjEJr"),
    ('"SessionToken": "FwoGZXIvYXdzEBYaDHhBTEXAMPLETOKENxyz"', "FwoGZXIvYXdzEBYaDHhBTEXAMPLETOKENxyz"),
    ("webhook https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXXXXXX failed", "T0000/B0000/XXXXXXXXXXXXXXXX"),
    ("slack token xoxb-1234567890-abcdefghijkl", "xoxb-1234567890-abcdefghijkl"),
    ("HF_TOKEN=hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("login with hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789 ok", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"),
    ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig", "eyJhbGciOiJIUzI1NiJ9"),
    ("curl -H 'authorization: token ghp_abcdefghijklmnop1234'", "ghp_abcdefghijklmnop1234"),
    ("password=hunter2hunter2", "hunter2hunter2"),
])
def test_each_secret_kind_is_redacted(line, secret):
    out = redact(line)
    assert secret not in out and "[REDACTED]" in out


@pytest.mark.parametrize("line", [
    "{'loss': 1.83, 'grad_norm': 0.41, 'learning_rate': 0.0002, 'epoch': 0.12}",
    '{"step": 10, "tokens_per_s": 2150.0, "total_steps": 3000}',
    "sha1 da39a3ee5e6b4b0d3255bfef95601890afd80709 of /mnt/training/runs/x/output/adapter",
    "Map (num_proc=8):  53%|█████▎    | 21887/41294 [03:12<02:51, 113.2 examples/s]",
    "eos_token: </s>, pad_token: <unk>",
    "basic tokenization of the dataset finished",
])
def test_ordinary_log_lines_are_left_alone(line):
    assert redact(line) == line


def test_redact_bytes_keeps_non_utf8_and_argv_hides_flag_values():
    raw = b"\xff\xfe bytes AKIAIOSFODNN7EXAMPLE \xe9\n"
    assert redact_bytes(raw) == b"\xff\xfe bytes [REDACTED] \xe9\n"
    clean = b"plain \xff line\n"
    assert redact_bytes(clean) is clean
    assert redact_argv(["train.py", "--hf-token", "abc", "--lr", "2e-4"]) == \
        ["train.py", "--hf-token", "[REDACTED]", "--lr", "2e-4"]


# -- log shipping --------------------------------------------------------------------------------
def _shipper(tmp_path, local_store, state: AgentState, **kw):
    wd = Workdir(tmp_path / "wd")
    wd.create()
    kw.setdefault("flush_s", 0.0)
    return wd, LogShipper(RunStore(local_store), RUN, wd, state.log, lambda: state.save(wd.state), **kw)


def test_chunks_end_on_line_boundaries_and_partial_lines_wait(tmp_path, local_store):
    state = AgentState(run_id=RUN)
    wd, sh = _shipper(tmp_path, local_store, state, partial_line_s=5.0)
    with open(wd.log, "ab") as fh:
        fh.write(b"one\ntwo\nthr")
    assert sh.ship(now=100.0) == 1
    rs = RunStore(local_store)
    assert rs.read_logs(RUN).data == b"one\ntwo\n"
    assert sh.ship(now=101.0) == 0  # only "thr" is waiting: held back
    assert sh.ship(now=106.0) == 1  # waited partial_line_s: shipped
    with open(wd.log, "ab") as fh:
        fh.write(b"ee\r50%\rdone\n")
    sh.ship(now=107.0)
    assert rs.read_logs(RUN).data == b"one\ntwo\nthree\r50%\rdone\n"
    assert state.log.offset == wd.log.stat().st_size and state.log.next_seq == 4
    assert AgentState.load(wd.state).log.offset == state.log.offset


def test_big_backlog_splits_at_max_chunk_and_bytes_match(tmp_path, local_store):
    state = AgentState(run_id=RUN)
    wd, sh = _shipper(tmp_path, local_store, state, max_chunk=1000)
    payload = b"".join(f"{i:05d} {'y' * (i % 50)}\n".encode() for i in range(2000))
    wd.log.write_bytes(payload)
    while sh.backlog():
        sh.ship(now=1.0)
    rs = RunStore(local_store)
    assert rs.read_logs(RUN).data == payload
    assert sh.bytes_uploaded == len(payload)  # nothing sent twice
    chunks = [local_store.get(k) for k in rs.list_log_chunks(RUN)]
    assert max(map(len, chunks)) <= 1000 and sh.puts == len(chunks)
    assert all(c.endswith(b"\n") for c in chunks)  # full chunks are cut at a line end too


def test_a_line_longer_than_a_chunk_is_split(tmp_path, local_store):
    state = AgentState(run_id=RUN)
    wd, sh = _shipper(tmp_path, local_store, state, max_chunk=100, partial_line_s=60.0)
    wd.log.write_bytes(b"z" * 250 + b"\nend")
    while sh.ship(now=1.0):
        pass
    chunks = [local_store.get(k) for k in RunStore(local_store).list_log_chunks(RUN)]
    assert chunks == [b"z" * 100, b"z" * 100, b"z" * 50 + b"\n"]
    sh.ship(now=2.0, final=True)
    assert RunStore(local_store).read_logs(RUN).data == b"z" * 250 + b"\nend"


def test_pending_chunk_is_resent_identically_after_a_crash(tmp_path, local_store):
    wd = Workdir(tmp_path / "wd")
    wd.create()
    wd.log.write_bytes(b"a\nb\nc\nd\n")
    rs = RunStore(local_store)
    # A previous agent announced chunk 1 = bytes [0, 4) and died before committing it.
    state = AgentState(run_id=RUN, log=LogCursor(offset=0, next_seq=1, pending={"seq": 1, "start": 0, "end": 4}))
    rs.put_log_chunk(RUN, 1, b"a\nb\n")  # the upload itself had gone through
    sh = LogShipper(rs, RUN, wd, state.log, lambda: state.save(wd.state), flush_s=0.0)
    sh.ship(now=1.0)
    assert [local_store.get(k) for k in rs.list_log_chunks(RUN)] == [b"a\nb\n", b"c\nd\n"]


def test_latest_and_tail_are_redacted_and_bounded(tmp_path, local_store):
    state = AgentState(run_id=RUN)
    wd, sh = _shipper(tmp_path, local_store, state)
    wd.log.write_bytes(b"".join(f"l{i}\n".encode() for i in range(1500)) + b"key AKIAIOSFODNN7EXAMPLE\n")
    while sh.backlog():
        sh.ship(now=1.0)
    assert sh.refresh_latest(now=1.0)
    latest = RunStore(local_store).read_latest_log(RUN).splitlines()
    assert len(latest) == 1000 and latest[-1] == "key [REDACTED]"
    with open(wd.log, "ab") as fh:
        fh.write(b"unshipped hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789\n")
    assert sh.tail(2) == ["key [REDACTED]", "unshipped [REDACTED]"]


# -- progress --------------------------------------------------------------------------------------
def test_progress_tracker_parses_steps_phase_artifacts_and_eta(tmp_path):
    path = tmp_path / "progress.jsonl"
    pt = ProgressTracker(path)
    assert pt.read_new() == 0
    lines = [{"phase": "training"}] + [{"step": s, "total_steps": 100, "loss": 2.0 / s, "ts": 1000.0 + s}
                                       for s in range(1, 11)]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n[1]\n" + '{"step": 11, "ts": 10')
    assert pt.read_new() == 11
    assert pt.bad_lines == 2 and pt.phase == "training" and pt.last_step == 10
    assert pt.eta_s() == pytest.approx(90.0)  # one step per second, 90 to go
    with open(path, "a") as fh:
        fh.write('11.0, "loss": NaN}\n{"artifact": "adapter", "path": "adapter/", "final": true}\n')
    assert pt.read_new() == 2
    assert pt.last_step == 11 and pt.last_loss != pt.last_loss  # NaN
    assert pt.record(2000.0).loss == "nan"
    assert [(d.name, d.final) for d in pt.declared] == [("adapter", True)]
    assert len(pt.history_points()) == 11


# -- artifacts -----------------------------------------------------------------------------------
def test_sync_artifact_is_idempotent_and_repairs_a_changed_file(tmp_path, local_store):
    out = tmp_path / "output"
    (out / "adapter").mkdir(parents=True)
    (out / "adapter/a.bin").write_bytes(b"x" * 1000)
    (out / "adapter/sub").mkdir()
    (out / "adapter/sub/b.json").write_text("{}")
    rs = RunStore(local_store)
    up = sync_artifact(rs, RUN, out, "adapter", "adapter/", final=True)
    assert (up.files, up.size, up.sent) == (2, 1002, 2)
    assert sync_artifact(rs, RUN, out, "adapter", "adapter/").sent == 0
    local_store.put(rs.artifact_key(RUN, "adapter/a.bin"), b"corrupt")
    assert sync_artifact(rs, RUN, out, "adapter", "adapter/").sent == 1
    assert local_store.get(rs.artifact_key(RUN, "adapter/sub/b.json")) == b"{}"
    with pytest.raises(ArtifactError) as e:
        sync_artifact(rs, RUN, out, "adapter", "../../etc")
    assert e.value.missing
    with pytest.raises(ArtifactError):
        sync_artifact(rs, RUN, out, "bad/name", "adapter/")


def test_multipart_upload_is_verified_against_s3_etag(tmp_path, s3_store):
    out = tmp_path / "output"
    out.mkdir()
    big = out / "model.safetensors"
    big.write_bytes(os.urandom(9 * 1024 * 1024 + 123))
    rs = RunStore(s3_store)
    up = sync_artifact(rs, RUN, out, "merged", "model.safetensors", final=True)
    assert up.sent == 1 and up.size == big.stat().st_size
    size, etag = s3_store.size_and_etag(rs.artifact_key(RUN, "merged/model.safetensors"))
    assert etag == expected_etags(big)[1] and etag.endswith("-2")
    assert sync_artifact(rs, RUN, out, "merged", "model.safetensors").sent == 0


# -- wrapper and backoff -------------------------------------------------------------------------
@pytest.mark.parametrize("script,code,sig", [("import sys; sys.exit(3)", 3, None),
                                             ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", None,
                                              "SIGTERM")])
def test_wrapper_records_exit_status(tmp_path, script, code, sig):
    exit_file, pid_file = tmp_path / "exit_status", tmp_path / "trainer.pid"
    r = subprocess.run([sys.executable, "-m", "agent.daemon.wrap", str(exit_file), str(pid_file), "--",
                        sys.executable, "-c", script], timeout=30)
    st = json.loads(exit_file.read_text())
    assert (st["exit_code"], st["signal"]) == (code, sig)
    assert int(pid_file.read_text()) == st["pid"]
    assert r.returncode == (code if code is not None else 128 + 15)


def test_backoff_grows_to_cap_and_resets():
    b = Backoff(base_s=0.5, max_s=4.0)
    delays = [b.failed(0.0, "down") for _ in range(8)]
    assert all(0.25 <= d <= 4.0 for d in delays) and max(delays[-3:]) > 2.0
    assert not b.ready(0.0) and b.down
    b.succeeded()
    assert b.ready(0.0) and not b.down


def test_kernel_oom_lines_name_the_trainer_and_are_recent():
    from agent.daemon.hostfacts import oom_lines_for

    log = "\n".join([
        "[  100.000001] python invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE|__GFP_COMP), order=0",
        "[  100.000300] oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
        "task_memcg=/user.slice,task=python,pid=4242,uid=1000",
        "[  100.000400] Out of memory: Killed process 4242 (python) total-vm:70123456kB, anon-rss:63543210kB",
        "[   50.000000] Out of memory: Killed process 4343 (python) total-vm:1kB",
        "[  100.000500] Out of memory: Killed process 999 (other) total-vm:1kB",
    ])
    boot = 1_000_000.0
    hits = oom_lines_for(log, {4242, 4343}, since=boot + 90, boot=boot)
    assert len(hits) == 2 and all("4242" in h for h in hits)
    assert len(oom_lines_for(log, {4343}, since=None, boot=None)) == 1


@pytest.mark.parametrize("name, secret", [
    ("HF_TOKEN", True), ("WANDB_API_KEY", True), ("AWS_SECRET_ACCESS_KEY", True), ("GITHUB_PAT", True),
    ("SLACK_SIGNING_SECRET", True), ("DB_PASSWORD", True), ("my-service-token", True),
    ("TOKENIZERS_PARALLELISM", False), ("KEYBOARD", False), ("HF_HOME", False), ("MAX_TOKENS", False),
])
def test_secret_names_are_judged_word_by_word(name, secret):
    from agent.protocol.redact import secret_name

    assert secret_name(name) is secret


def test_remembered_values_are_masked_whole_wherever_they_appear():
    from agent.protocol.redact import redact, redact_bytes, remember_env

    long, inner = "abcd1234" * 5 + "-parts-test", "abcd1234" * 5
    remember_env({"PARTS_TEST_TOKEN": long, "PARTS_TEST_API_KEY": inner, "PARTS_TEST_SECRET": "short",
                  "PARTS_TEST_HOME": "/home/not-a-secret-value"})
    assert redact(f"k={long} and {inner}.") == "k=[REDACTED] and [REDACTED]."
    assert redact_bytes(f"{inner}\n".encode()) == b"[REDACTED]\n"
    assert redact("short /home/not-a-secret-value") == "short /home/not-a-secret-value"  # too short; not secret
