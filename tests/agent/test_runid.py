from datetime import datetime, timezone

import pytest

from agent.protocol.errors import RunIdError
from agent.protocol.runid import new_run_id, run_name, validate_run_id

GOOD = ["mistral-20250804-171621", "m-20250101-000000", "qlora_v2-run-20261121-235959", "A1-20240229-120000"]
BAD = [
    "", "mistral", "mistral-20250804", "mistral-2025080-171621", "-20250804-171621", "../x-20250804-171621",
    "a/b-20250804-171621", "my run-20250804-171621", "mistral-20251304-171621", "mistral-20250230-171621",
    "mistral-20250804-246060", "mistral..x-20250804-171621", "mistral.-20250804-171621", "mistral-20250804-171621/",
    "mistral-20250804-171621\n", "x" * 60 + "-20250804-171621", "_x-20250804-171621",
]


@pytest.mark.parametrize("rid", GOOD)
def test_good_ids(rid):
    assert validate_run_id(rid) == rid


@pytest.mark.parametrize("rid", BAD)
def test_bad_ids_rejected_clearly(rid):
    with pytest.raises(RunIdError) as e:
        validate_run_id(rid)
    msg = str(e.value)
    assert "run id" in msg and "mistral-20250804-171621" in msg and "\n" not in msg.strip()


def test_new_run_id_round_trips():
    rid = new_run_id("mistral", datetime(2025, 8, 4, 17, 16, 21, tzinfo=timezone.utc))
    assert rid == "mistral-20250804-171621"
    assert run_name(rid) == "mistral"
    with pytest.raises(RunIdError):
        new_run_id("bad name")
