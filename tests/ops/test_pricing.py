import pytest

from ops.pricing import HOURLY_USD, fmt_cost, hourly_price, launch_price, run_cost


def test_known_duration_costs():
    assert run_cost("g5.2xlarge", 3600) == 1.21
    assert run_cost("g5.2xlarge", 2 * 3600 + 1800) == round(1.212 * 2.5, 2)
    assert run_cost("g5.12xlarge", 600) == round(5.672 / 6, 2)


def test_minimum_billing_and_unknowns():
    assert run_cost("g5.xlarge", 5) == round(1.006 * 60 / 3600, 2)
    assert run_cost("x1.weird", 3600) is None
    assert run_cost(None, 3600) is None
    assert run_cost("g5.2xlarge", None) is None
    assert fmt_cost(None) == "-" and fmt_cost(1234.5) == "$1,234.50"


def test_overrides_beat_env_beat_table(monkeypatch):
    monkeypatch.setenv("TRAINCTL_PRICE_G5_2XLARGE", "2.0")
    assert hourly_price("g5.2xlarge") == 2.0
    assert hourly_price("g5.2xlarge", {"g5.2xlarge": 3.0}) == 3.0
    monkeypatch.setenv("TRAINCTL_PRICE_G5_2XLARGE", "cheap")
    assert hourly_price("g5.2xlarge") is None


@pytest.mark.parametrize("itype", sorted(HOURLY_USD))
def test_table_is_sane(itype):
    assert 0.1 < HOURLY_USD[itype] < 50


# -- the price the controller hands the agent at launch (moto's EC2 on loopback) -----------------
def _instance(ec2, **market):
    image = ec2.describe_images()["Images"][0]["ImageId"]
    return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="g5.2xlarge", **market)["Instances"][0]


def test_a_spot_box_is_priced_at_its_spot_price(moto_server):
    from controller.launch.ec2 import describe

    ec2 = moto_server.client("ec2")
    inst = describe(ec2, _instance(ec2, InstanceMarketOptions={"MarketType": "spot"})["InstanceId"])
    assert (inst.lifecycle, inst.zone) == ("spot", "us-east-1a")
    usd, basis = launch_price(ec2, inst.type, inst.lifecycle, inst.zone)
    assert basis == "spot" and usd == 0.00001  # moto's canned spot price history


def test_an_on_demand_box_and_an_unreadable_spot_price_fall_back_to_the_table(moto_server):
    from controller.launch.ec2 import describe, ec2_client
    from tests.fixtures.net import free_port

    ec2 = moto_server.client("ec2")
    inst = describe(ec2, _instance(ec2)["InstanceId"])
    assert inst.lifecycle == "on-demand"
    assert launch_price(ec2, inst.type, inst.lifecycle, inst.zone) == (1.212, "on-demand")
    unreachable = ec2_client("us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert launch_price(unreachable, "g5.2xlarge", "spot", "us-east-1a") == (1.212, "on-demand")
    assert launch_price(ec2, "x1.weird", None) == (None, None) and launch_price(ec2, None, "spot") == (None, None)


def test_the_price_reaches_the_agents_command_line():
    """plan.agent_argv passes --hourly-usd/--price-basis, and `ctl agent run` parses them as such."""
    from agent.cli import run_cmd
    from controller.config import resolve
    from controller.launch import plan

    cfg = resolve({"name": "m", "trainer": {"command": ["python", "t.py"]}})
    lay = plan.Layout(cfg.box.data_root, "0" * 12, "k", "trainctl-0-py3-none-any.whl")
    argv = plan.agent_argv(cfg, lay, "m-20250101-000000", "s3://b/runs", "", 1.212, "spot")
    head = argv[3:argv.index("--")]
    assert head[head.index("--hourly-usd") + 1] == "1.212" and head[head.index("--price-basis") + 1] == "spot"
    ctx = run_cmd.make_context("run", [*head, "--", "python", "t.py"])
    assert (ctx.params["hourly_usd"], ctx.params["price_basis"]) == (1.212, "spot")
    unpriced = plan.agent_argv(cfg, lay, "m-20250101-000000", "s3://b/runs", "")
    assert "--hourly-usd" not in unpriced and "--price-basis" not in unpriced


def test_ctl_runs_and_alerts_prefer_the_markers_figure():
    from agent.protocol import records as p
    from controller.views.runs import cost_of
    from ops.alerts.message import MessageFacts, cost_text

    md = p.Metadata(run_id="m-20250101-000000", created=0.0, instance_type="g5.2xlarge")
    err = p.ErrorMarker(ts=3600.0, cause="oom", remediation="smaller batch", duration_s=3600.0, cost_usd=0.42,
                        price_basis="spot")
    done = p.CompleteMarker(ts=3600.0, duration_s=3600.0, cost_usd=0.5, price_basis="on-demand")
    assert cost_of(md, err, None, True, 9999.0) == 0.42  # not the table's 1.21
    assert cost_of(md, None, done, True, 9999.0) == 0.5
    assert cost_of(md, p.ErrorMarker(ts=3600.0, cause="oom", remediation="r", duration_s=3600.0), None, True,
                   9999.0) == 1.21  # no figure on the marker: the table
    msg = {"created": 3600.0}
    assert cost_text(msg, MessageFacts("m-20250101-000000", metadata=md, error=err)) == "$0.42 (spot price)"
    assert cost_text(msg, MessageFacts("m-20250101-000000", metadata=md, complete=done)) == "$0.50 (on-demand price)"
