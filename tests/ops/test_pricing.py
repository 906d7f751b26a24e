import pytest

from ops.pricing import HOURLY_USD, fmt_cost, hourly_price, run_cost


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
