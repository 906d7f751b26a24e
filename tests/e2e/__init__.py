"""Helpers of the end-to-end suite (tests/test_e2e_*.py): real moto, sshd, Slack stand-in, agents, ctl."""
