"""`ctl runs`, `ctl status` and `ctl tail` say what the watcher says, for every row of the state table.

Every row of tests/ops/test_state.py's table (and three interrupted runs) becomes a run in one local store (its records written
through RunStore; the corrupt ones by hand), with a real instance on moto's EC2 where the row has
one. The three commands run at the table's fixed `now` (the hidden `--at`) with the watcher's
settings from the same TRAINCTL_* variables the Lambda reads, and must agree with `assess` on
state and reason.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from click.testing import CliRunner

from agent.protocol import records as p
from agent.protocol.runstore import RunStore
from agent.protocol.store_local import LocalStore
from controller.views.facts import TAIL_EXIT
from ops.config import settings_from_env
from ops.ec2 import Ec2Enricher
from ops.state import TERMINAL_STATES, InstanceInfo, RunFacts, Settings, assess
from tests.ops.test_state import ROWS, T0, S, md
from trainctl.cli import main

REGION = "us-east-1"
GONE = "i-0000000000000dead"  # an id EC2 does not know: not-found


def _interrupted(summary: str) -> p.ErrorMarker:
    return p.ErrorMarker(ts=T0 - 30, cause="interrupted", remediation="ctl launch --resume", summary=summary,
                         phase="training", last_step=420)


# Interrupted runs, which `ctl runs` used to call failed: the spot evidence is the agent's summary or EC2's.
EXTRA = [
    ("interrupted-spot-notice", dict(metadata=md(), has_error=True, error=_interrupted("spot interruption notice")),
     S, "interrupted", None, "interrupted by a spot reclaim at step 420"),
    ("interrupted-on-a-spot-box", dict(metadata=md(), has_error=True, error=_interrupted("SIGTERM from systemd"),
                                       instance=InstanceInfo("i-x", "stopped", spot=True)),
     S, "interrupted", None, "interrupted by a spot reclaim at step 420"),
    ("interrupted-plain", dict(metadata=md(), has_error=True, error=_interrupted("SIGTERM from systemd")), S,
     "interrupted", None, "interrupted at step 420 (the agent was told to shut down"),
]
ALL = ROWS + EXTRA


def env_for(settings: Settings) -> dict[str, str]:
    """The TRAINCTL_* variables that give the watcher (and the views) `settings`."""
    if settings == S:
        return {}
    if settings.heartbeat_s is not None and settings.grace_s == S.grace_s:
        return {"TRAINCTL_HEARTBEAT_S": str(settings.heartbeat_s)}
    return {"TRAINCTL_HEARTBEAT_GRACE": str(settings.grace_s), "TRAINCTL_PROGRESS_TIMEOUT": str(settings.progress_timeout_s),
            "TRAINCTL_SETUP_PROGRESS_TIMEOUT": str(settings.setup_progress_timeout_s),
            "TRAINCTL_LAUNCH_TIMEOUT": str(settings.launch_timeout_s)}


def make_instance(ec2, want) -> str:
    """A moto instance in the state the row's InstanceInfo describes; its id."""
    if want.state == "not-found":
        return GONE
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    spot = {"InstanceMarketOptions": {"MarketType": "spot"}} if want.spot else {}
    iid = ec2.run_instances(ImageId=image, InstanceType="g5.2xlarge", MinCount=1, MaxCount=1, **spot)["Instances"][0][
        "InstanceId"]
    if want.state == "stopped":
        ec2.stop_instances(InstanceIds=[iid])  # moto: Client.UserInitiatedShutdown, as a console stop
    elif want.state == "terminated":
        ec2.terminate_instances(InstanceIds=[iid])
        if want.spot_interrupted:  # what EC2 reports for a reclaimed spot box; moto cannot reclaim, so say it
            from moto.core import DEFAULT_ACCOUNT_ID
            from moto.ec2.models import ec2_backends
            from moto.ec2.models.instances import StateReason

            ec2_backends[DEFAULT_ACCOUNT_ID][REGION].get_instance(iid).state_reason = StateReason(
                f"{want.reason_code}: Spot instance termination", want.reason_code)
    return iid


def write_row(rs: RunStore, rid: str, kw: dict) -> None:
    """The row's facts as the agent, the controller and a broken disk would leave them."""
    if kw.get("metadata"):
        rs.write_metadata(kw["metadata"])
    else:
        rs.put_log_chunk(rid, 1, b"a run folder with nothing else in it yet\n")
    if kw.get("heartbeat"):
        rs.write_heartbeat(rid, kw["heartbeat"])
    if kw.get("heartbeat_problem"):
        rs.store.put(rs.k(rid, p.HEARTBEAT), b"{this is not json")
    if kw.get("has_error"):
        if kw.get("error"):
            assert rs.write_error(rid, kw["error"])
        else:
            rs.store.put(rs.k(rid, p.ERROR), b"\x00 not a marker")
    if kw.get("has_complete"):  # with _error too: written by hand, as no agent would
        rs.store.put_if_absent(rs.k(rid, p.COMPLETE), kw["complete"].to_bytes())
    if kw.get("stop_requested"):
        assert rs.request_stop(rid, requested_by="test")


@pytest.fixture(scope="module")
def table(moto_server, tmp_path_factory):
    """(store url, {row name: (run id, expected RunState, row)}) with every row written."""
    ec2 = moto_server.client("ec2")
    enricher = Ec2Enricher(moto_server.endpoint)
    rs = RunStore(LocalStore(tmp_path_factory.mktemp("agree") / "store"))
    runs = {}
    for row in ALL:
        name, kw, settings = row[0], dict(row[1]), row[2]
        rid = f"{name}-20270115-080000"
        if kw.get("metadata"):
            kw["metadata"] = dataclasses.replace(kw["metadata"], run_id=rid)
        if kw.get("instance"):
            iid = make_instance(ec2, kw["instance"])
            kw["metadata"] = dataclasses.replace(kw["metadata"], instance_id=iid, region=REGION)
            kw["instance"] = enricher.describe([(iid, REGION)])[iid]  # what EC2 really says about it
        write_row(rs, rid, kw)
        if kw.get("heartbeat_problem"):  # the reason quotes the reader's own words
            with pytest.raises(p.RecordError) as bad:
                rs.read_heartbeat(rid)
            kw["heartbeat_problem"] = str(bad.value)
        expected = assess(RunFacts(rid, **kw), T0, settings_from_env(env_for(settings)))
        assert expected.state == row[3] and row[5] in expected.reason, (name, expected)  # the row still holds
        runs[name] = (rid, expected, row)
    return rs.url, runs


def _env(moto_server, settings: Settings) -> dict[str, str]:
    return {**moto_server.env(), "TRAINCTL_EC2_ENDPOINT": moto_server.endpoint, **env_for(settings)}


SETTINGS = sorted({r[2] for r in ALL}, key=repr)


@pytest.mark.parametrize("settings", SETTINGS, ids=[f"settings{i}" for i in range(len(SETTINGS))])
def test_runs_json_agrees_with_assess(table, moto_server, settings):
    url, runs = table
    r = CliRunner().invoke(main, ["runs", "--store", url, "--json", "--at", str(T0)], env=_env(moto_server, settings))
    assert r.exit_code == 0, r.output
    got = {row["run_id"]: row for row in json.loads(r.stdout)}
    mine = [(rid, st) for rid, st, row in runs.values() if row[2] == settings]
    assert mine
    for rid, st in mine:
        assert (got[rid]["state"], got[rid]["reason"]) == (st.state, st.reason), rid
        done = st.state in TERMINAL_STATES
        assert got[rid]["outcome"] == (st.state if done else "running")
        if done:
            assert got[rid]["heartbeat_age_s"] is None, rid  # a finished run shows no heartbeat age


@pytest.mark.parametrize("name", [r[0] for r in ALL])
def test_status_and_tail_agree_with_assess(table, moto_server, name):
    url, runs = table
    rid, st, row = runs[name]
    env = _env(moto_server, row[2])
    r = CliRunner().invoke(main, ["status", rid, "--store", url, "--json", "--at", str(T0)], env=env)
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert (d["state"], d["reason"]) == (st.state, st.reason)
    if st.state in TERMINAL_STATES:
        assert d["heartbeat_age_s"] is None
    r = CliRunner().invoke(main, ["tail", rid, "--store", url, "--no-follow", "--at", str(T0)], env=env)
    assert r.exit_code == TAIL_EXIT.get(st.state, 0), (r.stdout, r.stderr)
    closing = r.stdout if st.state in TAIL_EXIT else r.stderr  # a run that goes on: its state on stderr
    assert st.reason in closing and st.state.replace("_", " ").upper() in closing.upper().replace("_", " ")
