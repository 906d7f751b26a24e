"""The `ctl` command: the root that gathers every part's commands (trainctl/cli.py)."""
