import pytest

from agent.protocol.durations import fmt_duration, parse_duration
from agent.protocol.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("4h", 14400), ("1d", 86400),
                                          ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), (30, 30), ("45", 45)])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


def test_never_only_when_allowed():
    assert parse_duration("never", allow_never=True) is None
    with pytest.raises(ConfigError, match="autostop: cannot read 'never'"):
        parse_duration("never", what="autostop")


@pytest.mark.parametrize("bad", ["", "soon", "15 minutes", "-5", "h", "5x", "1h junk", -1])
def test_bad_durations(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_format():
    assert [fmt_duration(x) for x in (None, 5, 843, 7500, 90000)] == ["-", "5s", "14m 03s", "2h 05m", "1d 01h"]
