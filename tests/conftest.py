"""Shared fixtures: real servers on loopback (see tests/fixtures/)."""

import pytest

pytest_plugins = [
    "tests.fixtures.moto_server",
    "tests.fixtures.sshd",
    "tests.fixtures.slack",
    "tests.fixtures.terraform",
    "tests.fixtures.agents",
    "tests.fixtures.tiny_model",
]


@pytest.fixture
def local_store(tmp_path):
    """A local-folder store in a temp dir."""
    from agent.store_local import LocalStore

    return LocalStore(tmp_path / "store")
