"""The watcher: run state machine, alert ledger, Slack alerts."""
