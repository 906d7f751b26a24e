import pytest

from agent.protocol.durations import NEVER, fmt_duration, parse_duration
from agent.protocol.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("15m", 900), ("4h", 14400), ("1d", 86400),
                                          ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), (30, 30), ("45", 45),
                                          ("1w", 604800), ("2w1d", 1296000), (" 4H ", 14400), ("1h 30m", 5400)])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


def test_never_only_when_allowed():
    assert parse_duration("never", allow_never=True) is None
    with pytest.raises(ConfigError, match="autostop: cannot read 'never'"):
        parse_duration("never", what="autostop")


@pytest.mark.parametrize("word", NEVER + ("NEVER", " Off "))
def test_every_never_word_turns_off(word):
    assert parse_duration(word, allow_never=True) is None


@pytest.mark.parametrize("bad", ["", "soon", "15 minutes", "-5", "h", "5x", "1h junk", -1, "-5m", "5y"])
def test_bad_durations(bad):
    with pytest.raises(ConfigError):
        parse_duration(bad)


def test_error_names_the_setting_and_the_forms():
    with pytest.raises(ConfigError) as e:
        parse_duration("soon", what="--interval")
    assert str(e.value) == "--interval: cannot read 'soon' as a duration; use e.g. 90s, 15m, 4h, 1d"
    with pytest.raises(ConfigError) as e:
        parse_duration("soon", what="--orphan-after", allow_never=True)
    assert str(e.value).endswith("use e.g. 90s, 15m, 4h, 1d or 'never'")


def test_format():
    assert [fmt_duration(x) for x in (None, 5, 843, 7500, 90000)] == ["-", "5s", "14m 03s", "2h 05m", "1d 01h"]


def test_format_one_style_at_every_size():
    """Two largest units, the second zero-padded; whole seconds rounded down; negative is 0."""
    assert [fmt_duration(x) for x in (0, 0.9, 59.99, 60, 3600, 3660, 86399, 86400, 8 * 86400, -3)] == [
        "0s", "0s", "59s", "1m 00s", "1h 00m", "1h 01m", "23h 59m", "1d 00h", "8d 00h", "0s"]


def test_watcher_settings_read_the_same_grammar():
    """ops' settings and flags go through this parser: `1h30m` and `w` both work there."""
    from ops.config import settings_from

    s = settings_from({"progress_timeout_s": "1h30m", "orphan_after_s": "1w"})
    assert (s.progress_timeout_s, s.orphan_after_s) == (5400, 604800)
    assert settings_from({"orphan_after_s": "none"}).orphan_after_s is None
