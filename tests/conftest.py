"""Shared fixtures: real servers on loopback (see tests/fixtures/)."""

import shutil
import tempfile
import time
from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.moto_server",
    "tests.fixtures.box",
    "tests.fixtures.sshd",
    "tests.fixtures.slack",
    "tests.fixtures.terraform",
    "tests.fixtures.agents",
    "tests.fixtures.tiny_model",
    "tests.fixtures.tiny_train",
]

_BASETEMP_PREFIX = "trainctl-tests-"


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    # The box user reads the folders tests hand the box, so they get o+x (tests/fixtures/box.py). pytest's
    # shared /tmp/pytest-of-<user> is reset to 0700 by every session that starts, which would lock the box
    # user out mid-run whenever another session starts: each session gets a base folder of its own instead.
    if config.option.basetemp or hasattr(config, "workerinput"):
        return
    for old in Path(tempfile.gettempdir()).glob(_BASETEMP_PREFIX + "*"):
        if time.time() - old.stat().st_mtime > 2 * 86400:  # a failed session's folders, kept two days
            shutil.rmtree(old, ignore_errors=True)
    config.option.basetemp = str(Path(tempfile.mkdtemp(prefix=_BASETEMP_PREFIX)) / "t")
    config._trainctl_basetemp = True


def pytest_sessionfinish(session, exitstatus):
    if getattr(session.config, "_trainctl_basetemp", False) and exitstatus == 0:
        shutil.rmtree(Path(session.config.option.basetemp).parent, ignore_errors=True)


class _ReachableTempFactory:
    """pytest's temp-folder factory, whose folders the box user may list and read."""

    def __init__(self, real):
        self._real = real

    def mktemp(self, basename, numbered=True):
        from tests.fixtures.box import reach

        return reach(self._real.mktemp(basename, numbered), listable=True)

    def getbasetemp(self):
        from tests.fixtures.box import reach

        return reach(self._real.getbasetemp(), listable=True)

    def __getattr__(self, name):
        return getattr(self._real, name)


@pytest.fixture(scope="session")
def tmp_path_factory(tmp_path_factory):
    """Every temp folder of the suite (tmp_path included) reachable by the box's non-root user."""
    return _ReachableTempFactory(tmp_path_factory)


@pytest.fixture
def local_store(tmp_path):
    """A local-folder store in a temp dir."""
    from agent.protocol.store_local import LocalStore

    return LocalStore(tmp_path / "store")
