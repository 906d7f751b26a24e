"""Helpers of the end-to-end suite (tests/e2e/test_*.py): real moto, sshd, Slack stand-in, agents, ctl."""
