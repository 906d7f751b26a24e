"""The `ctl` command line: launch, tail, status, runs, stop, and the commands of the other parts."""
